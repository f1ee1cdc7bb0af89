"""The training config: every field with its default, and validation before anything compiles.

`base_config()` returns a `ConfigDict` holding every field a run reads; files in `configs/` start
from it and change what they need, so a field is never missing and a typo in a config file is
caught. `validate(config)` checks values and raises `ConfigError` with one line that names the
field and the allowed values.
"""

import math
from typing import Any

import jax
import ml_collections

from resnet_flax import optim
from resnet_flax.models import registry

SOURCES = ('digits', 'npz', 'synthetic', 'folder', 'tfds')
BACKENDS = ('auto', 'memory', 'tfdata')
PREPROCESS = ('none', 'cifar', 'mnist', 'imagenet')
PARALLELISM = ('jit', 'pmap')
NAN_POLICIES = ('stop', 'skip_step')
BEST_METRICS = ('eval_top1', 'eval_top5', 'eval_loss')
ON_EXISTING_RUN = ('resume', 'restart', 'error')


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def flatten(tree: dict, prefix: str = '') -> dict:
  """A nested config dict (e.g. a saved config.json) as {'model.depth': 20, ...}; lists become
  tuples, as ConfigDict fields hold them."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = tuple(value) if isinstance(value, list) else value
  return out


def base_config() -> ml_collections.ConfigDict:
  """Every field of a training config, with defaults (ResNet-20 on the bundled digits)."""
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(registry.model_fields('resnet20'))

  c.data = ml_collections.ConfigDict()
  c.data.source = 'digits'        # digits | npz | synthetic (folder, tfds: input pipelines)
  c.data.name = ''                # TFDS dataset name
  c.data.dir = ''                 # npz file, image-folder root, or TFDS data_dir
  c.data.train_split = 'train'    # TFDS slicing syntax: 'train', 'train[:45000]', 'train[:10%]'
  c.data.eval_split = 'test'
  c.data.backend = 'auto'         # memory (JAX augmentation) | tfdata | auto (tfds: tfdata)
  c.data.preprocess = 'none'      # none | cifar | mnist | imagenet (tf.data back end)
  c.data.image_size = 0           # 0: the source's own size
  c.data.eval_crop_fraction = 0.875  # imagenet preset eval: shorter side -> S / this, center
                                  # crop S (0.875: 256 -> 224; torchvision's V2 weights:
                                  # 224 / 232)
  c.data.channels = 0             # 0: the source's own channel count
  c.data.random_crop_pad = 0      # pad by this many pixels and random-crop back (4: CIFAR)
  c.data.random_flip = False      # random horizontal flip
  c.data.mean = (0.0,)            # per-channel normalisation, on the 0..255 scale
  c.data.std = (255.0,)
  c.data.synthetic_train_size = 1024
  c.data.synthetic_eval_size = 256
  c.data.synthetic_num_classes = 1000
  c.data.image_key = ''           # tfds: the image feature ('': the first Image feature)
  c.data.label_key = ''           # tfds: the label feature ('': the first ClassLabel feature)
  c.data.shuffle_buffer = 10_000  # tf.data: shuffle buffer in records (tfds, and cache=True)
  c.data.cache = False            # tf.data: keep this process's encoded records in host RAM
  c.data.threadpool_size = 0      # tf.data: private thread pool size (0: TF's shared pool)
  c.data.on_bad_image = 'error'   # folder source: error | skip (unreadable images are skipped
                                  # and counted; an empty class folder keeps its label)

  c.batch_size = 128              # global, over all devices and processes
  c.eval_batch_size = 0           # 0: batch_size
  c.num_epochs = 1.0              # training length, unless num_train_steps > 0
  c.num_train_steps = -1

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'        # sgd | adamw | lars
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 1e-4
  c.optimizer.weight_decay_mode = 'l2'           # l2 (in the loss) | decoupled
  c.optimizer.weight_decay_exclude = 'none'      # none | bn_and_bias
  c.optimizer.grad_clip_norm = 0.0               # 0: off
  c.optimizer.lars_trust_coefficient = 0.001
  c.optimizer.lars_eps = 0.0

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'cosine'      # constant | cosine | step
  c.schedule.base_lr = 0.1
  c.schedule.lr_scaling = 'none'  # none | linear (base_lr * batch_size / base_batch_size)
  c.schedule.base_batch_size = 256
  c.schedule.warmup_steps = 0
  c.schedule.warmup_epochs = 0.0
  c.schedule.warmup_type = 'linear'   # linear | constant
  c.schedule.warmup_init_lr = 0.0
  c.schedule.boundaries_steps = ()
  c.schedule.boundaries_epochs = ()
  c.schedule.decay_factor = 0.1
  c.schedule.end_lr_factor = 0.0

  c.dtype = 'float32'             # compute precision: bfloat16 = mixed precision (f32 params,
                                  # optimizer state, BatchNorm statistics, loss)
  c.label_smoothing = 0.0
  c.ema_decay = 0.0               # 0: no EMA; else eval uses the EMA of params and batch_stats
  c.seed = 0
  c.parallelism = 'jit'           # jit (Mesh + NamedSharding) | pmap
  c.nan_policy = 'stop'           # stop | skip_step

  c.log_every_steps = 50
  c.log_grad_norms = False        # also log each stage's gradient norm (grad_norm_stage1, ...)
  c.eval_every_steps = -1         # -1: once per epoch (and always at the end)
  c.log_tensorboard = True        # when a TensorBoard writer is importable
  c.progress_bar = True           # only drawn on a terminal

  # checkpoints (orbax) and resuming, see docs/TRAINING.md
  c.checkpoint_every_steps = -1   # -1: once per epoch; always at the end and on SIGTERM
  c.checkpoint_dir = ''           # '': WORKDIR/checkpoints
  c.keep_checkpoints = 3          # the latest N, plus the best by best_metric
  c.best_metric = 'eval_top1'     # eval_top1 | eval_top5 | eval_loss
  c.best_mode = 'max'             # max | min
  c.on_existing_run = 'resume'    # resume | restart (delete its checkpoints) | error
  c.init_from = ''                # fine-tune: a run workdir or a checkpoint path (params and
  c.init_from_step = -1           # batch_stats only); -1: its latest checkpoint
  c.freeze = ''                   # transfer learning: '' (train all) | backbone (all but the
                                  # head) | a regex over parameter paths ('stem|stage1'); frozen
                                  # parameters and their BatchNorm statistics stay fixed
  c.debug_nan_at_step = -1        # test knob: the loss of this step (1-based) is NaN; -1: off

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator = ''  # HOST:PORT; '' = single process or auto-detect
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.auto = False      # jax.distributed.initialize() auto-detection (SLURM, TPU...)
  c.distributed.heartbeat_timeout_s = 30       # a process silent this long counts as lost:
  c.distributed.initialization_timeout_s = 300  # the others abort (see docs/MULTIHOST.md)
  return c


def _fail(field: str, value: Any, why: str) -> None:
  raise ConfigError(f'config.{field}={value!r}: {why}')


def _check_choice(config, field: str, allowed) -> None:
  node = config
  for part in field.split('.'):
    node = node[part]
  if node not in allowed:
    _fail(field, node, 'allowed: ' + ', '.join(map(repr, allowed)))


def _check_keys(config, reference, prefix='') -> None:
  for key in config.keys():
    if key not in reference:
      known = ', '.join(sorted(reference.keys()))
      raise ConfigError(f'config.{prefix}{key} is not a known field; known here: {known}')
    value, ref = config[key], reference[key]
    if isinstance(ref, ml_collections.ConfigDict) and key != 'model':
      _check_keys(value, ref, f'{prefix}{key}.')


def _check_freeze(config) -> None:
  """config.freeze must freeze some but not all of the model's parameters (by path only)."""
  model = registry.create_model(config.model)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jax.numpy.zeros((1, 64, 64, 3)), train=False))
  try:
    optim.frozen_mask(shapes['params'], config.freeze, model.head_names)
  except ValueError as e:
    raise ConfigError(f'config.{e}') from None


