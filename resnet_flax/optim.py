"""Learning-rate schedules and optimizers built from config, over optax.

The trainer passes two flat sub-configs (a `ConfigDict` in the training configs, a plain dict
works too; only item access `cfg['field']` is used):

* `config.schedule` (fields and defaults in `SCHEDULE_DEFAULTS`) -> `build_schedule`, a function
  of the integer step (jittable), counted from 0 with the warmup included.
* `config.optimizer` (fields and defaults in `OPTIMIZER_DEFAULTS`) -> `build_optimizer`, an
  `optax.GradientTransformation`.

Missing fields take their defaults; unknown fields and bad values raise a `ValueError` that names
the field (`schedule.name='foo' is not allowed; allowed: ...`).

Weight decay has two modes. 'l2': the optimizer applies no decay, and the caller adds
`l2_coefficient(cfg) * l2_penalty(params, mask)` to the loss, whose gradient is `wd * w` (the
original ResNet recipe: SGD with momentum on the gradient of loss + L2). 'decoupled': the decay is
applied inside the optimizer, outside the momentum / adaptive statistics (SGDW, AdamW, LARS's own
decay). With `weight_decay_exclude='bn_and_bias'` every parameter of ndim <= 1 (BatchNorm scales
and biases, dense biases) is not decayed, in both modes.

Freezing (`config.freeze`, transfer learning): `frozen_mask` resolves the pattern to a pytree of
bools over the params, `freeze_optimizer` gives frozen leaves a zero update (no decay either),
and `frozen_norm_paths` names the BatchNorm layers that then keep their running statistics.
"""

import math
import re
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULE_DEFAULTS = {
    'name': 'cosine',          # 'constant', 'cosine' or 'step'
    'base_lr': 0.1,
    'lr_scaling': 'none',      # 'none' or 'linear' (peak = base_lr * batch_size / base_batch_size)
    'base_batch_size': 256,
    'warmup_steps': 0,         # at most one of warmup_steps / warmup_epochs is > 0
    'warmup_epochs': 0.0,
    'warmup_type': 'linear',   # 'linear' (init -> peak) or 'constant' (hold init, then the peak)
    'warmup_init_lr': 0.0,
    'boundaries_steps': (),    # 'step': absolute steps where the lr is multiplied by decay_factor
    'boundaries_epochs': (),
    'decay_factor': 0.1,
    'end_lr_factor': 0.0,      # 'cosine': final lr = peak * end_lr_factor, reached at total_steps
}

OPTIMIZER_DEFAULTS = {
    'name': 'sgd',             # 'sgd', 'adamw' or 'lars'
    'momentum': 0.9,           # sgd and lars
    'nesterov': False,         # sgd and lars
    'b1': 0.9,                 # adamw
    'b2': 0.999,
    'eps': 1e-8,
    'weight_decay': 1e-4,
    'weight_decay_mode': 'l2',  # 'l2' (penalty added to the loss by the caller) or 'decoupled'
    'weight_decay_exclude': 'none',  # 'none' or 'bn_and_bias' (leaves with ndim <= 1)
    'grad_clip_norm': 0.0,     # 0 = off; else clip the global gradient norm first
    'lars_trust_coefficient': 0.001,
    'lars_eps': 0.0,
}

SCHEDULES = ('constant', 'cosine', 'step')
LR_SCALINGS = ('none', 'linear')
WARMUP_TYPES = ('linear', 'constant')
OPTIMIZERS = ('sgd', 'adamw', 'lars')
WEIGHT_DECAY_MODES = ('l2', 'decoupled')
WEIGHT_DECAY_EXCLUDES = ('bn_and_bias', 'none')


# --------------------------------------------------------------------------------------------
# Config helpers.


def _fields(cfg: Optional[Mapping[str, Any]], defaults: Mapping[str, Any],
            section: str) -> dict[str, Any]:
  """The defaults overridden by the config's fields; unknown fields are an error."""
  cfg = {} if cfg is None else {k: cfg[k] for k in cfg.keys()}
  unknown = sorted(set(cfg) - set(defaults))
  if unknown:
    raise ValueError(f'unknown {section} field(s) {", ".join(unknown)}; known: '
                     f'{", ".join(sorted(defaults))}')
  return {**defaults, **cfg}


def _choice(cfg, section, field, allowed):
  value = cfg[field]
  if value not in allowed:
    raise ValueError(f'{section}.{field}={value!r} is not allowed; allowed: '
                     f'{", ".join(map(repr, allowed))}')
  return value


