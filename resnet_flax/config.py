"""The training config: the schema (every field with its default) and validation before anything
compiles.

`base_config()` returns a `ConfigDict` holding every field a run reads. Each section's defaults
are owned by the layer that reads it (`models.MODEL_DEFAULTS` via the resnet20 name,
`data.source.DATA_DEFAULTS`, `optim.OPTIMIZER_DEFAULTS`, `optim.SCHEDULE_DEFAULTS`); the
run-level fields and `distributed` are owned here. Files in `configs/` start from it and change
what they need, so a field is never missing and a typo in a config file is caught.
`validate(config)` checks values and raises `ConfigError` with one line that names the field and
the allowed values; it builds the model description once (no weights).
"""

import math
from typing import Any, Mapping

import jax
import ml_collections

from resnet_flax import compiler, optim, transfer, tree
from resnet_flax.data import source as data_source
from resnet_flax.data import policies, splits
from resnet_flax.errors import ConfigError
from resnet_flax.models import registry

PARALLELISM = ('jit', 'pmap')
NAN_POLICIES = ('stop', 'skip_step')
BEST_MODES = {'eval_top1': 'max', 'eval_top5': 'max', 'eval_loss': 'min'}   # metric -> better
BEST_METRICS = tuple(BEST_MODES)
ON_EXISTING_RUN = ('resume', 'restart', 'error')
LOSSES = ('cross_entropy', 'bce')   # the training losses (train.losses)


def flatten(config_dict: dict) -> dict:
  """A nested config dict (e.g. a saved config.json) as {'model.depth': 20, ...}; lists become
  tuples, as ConfigDict fields hold them."""
  return {k: tuple(v) if isinstance(v, list) else v
          for k, v in tree.flatten(config_dict, sep='.').items()}


# model fields that describe the task or the training, not the network: a model name selected
# on the command line keeps the config's values of these
TASK_MODEL_FIELDS = ('num_classes', 'include_top', 'pooling', 'head_hidden', 'dtype',
                     'param_dtype', 'drop_path_rate')
# model fields of the training recipe or of how it runs: they stay too, unless the name itself
# sets them
RECIPE_MODEL_FIELDS = ('zero_init_residual', 'bn_momentum', 'bn_one_pass', 'bn_group_size',
                       'scan_units', 'eval_loop', 'remat', 'conv_impl')


