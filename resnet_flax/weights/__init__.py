"""Pretrained weights converted from other frameworks into resnet_flax variables.

`torchvision_import` and `keras_import` turn another framework's weights into `params` and
`batch_stats`; `export_checkpoint` writes them as a checkpoint folder that `scripts/evaluate.py`
and `config.init_from` read. The submodules import their framework only when they need it.
"""

from resnet_flax.configuration import ConfigError


class WeightsError(ConfigError):
  """Weights that do not fit the named model, or a weights file that cannot be read.

  A subclass of ConfigError, so that the command line reports it in one line (exit code 2).
  """