def _number(cfg, section, field, *, low=None, high=None, low_open=False, high_open=False):
  """cfg[field] as a float, checked against [low, high] (open ends where asked)."""
  value = cfg[field]
  try:
    if isinstance(value, (bool, str)):
      raise TypeError
    value = float(value)  # also numpy scalars
  except (TypeError, ValueError):
    raise ValueError(f'{section}.{field}={value!r} must be a number.') from None
  if math.isnan(value):
    raise ValueError(f'{section}.{field}={value!r} must be a number, not NaN.')
  bad_low = low is not None and (value <= low if low_open else value < low)
  bad_high = high is not None and (value >= high if high_open else value > high)
  if bad_low or bad_high:
    left = '(-inf' if low is None else ('(' if low_open else '[') + repr(low)
    right = 'inf)' if high is None else repr(high) + (')' if high_open else ']')
    raise ValueError(f'{section}.{field}={cfg[field]!r} must be in {left}, {right}.')
  return value


def _int(value, name):
  if isinstance(value, bool):
    raise ValueError(f'{name}={value!r} must be an integer.')
  try:
    as_int = int(value)
  except (TypeError, ValueError):
    raise ValueError(f'{name}={value!r} must be an integer.') from None
  if as_int != value:
    raise ValueError(f'{name}={value!r} must be an integer.')
  return as_int


def _bool(cfg, section, field):
  value = cfg[field]
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f'{section}.{field}={value!r} must be True or False.')
  return bool(value)


# --------------------------------------------------------------------------------------------
# Schedules.


def peak_learning_rate(schedule_cfg: Mapping[str, Any], batch_size: int) -> float:
  """The learning rate after warmup: base_lr, times batch_size / base_batch_size if linear."""
  cfg = _fields(schedule_cfg, SCHEDULE_DEFAULTS, 'schedule')
  base_lr = _number(cfg, 'schedule', 'base_lr', low=0.0, low_open=True)
  scaling = _choice(cfg, 'schedule', 'lr_scaling', LR_SCALINGS)
  if scaling == 'none':
    return base_lr
  base_batch_size = _int(cfg['base_batch_size'], 'schedule.base_batch_size')
  if base_batch_size < 1:
    raise ValueError(f'schedule.base_batch_size={base_batch_size} must be a positive integer.')
  batch_size = _int(batch_size, 'batch_size')
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be a positive integer.')
  return base_lr * batch_size / base_batch_size


def _warmup_steps(cfg, steps_per_epoch):
  steps = _int(cfg['warmup_steps'], 'schedule.warmup_steps')
  epochs = _number(cfg, 'schedule', 'warmup_epochs')
  if steps < 0:
    raise ValueError(f'schedule.warmup_steps={steps} must not be negative.')
  if epochs < 0:
    raise ValueError(f'schedule.warmup_epochs={epochs} must not be negative.')
  if steps > 0 and epochs > 0:
    raise ValueError(f'schedule.warmup_steps={steps} and schedule.warmup_epochs={epochs} are both '
                     'set; set at most one of them.')
  if epochs > 0:
    return int(round(epochs * steps_per_epoch))
  return steps


def _boundaries(cfg, steps_per_epoch):
  steps = tuple(cfg['boundaries_steps'] or ())
  epochs = tuple(cfg['boundaries_epochs'] or ())
  if steps and epochs:
    raise ValueError('schedule.boundaries_steps and schedule.boundaries_epochs are both set; '
                     'set one of them.')
  if not steps and not epochs:
    raise ValueError("schedule.name='step' needs schedule.boundaries_steps or "
                     'schedule.boundaries_epochs.')
  if steps:
    field = 'schedule.boundaries_steps'
    values = tuple(_int(s, field) for s in steps)
  else:
    field = 'schedule.boundaries_epochs'
    for e in epochs:
      if isinstance(e, bool) or not isinstance(e, (int, float)) or math.isnan(e):
        raise ValueError(f'{field}={epochs!r} must list numbers.')
    values = tuple(int(round(e * steps_per_epoch)) for e in epochs)
  shown = steps or epochs
  if values[0] <= 0:
    raise ValueError(f'{field}={shown!r} must be positive.')
  if any(b <= a for a, b in zip(values, values[1:])):
    raise ValueError(f'{field}={shown!r} must be strictly increasing'
                     + (f' (in steps: {values})' if epochs else '') + '.')
  return field, shown, values


