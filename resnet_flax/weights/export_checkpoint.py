"""Imported weights -> a checkpoint folder that evaluation, fine-tuning and prediction read.

`save_pretrained(out_dir, config, params, batch_stats)` writes step 0 of a run folder through
`checkpoint.store.Checkpoints`: `OUT_DIR/checkpoints/0/` holds the whole training state of `config`
(the imported params and batch_stats, a fresh optimizer state) and `config` itself, so that

  python scripts/evaluate.py --workdir OUT_DIR
  python scripts/train.py --config ... --config.init_from=OUT_DIR

read it as they read any run's checkpoint, and `scripts/predict.py` finds the model fields and
the eval preprocessing in the stored config, the class names in the meta.
`pretrained_config(fields)` is that config for ImageNet weights: `configs/imagenet.py` with the
model's fields.
"""

import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from resnet_flax import config as config_lib
from resnet_flax import rundir, tree
from resnet_flax.checkpoint.store import Checkpoints
from resnet_flax.configs import imagenet as imagenet_config
from resnet_flax.data import info as data_info
from resnet_flax.errors import WeightsError
from resnet_flax.models import MODEL_DEFAULTS, create_model, default_image_size, scan
from resnet_flax.train.build import build_optimizer
from resnet_flax.train.state import TrainState, create_train_state
# ILSVRC-2012 training images. Only sets the length of the stored config's lr schedule; the
# optimizer state (all a checkpoint keeps of the optimizer) does not depend on it.
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def pretrained_config(fields: Mapping[str, Any], eval_crop_fraction: Optional[float] = None):
  """configs/imagenet.py's training config with these model fields: ImageNet mean and std,
  224 px, eval resize to 256 (or 224 / `eval_crop_fraction`) and center crop 224."""
  config = imagenet_config.get_config()
  config.model.update({**MODEL_DEFAULTS, **dict(fields)})
  if eval_crop_fraction is not None:
    config.data.eval_crop_fraction = float(eval_crop_fraction)
  return config


def training_state(config, params: Mapping, batch_stats: Mapping) -> TrainState:
  """The host (numpy) training state of `config` at step 0 holding `params` and `batch_stats`:
  the structure the trainer builds for `config` (checked), a fresh optimizer state and EMA."""
  config_lib.validate(config)
  fields = dict(config.model)
  model = create_model({**fields, 'dtype': config.dtype})
  tx = build_optimizer(config, IMAGENET_TRAIN_EXAMPLES)[2]
  size = config.data.image_size or default_image_size(fields)
  use_ema = config.ema_decay > 0

  template = jax.eval_shape(lambda: create_train_state(
      model, tx, seed=config.seed, image_shape=(size, size, config.data.channels or 3),
      use_ema=use_ema))
  name = fields.get('name') or 'the model'
  params = scan.restack(params, template.params)     # per-unit or stacked: the config's layout
  batch_stats = scan.restack(batch_stats, template.batch_stats)
  for collection, expected, found in (('params', template.params, params),
                                      ('batch_stats', template.batch_stats, batch_stats)):
    mismatch = tree.shape_mismatch(expected, found)
    if mismatch:
      raise WeightsError(f'the converted {collection} do not fit {name}: {mismatch}')

  def host(tree, like):
    return jax.tree.map(lambda x, t: np.array(x, dtype=t.dtype), dict(tree), dict(like))

  params = host(params, template.params)
  batch_stats = host(batch_stats, template.batch_stats)
  state = TrainState(
      step=np.zeros(template.step.shape, template.step.dtype), params=params,
      batch_stats=batch_stats, opt_state=jax.device_get(tx.init(params)),
      # the training key a run of this config starts with (as create_train_state derives it)
      rng=np.asarray(jax.random.split(jax.random.PRNGKey(config.seed))[1]),
      ema_params=jax.tree.map(np.copy, params) if use_ema else None,
      ema_batch_stats=jax.tree.map(np.copy, batch_stats) if use_ema else None)
  shapes = jax.tree.map(lambda x: (tuple(np.shape(x)), np.dtype(x.dtype)), state)
  if shapes != jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), template):
    raise AssertionError('the pretrained training state differs from the one the trainer builds')
  return state


def save_pretrained(out_dir: str, config, params: Mapping, batch_stats: Mapping, *,
                    source: Mapping[str, Any], class_names: Optional[Sequence[str]] = None) -> str:
  """Writes `params` and `batch_stats` as checkpoint 0 of the run folder `out_dir`, with
  `config` as its config. Its meta holds `source` (JSON: where the weights came from) and, as a
  run's checkpoint does, the data facts inference reads (input image shape, class names).
  Returns the checkpoint's folder. An `out_dir` that already holds checkpoints is refused."""
  directory = rundir.checkpoint_dir(config, out_dir)
  if os.path.isdir(directory) and os.listdir(directory):
    raise WeightsError(f'{out_dir} already holds checkpoints ({directory}); write to a new '
                       f'folder')
  num_classes = int(config.model.num_classes)
  if class_names is not None and len(class_names) != num_classes:
    raise WeightsError(f'{len(class_names)} class names for a model of {num_classes} classes')
  state = training_state(config, params, batch_stats)
  data = data_info.derive(config.data)
  data.num_classes = num_classes
  data.class_names = list(class_names) if class_names is not None else None
  meta = {'pretrained': dict(source), 'data': data.to_meta()}
  store = Checkpoints(directory, keep=1)
  try:
    store.save(0, state, meta=meta, config=config, metrics=None)
    store.wait()
  finally:
    store.close()
  return os.path.join(directory, '0')
