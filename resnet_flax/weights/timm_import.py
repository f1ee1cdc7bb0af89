"""timm ResNet weights (SE-ResNet(eXt), ResNet-D, ResNet-RS and timm's plain ResNets) ->
resnet_flax `params` and `batch_stats`.

timm's `resnet.py` networks with the names below are registry names with the same fields
(`models.registry.NAMES`): timm's layer names are torchvision's plus the deep stem's, the conv
stem pool's, the average-pool shortcut's and the SE gate's (the table in `torch_state_dict`).
A state dict (`.pth` or `.safetensors`, e.g. the `model.safetensors` of a timm weight
repository) converts without torch; `download_state_dict` needs timm (and internet).
"""

from typing import Any, Mapping

import numpy as np

from resnet_flax.errors import WeightsError, first_line
from resnet_flax.weights import torch_state_dict
from resnet_flax.weights.torchvision_import import TORCHVISION_NAMES

TIMM_NAMES = TORCHVISION_NAMES + (
    'seresnet18', 'seresnet34', 'seresnet50', 'seresnet101', 'seresnet152', 'seresnext50_32x4d',
    'seresnext101_32x8d', 'resnet18d', 'resnet34d', 'resnet50d', 'resnet101d', 'resnet152d',
    'resnetrs50', 'resnetrs101')


def timm_fields(name: str) -> dict[str, Any]:
  """The model fields of a timm network name."""
  return torch_state_dict.library_fields(name, TIMM_NAMES, 'timm')


def expected_shapes(model_name: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
  """{key: shape} of the state dict of timm's `model_name` (without num_batches_tracked)."""
  return torch_state_dict.expected_shapes(
      {**timm_fields(model_name), 'num_classes': num_classes}, 'timm')


def convert_timm(model_name: str, state_dict: Mapping[str, Any],
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(model fields, params, batch_stats) of a timm state dict, as numpy arrays (see
  `torch_state_dict.convert_state_dict`: the classes come from `fc`, a misfit is refused)."""
  return torch_state_dict.convert_state_dict(timm_fields(model_name), state_dict, 'timm')


def download_state_dict(model_name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """({key: array}, timm's pretrained config) of timm's default pretrained weights of
  `model_name`, fetched by timm into the Hugging Face cache. Needs timm, torch and internet."""
  timm_fields(model_name)
  try:
    import timm  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise WeightsError('--download needs timm (pip install timm), or pass the weights file '
                       'as --in') from None
  try:
    model = timm.create_model(model_name, pretrained=True)
  except Exception as e:  # noqa: BLE001 - no network, no such weights
    raise WeightsError(f'timm cannot load pretrained {model_name} ({first_line(e)})') from None
  state = {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
           for k, v in model.state_dict().items()}
  return state, dict(getattr(model, 'pretrained_cfg', {}) or {})