def build_schedule(schedule_cfg: Mapping[str, Any], *, batch_size: int, steps_per_epoch: int,
                   total_steps: int) -> optax.Schedule:
  """The learning rate as a (jittable) function of the step, counted from 0 incl. the warmup.

  Warmup over the first W steps: 'linear' goes from warmup_init_lr at step 0 towards the peak
  (reached at step W); 'constant' holds warmup_init_lr for steps < W. After the warmup:
  'constant' keeps the peak; 'cosine' decays from the peak at step W to peak * end_lr_factor at
  total_steps (and stays there); 'step' multiplies the peak by decay_factor at each boundary
  (an absolute step; the decayed value applies from the boundary step on).
  """
  cfg = _fields(schedule_cfg, SCHEDULE_DEFAULTS, 'schedule')
  name = _choice(cfg, 'schedule', 'name', SCHEDULES)
  peak = peak_learning_rate(cfg, batch_size)
  warmup_type = _choice(cfg, 'schedule', 'warmup_type', WARMUP_TYPES)
  init_lr = _number(cfg, 'schedule', 'warmup_init_lr', low=0.0)
  total_steps = _int(total_steps, 'total_steps')
  if total_steps < 1:
    raise ValueError(f'total_steps={total_steps} must be a positive integer.')
  steps_per_epoch = _int(steps_per_epoch, 'steps_per_epoch')
  if steps_per_epoch < 0:
    raise ValueError(f'steps_per_epoch={steps_per_epoch} must not be negative.')
  uses_epochs = (_number(cfg, 'schedule', 'warmup_epochs') > 0 or
                 (name == 'step' and bool(cfg['boundaries_epochs'])))
  if uses_epochs and steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch={steps_per_epoch} must be positive when the schedule is '
                     'given in epochs (schedule.warmup_epochs / schedule.boundaries_epochs).')
  warmup = _warmup_steps(cfg, steps_per_epoch)
  if warmup > total_steps:
    raise ValueError(f'the warmup ({warmup} steps from schedule.warmup_steps='
                     f"{cfg['warmup_steps']!r} / schedule.warmup_epochs={cfg['warmup_epochs']!r}) "
                     f'is longer than total_steps={total_steps}.')

  if name == 'constant':
    def after_warmup(step):
      return jnp.full(jnp.shape(step), peak, jnp.float32)
  elif name == 'cosine':
    end_factor = _number(cfg, 'schedule', 'end_lr_factor', low=0.0, high=1.0)
    decay_steps = max(total_steps - warmup, 1)

    def after_warmup(step):
      progress = jnp.clip((step - warmup).astype(jnp.float32) / decay_steps, 0.0, 1.0)
      cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
      return (peak * (end_factor + (1.0 - end_factor) * cosine)).astype(jnp.float32)
  else:
    decay = _number(cfg, 'schedule', 'decay_factor', low=0.0, high=1.0, low_open=True)
    field, shown, boundaries = _boundaries(cfg, steps_per_epoch)
    if boundaries[0] < warmup:
      raise ValueError(f'{field}={shown!r}: the first boundary ({boundaries[0]} steps) falls '
                       f'inside the warmup ({warmup} steps).')
    # Exact values in float64, then indexed by the number of boundaries passed.
    # (numpy, not jax arrays: building the schedule must not start the JAX backend.)
    values = np.asarray([peak * decay ** i for i in range(len(boundaries) + 1)], np.float32)
    bounds = np.asarray(boundaries, np.int32)

    def after_warmup(step):
      passed = jnp.sum(step[..., None] >= jnp.asarray(bounds), axis=-1)
      return jnp.asarray(values)[passed]

  def schedule(step):
    step = jnp.asarray(step, jnp.int32)
    lr = after_warmup(step)
    if warmup > 0:
      if warmup_type == 'linear':
        warm = init_lr + (peak - init_lr) * step.astype(jnp.float32) / warmup
      else:
        warm = jnp.full(jnp.shape(step), init_lr, jnp.float32)
      lr = jnp.where(step < warmup, warm.astype(jnp.float32), lr)
    return lr

  return schedule


# --------------------------------------------------------------------------------------------
# Weight decay, optimizers, EMA.


def weight_decay_mask(params: Any, exclude: str) -> Any:
  """A pytree of bools like `params`: True = decayed.

  exclude='bn_and_bias' leaves out every parameter with ndim <= 1 (BatchNorm scale and bias,
  dense / conv biases); exclude='none' decays everything.
  """
  if exclude not in WEIGHT_DECAY_EXCLUDES:
    raise ValueError(f'optimizer.weight_decay_exclude={exclude!r} is not allowed; allowed: '
                     f'{", ".join(map(repr, WEIGHT_DECAY_EXCLUDES))}')
  if exclude == 'none':
    return jax.tree.map(lambda _: True, params)
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def l2_penalty(params: Any, mask: Any = None) -> jax.Array:
  """0.5 * the sum of squares of the masked leaves (all leaves if mask is None), in float32.

  The caller multiplies by the weight decay, so the gradient of `wd * l2_penalty` is `wd * w`.
  """
  if mask is None:
    mask = jax.tree.map(lambda _: True, params)
  terms = jax.tree.map(
      lambda p, m: jnp.sum(jnp.square(jnp.asarray(p, jnp.float32))) if m
      else jnp.zeros((), jnp.float32), params, mask)
  return 0.5 * sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