def select_model_name(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """`--config.model.name=NAME` on the command line (`overrides`: the flattened command-line
  values) selects that registry name's model fields; the config's task fields
  (`TASK_MODEL_FIELDS`) stay, so do its recipe fields (`RECIPE_MODEL_FIELDS`, e.g. a recipe's
  zero-init of the last BatchNorm) unless the name sets them, and the other model fields given
  on the command line override the name's ('resnet56 with version=v2'). An unknown name is a
  ConfigError with the closest names."""
  if 'model.name' not in overrides:
    return
  fields = registry.model_fields(config.model.name)
  own = registry.NAMES[config.model.name]
  given = {key.split('.', 1)[1] for key in overrides if key.startswith('model.')}
  for key, value in fields.items():
    keep = key in TASK_MODEL_FIELDS or (key in RECIPE_MODEL_FIELDS and key not in own)
    if key not in given and not keep:
      config.model[key] = value


def base_config() -> ml_collections.ConfigDict:
  """Every field of a training config, with defaults (ResNet-20 on the bundled digits)."""
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(registry.model_fields('resnet20'))

  c.data = ml_collections.ConfigDict(dict(data_source.DATA_DEFAULTS))

  c.batch_size = 128              # global, over all devices and processes
  c.eval_batch_size = 0           # 0: batch_size
  c.num_epochs = 1.0              # training length, unless num_train_steps > 0
  c.num_train_steps = -1

  c.optimizer = ml_collections.ConfigDict(dict(optim.OPTIMIZER_DEFAULTS))
  c.schedule = ml_collections.ConfigDict(dict(optim.SCHEDULE_DEFAULTS))

  c.dtype = 'float32'             # compute precision: bfloat16 = mixed precision (f32 params,
                                  # optimizer state, BatchNorm statistics, loss)
  c.label_smoothing = 0.0
  c.loss = 'cross_entropy'        # cross_entropy (softmax) | bce (a sigmoid per class, averaged
                                  # over the classes: "ResNet strikes back")
  c.bce_target_threshold = 0.0    # bce: targets above it count as 1, the others as 0; 0: soft
  c.mixup_alpha = 0.0             # mixup: lambda ~ Beta(alpha, alpha); 0: off
  c.cutmix_alpha = 0.0            # cutmix: lambda ~ Beta(alpha, alpha), 1 - the box area; 0: off
  c.mixup_prob = 1.0              # the probability that a batch is mixed (mixup or cutmix)
  c.mixup_switch_prob = 0.5       # both on: the probability of cutmix rather than mixup
  c.ema_decay = 0.0               # 0: no EMA; else eval uses the EMA of params and batch_stats
  c.seed = 0
  c.parallelism = 'jit'           # jit (Mesh + NamedSharding) | pmap
  c.compiler_options = compiler.DEFAULT  # auto (per back end, see compiler.py) | none
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
  c.best_mode = 'auto'            # auto (the metric's: max for top-1/5, min for loss) | max | min
  c.on_existing_run = 'resume'    # resume | restart (delete its checkpoints) | error
  c.init_from = ''                # fine-tune: a run workdir or a checkpoint path (params and
  c.init_from_step = -1           # batch_stats only); -1: its latest checkpoint
  c.freeze = ''                   # transfer learning: '' (train all) | backbone (all but the
                                  # head) | a regex over parameter paths ('stem|stage1'); frozen
                                  # parameters and their BatchNorm statistics stay fixed

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator = ''  # HOST:PORT; '' = single process or auto-detect
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.auto = False      # jax.distributed.initialize() auto-detection (SLURM, TPU...)
  c.distributed.heartbeat_timeout_s = 30       # a process silent this long counts as lost:
  c.distributed.initialization_timeout_s = 300  # the others abort (see docs/MULTIHOST.md)
  return c


def with_fields(config, fields: Mapping[str, Any]):
  """A copy of `config` with {'data.backend': 'grain', ...} set (a variant of a measurement);
  ConfigError for a field the config does not have or a value its type refuses."""
  variant = config.copy_and_resolve_references()
  for key, value in fields.items():
    node = variant
    *path, last = key.split('.')
    try:
      for part in path:
        node = node[part]
      if last not in node:
        raise KeyError(last)
      node[last] = value
    except (KeyError, AttributeError, TypeError, ValueError) as e:
      raise ConfigError(f'--variant {key}={value!r}: the config has no field {key!r} or it '
                        f'does not take that value ({e})') from None
  return variant


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


def _check_freeze(config, model) -> None:
  """config.freeze must freeze some but not all of the model's parameters (by path only; the
  parameter paths do not depend on the input size)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jax.numpy.zeros((1, 64, 64, 3)), train=False))
  transfer.frozen_mask(shapes['params'], config.freeze, model.head_names)


def _check_loss_and_mixing(config) -> None:
  _check_choice(config, 'loss', LOSSES)
  if not 0.0 <= config.bce_target_threshold < 1.0:
    _fail('bce_target_threshold', config.bce_target_threshold,
          'must be in [0, 1) (0: soft targets)')
  if config.bce_target_threshold and config.loss != 'bce':
    _fail('bce_target_threshold', config.bce_target_threshold, "applies to config.loss='bce'")
  for field in ('mixup_alpha', 'cutmix_alpha'):
    if not (math.isfinite(config[field]) and config[field] >= 0):
      _fail(field, config[field], 'must be >= 0 (0: off)')
  for field in ('mixup_prob', 'mixup_switch_prob'):
    if not 0.0 <= config[field] <= 1.0:
      _fail(field, config[field], 'must be a probability in [0, 1]')


def best_mode(config) -> str:
  """'max' or 'min': the direction in which `config.best_metric` improves."""
  return BEST_MODES[config.best_metric] if config.best_mode == 'auto' else config.best_mode


def validate(config: ml_collections.ConfigDict, *, device_count: int = 1) -> None:
  """Raises ConfigError naming the first field that cannot work."""
  _check_keys(config, base_config())
  model = registry.create_model(config.model)
  _check_choice(config, 'dtype', registry.DTYPES)
  if config.model.dtype not in ('float32', config.dtype):
    _fail('model.dtype', config.model.dtype,
          f'training takes its precision from config.dtype; set --config.dtype='
          f'{config.model.dtype} and leave model.dtype at float32')
  if config.model.param_dtype != 'float32':
    _fail('model.param_dtype', config.model.param_dtype,
          'training keeps float32 parameters (mixed precision is config.dtype=bfloat16)')
  _check_choice(config, 'data.source', data_source.SOURCES)
  _check_choice(config, 'data.backend', data_source.BACKENDS)
  _check_choice(config, 'data.preprocess', data_source.PRESETS)
  _check_choice(config, 'data.on_bad_image', data_source.ON_BAD_IMAGE)
  _check_choice(config, 'data.image_library', data_source.IMAGE_LIBRARIES)
  for field in ('train_split', 'eval_split'):
    try:
      splits.parse_split(config.data[field])
    except ValueError as e:
      _fail(f'data.{field}', config.data[field], str(e))
  optim.optimizers.optimizer_fields(config.optimizer)
  optim.schedules.schedule_fields(config.schedule, config.batch_size)
  _check_choice(config, 'parallelism', PARALLELISM)
  _check_choice(config, 'compiler_options', compiler.CHOICES)
  _check_choice(config, 'nan_policy', NAN_POLICIES)
  _check_choice(config, 'best_metric', BEST_METRICS)
  _check_choice(config, 'best_mode', ('auto', 'max', 'min'))
  if config.best_mode != 'auto' and config.best_mode != BEST_MODES[config.best_metric]:
    _fail('best_mode', config.best_mode,
          f'would keep the worst checkpoint by best_metric={config.best_metric!r} (better is '
          f'{BEST_MODES[config.best_metric]}); leave it at auto')
  _check_choice(config, 'on_existing_run', ON_EXISTING_RUN)
  if config.checkpoint_every_steps == 0 or config.checkpoint_every_steps < -1:
    _fail('checkpoint_every_steps', config.checkpoint_every_steps,
          'must be a positive number of steps, or -1 for once per epoch')
  if config.keep_checkpoints < 1:
    _fail('keep_checkpoints', config.keep_checkpoints, 'must be at least 1')
  if not 0 <= config.seed < 2**32:   # the PRNG key takes 32 bits: 2**32 would repeat seed 0
    _fail('seed', config.seed, 'must be in [0, 2**32)')
  if config.init_from_step < -1:
    _fail('init_from_step', config.init_from_step, 'must be -1 (latest) or a saved step')
  if config.freeze:
    _check_freeze(config, model)
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
  _check_loss_and_mixing(config)
  if not 0.0 <= config.ema_decay < 1.0:
    _fail('ema_decay', config.ema_decay, 'must be in [0, 1) (0 disables the EMA)')
  for field in ('shuffle_buffer', 'threadpool_size', 'image_size', 'channels'):
    if config.data[field] < 0:
      _fail(f'data.{field}', config.data[field], 'must be >= 0 (0: the data\'s own)'
            if field in ('image_size', 'channels') else 'must be >= 0')
  for field in ('synthetic_train_size', 'synthetic_eval_size', 'synthetic_num_classes'):
    if config.data[field] < 1:
      _fail(f'data.{field}', config.data[field], 'must be at least 1')
  if config.data.worker_count < -1:
    _fail('data.worker_count', config.data.worker_count,
          'must be 0 (in this process), a number of worker processes, or -1 (one per core)')
  if config.data.worker_buffer_size < 1:
    _fail('data.worker_buffer_size', config.data.worker_buffer_size, 'must be >= 1')
  if not 0.0 < config.data.eval_crop_fraction <= 1.0:
    _fail('data.eval_crop_fraction', config.data.eval_crop_fraction,
          'must be in (0, 1]: the center crop S over the resized shorter side (e.g. 224 / 256)')
  if config.data.random_crop_pad < 0:
    _fail('data.random_crop_pad', config.data.random_crop_pad, 'must be >= 0')
  if config.data.eval_image_size < 0:
    _fail('data.eval_image_size', config.data.eval_image_size, 'must be >= 0 (0: image_size)')
  if (config.model.include_top and config.model.pooling in (None, 'none')
      and config.data.eval_image_size not in (0, config.data.image_size)):
    _fail('data.eval_image_size', config.data.eval_image_size,
          'must be 0 (the training size) or data.image_size with model.pooling=none and the '
          "top: the head reads the flattened feature map, whose size follows the image's (or "
          "pool it: 'avg' / 'max')")
  policies.check_fields(config.data)
  for field in ('mean', 'std'):
    values = config.data[field]
    if (not isinstance(values, (tuple, list)) or not values or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in values)):
      _fail(f'data.{field}', values, 'must be a tuple of finite numbers on the 0..255 scale, '
            'one, or one per channel, e.g. (125.3, 123.0, 113.9)')
  if len(config.data.mean) != len(config.data.std) or min(config.data.std) <= 0:
    _fail('data.std', config.data.std,
          'data.mean and data.std need the same length (1 or one per channel) and std > 0')
  if max(config.data.std) < 1.0:
    _fail('data.std', config.data.std,
          'looks like the 0..1 scale: data.mean and data.std are on the 0..255 scale of the '
          'uint8 images (ImageNet: 123.675, 116.28, 103.53 / 58.395, 57.12, 57.375); multiply '
          'both by 255 (a run trained with these values normalised its inputs 255 times too '
          'strongly: train it again)')
  if not config.model.include_top:
    _fail('model.include_top', False, 'training needs the classification head (the loss takes '
          'its logits); keep it, and use the backbone alone through init_from or export')