def validate(config: ml_collections.ConfigDict, *, device_count: int = 1) -> None:
  """Raises ConfigError naming the first field that cannot work."""
  _check_keys(config, base_config())
  try:
    registry.create_model(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _check_choice(config, 'dtype', registry.DTYPES)
  if config.model.dtype not in ('float32', config.dtype):
    _fail('model.dtype', config.model.dtype,
          f'training takes its precision from config.dtype; set --config.dtype='
          f'{config.model.dtype} and leave model.dtype at float32')
  if config.model.param_dtype != 'float32':
    _fail('model.param_dtype', config.model.param_dtype,
          'training keeps float32 parameters (mixed precision is config.dtype=bfloat16)')
  _check_choice(config, 'data.source', SOURCES)
  _check_choice(config, 'data.backend', BACKENDS)
  _check_choice(config, 'data.preprocess', PREPROCESS)
  _check_choice(config, 'data.on_bad_image', ('error', 'skip'))
  _check_choice(config, 'parallelism', PARALLELISM)
  _check_choice(config, 'nan_policy', NAN_POLICIES)
  _check_choice(config, 'best_metric', BEST_METRICS)
  _check_choice(config, 'best_mode', ('max', 'min'))
  _check_choice(config, 'on_existing_run', ON_EXISTING_RUN)
  if config.checkpoint_every_steps == 0 or config.checkpoint_every_steps < -1:
    _fail('checkpoint_every_steps', config.checkpoint_every_steps,
          'must be a positive number of steps, or -1 for once per epoch')
  if config.keep_checkpoints < 1:
    _fail('keep_checkpoints', config.keep_checkpoints, 'must be at least 1')
  if config.debug_nan_at_step == 0 or config.debug_nan_at_step < -1:
    _fail('debug_nan_at_step', config.debug_nan_at_step, 'must be -1 (off) or a step >= 1')
  if config.init_from_step < -1:
    _fail('init_from_step', config.init_from_step, 'must be -1 (latest) or a saved step')
  if config.freeze:
    _check_freeze(config)
  for field in ('batch_size', 'log_every_steps'):
    if int(config[field]) <= 0:
      _fail(field, config[field], 'must be a positive integer')
  if config.batch_size % device_count:
    _fail('batch_size', config.batch_size,
          f'must be divisible by the {device_count} devices; use a multiple of {device_count}')
  eval_bs = config.eval_batch_size or config.batch_size
  if eval_bs < 0 or eval_bs % device_count:
    _fail('eval_batch_size', config.eval_batch_size,
          f'must be 0 (= batch_size) or a positive multiple of the {device_count} devices')
  if config.eval_every_steps == 0 or config.eval_every_steps < -1:
    _fail('eval_every_steps', config.eval_every_steps,
          'must be a positive number of steps, or -1 for once per epoch')
  if config.num_train_steps <= 0 and not (config.num_epochs > 0 and
                                          math.isfinite(config.num_epochs)):
    _fail('num_epochs', config.num_epochs,
          'must be positive (or set num_train_steps to a positive number of steps)')
  group = config.model.bn_group_size
  if group:
    per_device = config.batch_size // device_count
    if per_device % group:
      _fail('model.bn_group_size', group,
            f'must divide the per-device batch of {per_device} examples')
  if not 0.0 <= config.label_smoothing < 1.0:
    _fail('label_smoothing', config.label_smoothing, 'must be in [0, 1)')
  if not 0.0 <= config.ema_decay < 1.0:
    _fail('ema_decay', config.ema_decay, 'must be in [0, 1) (0 disables the EMA)')
  for field in ('shuffle_buffer', 'threadpool_size'):
    if config.data[field] < 0:
      _fail(f'data.{field}', config.data[field], 'must be >= 0')
  if not 0.0 < config.data.eval_crop_fraction <= 1.0:
    _fail('data.eval_crop_fraction', config.data.eval_crop_fraction,
          'must be in (0, 1]: the center crop S over the resized shorter side (e.g. 224 / 256)')
  if config.data.random_crop_pad < 0:
    _fail('data.random_crop_pad', config.data.random_crop_pad, 'must be >= 0')
  if len(config.data.mean) != len(config.data.std) or min(config.data.std) <= 0:
    _fail('data.std', config.data.std,
          'data.mean and data.std need the same length (1 or one per channel) and std > 0')