def _optimizer_fields(optimizer_cfg):
  cfg = _fields(optimizer_cfg, OPTIMIZER_DEFAULTS, 'optimizer')
  _choice(cfg, 'optimizer', 'name', OPTIMIZERS)
  _choice(cfg, 'optimizer', 'weight_decay_mode', WEIGHT_DECAY_MODES)
  _choice(cfg, 'optimizer', 'weight_decay_exclude', WEIGHT_DECAY_EXCLUDES)
  _number(cfg, 'optimizer', 'momentum', low=0.0, high=1.0, high_open=True)
  _bool(cfg, 'optimizer', 'nesterov')
  _number(cfg, 'optimizer', 'b1', low=0.0, high=1.0, high_open=True)
  _number(cfg, 'optimizer', 'b2', low=0.0, high=1.0, high_open=True)
  _number(cfg, 'optimizer', 'eps', low=0.0)
  _number(cfg, 'optimizer', 'weight_decay', low=0.0)
  _number(cfg, 'optimizer', 'grad_clip_norm', low=0.0)
  _number(cfg, 'optimizer', 'lars_trust_coefficient', low=0.0, low_open=True)
  _number(cfg, 'optimizer', 'lars_eps', low=0.0)
  return cfg


def l2_coefficient(optimizer_cfg: Mapping[str, Any]) -> float:
  """The factor of `l2_penalty` the caller adds to the loss: weight_decay in 'l2' mode, else 0."""
  cfg = _optimizer_fields(optimizer_cfg)
  return float(cfg['weight_decay']) if cfg['weight_decay_mode'] == 'l2' else 0.0


def build_optimizer(optimizer_cfg: Mapping[str, Any], schedule: optax.ScalarOrSchedule,
                    params: Any = None) -> optax.GradientTransformation:
  """The optax optimizer of a config, with `schedule` as its learning rate.

  'sgd': (Nesterov) momentum on the gradient, scaled by the lr; in 'decoupled' mode SGDW:
  `update = -lr * (momentum_buffer + wd * w)` with the decay outside the momentum.
  'adamw': Adam; in 'decoupled' mode optax.adamw's decay (`-lr * wd * w`).
  'lars': optax.lars; in 'decoupled' mode with its own weight decay, and with
  weight_decay_exclude='bn_and_bias' the excluded leaves also skip the trust ratio.
  In 'l2' mode no optimizer decays: the caller adds `l2_coefficient(cfg) * l2_penalty` to the loss.

  The decay mask is handed to optax as a callable, so the optimizer can be built before the
  parameters exist. `params`, when given, is only used to check the mask on them now.
  """
  cfg = _optimizer_fields(optimizer_cfg)
  name = cfg['name']
  decoupled = cfg['weight_decay_mode'] == 'decoupled'
  wd = float(cfg['weight_decay']) if decoupled else 0.0
  exclude = cfg['weight_decay_exclude']
  momentum = float(cfg['momentum'])
  nesterov = cfg['nesterov']

  mask: Optional[Callable[[Any], Any]] = None
  if exclude != 'none':
    def mask(tree):
      return weight_decay_mask(tree, exclude)
    if params is not None:
      mask(params)

  if name == 'sgd':
    parts = []
    if momentum > 0:
      parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd, mask=mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    tx = optax.chain(*parts)
  elif name == 'adamw':
    tx = optax.adamw(schedule, b1=float(cfg['b1']), b2=float(cfg['b2']), eps=float(cfg['eps']),
                     weight_decay=wd, mask=mask if wd > 0 else None)
  else:
    tx = optax.lars(schedule, weight_decay=wd,
                    weight_decay_mask=True if mask is None else mask,
                    trust_coefficient=float(cfg['lars_trust_coefficient']),
                    eps=float(cfg['lars_eps']),
                    trust_ratio_mask=True if mask is None else mask,
                    momentum=momentum, nesterov=nesterov)

  clip = float(cfg['grad_clip_norm'])
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx


def ema_update(ema_tree: Any, new_tree: Any, decay: Any, frozen: Any = None) -> Any:
  """`decay * ema + (1 - decay) * new` leafwise, computed in float32, cast to the ema leaf dtype.

  `frozen` (a pytree of bools like the trees, or None): leaves marked True are kept as they are
  (a frozen leaf never changes, so its EMA stays bit-identical to it).
  """
  decay = jnp.asarray(decay, jnp.float32)

  def update(ema, new):
    ema = jnp.asarray(ema)
    value = decay * ema.astype(jnp.float32) + (1.0 - decay) * jnp.asarray(new, jnp.float32)
    return value.astype(ema.dtype)

  if frozen is None:
    return jax.tree.map(update, ema_tree, new_tree)
  return jax.tree.map(lambda e, n, f: e if f else update(e, n), ema_tree, new_tree, frozen)


# --------------------------------------------------------------------------------------------
# Freezing (transfer learning).

FREEZE_BACKBONE = 'backbone'


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_paths(tree: Any) -> Any:
  """A pytree like `tree` whose leaves are their '/'-joined paths ('stage1_unit1/conv1/kernel')."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: '/'.join(_key_name(k) for k in path), tree)


def frozen_mask(params: Any, freeze: str, head_modules=('head',)) -> Any:
  """A pytree of bools like `params`: True = frozen (never updated).

  `freeze`: '' (nothing), 'backbone' (every parameter outside the top-level `head_modules`), or
  a regular expression searched (`re.search`) in each '/'-joined parameter path, e.g.
  'stem|stage1'. A pattern that freezes nothing or everything is an error (ValueError naming it).
  """
  paths = leaf_paths(params)
  if freeze == '':
    return jax.tree.map(lambda _: False, paths)
  if freeze == FREEZE_BACKBONE:
    heads = set(head_modules)
    mask = jax.tree.map(lambda p: p.split('/')[0] not in heads, paths)
    what = (f"freeze='backbone' (everything but {', '.join(sorted(heads))})" if heads else
            "freeze='backbone' on a model without a head (model.include_top=False)")
  else:
    try:
      regex = re.compile(freeze)
    except re.error as e:
      raise ValueError(f'freeze={freeze!r} is not a valid regular expression ({e}); use '
                       "'', 'backbone' or a regex over parameter paths such as 'stem|stage1'"
                       ) from None
    mask = jax.tree.map(lambda p: regex.search(p) is not None, paths)
    what = f'freeze={freeze!r}'
  flags = jax.tree.leaves(mask)
  if not any(flags):
    names = jax.tree.leaves(paths)
    example = ', '.join(dict.fromkeys(names[i * (len(names) - 1) // 3] for i in range(4)))
    raise ValueError(f'{what} matches no parameter; parameter paths look like {example}')
  if all(flags):
    raise ValueError(f'{what} freezes every parameter, so nothing would train; leave some '
                     'parameters out of the pattern')
  return mask


def frozen_norm_paths(frozen: Any, batch_stats: Any) -> frozenset:
  """The '/'-joined paths of the layers holding `batch_stats` whose parameters are all frozen.

  Those layers run in inference mode during training (normalise with, and keep, their running
  statistics, as Keras' `trainable=False`); a layer only partly frozen keeps training mode.
  """
  layers = {p.rsplit('/', 1)[0] for p in jax.tree.leaves(leaf_paths(batch_stats))}
  state: dict[str, bool] = {}
  for path, is_frozen in zip(jax.tree.leaves(leaf_paths(frozen)), jax.tree.leaves(frozen)):
    layer = path.rsplit('/', 1)[0]
    if layer in layers:
      state[layer] = state.get(layer, True) and bool(is_frozen)
  return frozenset(layer for layer, all_frozen in state.items() if all_frozen)


def stats_mask(batch_stats: Any, norm_paths: frozenset) -> Any:
  """A pytree of bools like `batch_stats`: True for the statistics of the layers `norm_paths`."""
  return jax.tree.map(lambda p: p.rsplit('/', 1)[0] in norm_paths, leaf_paths(batch_stats))


def freeze_optimizer(tx: optax.GradientTransformation,
                     frozen: Any) -> optax.GradientTransformation:
  """`tx` for the trainable leaves and a zero update (no state, no decay) for the frozen ones.

  `frozen` is a pytree of bools like the params (see `frozen_mask`); the labels are matched by
  path, so the optimizer accepts any container type of the same tree.
  """
  frozen_paths = {p for p, f in zip(jax.tree.leaves(leaf_paths(frozen)),
                                    jax.tree.leaves(frozen)) if f}

  def labels(tree):
    return jax.tree.map(lambda p: 'frozen' if p in frozen_paths else 'trainable',
                        leaf_paths(tree))

  return optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()}, labels)
