"""Learning-rate schedules built from `config.schedule` (fields and defaults: `SCHEDULE_DEFAULTS`).

`build_schedule` returns a jittable function of the integer step, counted from 0 with the warmup
included. Missing fields take their defaults; unknown fields and bad values raise a
`ConfigError` that names the field (`schedule.name='foo' is not allowed; allowed: ...`).
"""

import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
import optax

from resnet_flax import fields
from resnet_flax.errors import ConfigError

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

SCHEDULES = ('constant', 'cosine', 'step')
LR_SCALINGS = ('none', 'linear')
WARMUP_TYPES = ('linear', 'constant')


def peak_learning_rate(schedule_cfg: Mapping[str, Any], batch_size: int) -> float:
  """The learning rate after warmup: base_lr, times batch_size / base_batch_size if linear."""
  cfg = fields.merged(schedule_cfg, SCHEDULE_DEFAULTS, 'schedule')
  base_lr = fields.number(cfg, 'schedule', 'base_lr', low=0.0, low_open=True)
  scaling = fields.choice(cfg, 'schedule', 'lr_scaling', LR_SCALINGS)
  if scaling == 'none':
    return base_lr
  base_batch_size = fields.integer(cfg['base_batch_size'], 'schedule.base_batch_size')
  if base_batch_size < 1:
    raise ConfigError(f'schedule.base_batch_size={base_batch_size} must be a positive integer.')
  batch_size = fields.integer(batch_size, 'batch_size')
  if batch_size < 1:
    raise ConfigError(f'batch_size={batch_size} must be a positive integer.')
  return base_lr * batch_size / base_batch_size


def _warmup_steps(cfg, steps_per_epoch):
  steps = fields.integer(cfg['warmup_steps'], 'schedule.warmup_steps')
  epochs = fields.number(cfg, 'schedule', 'warmup_epochs')
  if steps < 0:
    raise ConfigError(f'schedule.warmup_steps={steps} must not be negative.')
  if epochs < 0:
    raise ConfigError(f'schedule.warmup_epochs={epochs} must not be negative.')
  if steps > 0 and epochs > 0:
    raise ConfigError(f'schedule.warmup_steps={steps} and schedule.warmup_epochs={epochs} are both '
                      'set; set at most one of them.')
  if epochs > 0:
    return int(round(epochs * steps_per_epoch))
  return steps


def _boundaries(cfg, steps_per_epoch):
  steps = tuple(cfg['boundaries_steps'] or ())
  epochs = tuple(cfg['boundaries_epochs'] or ())
  if steps and epochs:
    raise ConfigError('schedule.boundaries_steps and schedule.boundaries_epochs are both set; '
                      'set one of them.')
  if not steps and not epochs:
    raise ConfigError("schedule.name='step' needs schedule.boundaries_steps or "
                      'schedule.boundaries_epochs.')
  if steps:
    field = 'schedule.boundaries_steps'
    values = tuple(fields.integer(s, field) for s in steps)
  else:
    field = 'schedule.boundaries_epochs'
    for e in epochs:
      if isinstance(e, bool) or not isinstance(e, (int, float)) or math.isnan(e):
        raise ConfigError(f'{field}={epochs!r} must list numbers.')
    values = tuple(int(round(e * steps_per_epoch)) for e in epochs)
  shown = steps or epochs
  if values[0] <= 0:
    raise ConfigError(f'{field}={shown!r} must be positive.')
  if any(b <= a for a, b in zip(values, values[1:])):
    raise ConfigError(f'{field}={shown!r} must be strictly increasing'
                      + (f' (in steps: {values})' if epochs else '') + '.')
  return field, shown, values


def schedule_fields(schedule_cfg: Mapping[str, Any], batch_size: int) -> dict[str, Any]:
  """The schedule fields (defaults filled in) after the checks that need no data size."""
  cfg = fields.merged(schedule_cfg, SCHEDULE_DEFAULTS, 'schedule')
  fields.choice(cfg, 'schedule', 'name', SCHEDULES)
  fields.choice(cfg, 'schedule', 'warmup_type', WARMUP_TYPES)
  peak_learning_rate(cfg, batch_size)
  fields.number(cfg, 'schedule', 'warmup_init_lr', low=0.0)
  fields.number(cfg, 'schedule', 'end_lr_factor', low=0.0, high=1.0)
  fields.number(cfg, 'schedule', 'decay_factor', low=0.0, high=1.0, low_open=True)
  return cfg


def build_schedule(schedule_cfg: Mapping[str, Any], *, batch_size: int, steps_per_epoch: int,
                   total_steps: int) -> optax.Schedule:
  """The learning rate as a (jittable) function of the step, counted from 0 incl. the warmup.

  Warmup over the first W steps: 'linear' goes from warmup_init_lr at step 0 towards the peak
  (reached at step W); 'constant' holds warmup_init_lr for steps < W. After the warmup:
  'constant' keeps the peak; 'cosine' decays from the peak at step W to peak * end_lr_factor at
  total_steps (and stays there); 'step' multiplies the peak by decay_factor at each boundary
  (an absolute step; the decayed value applies from the boundary step on).
  """
  cfg = schedule_fields(schedule_cfg, batch_size)
  name, warmup_type = cfg['name'], cfg['warmup_type']
  peak = peak_learning_rate(cfg, batch_size)
  init_lr = float(cfg['warmup_init_lr'])
  total_steps = fields.integer(total_steps, 'total_steps')
  if total_steps < 1:
    raise ConfigError(f'total_steps={total_steps} must be a positive integer.')
  steps_per_epoch = fields.integer(steps_per_epoch, 'steps_per_epoch')
  if steps_per_epoch < 0:
    raise ConfigError(f'steps_per_epoch={steps_per_epoch} must not be negative.')
  uses_epochs = (fields.number(cfg, 'schedule', 'warmup_epochs') > 0 or
                 (name == 'step' and bool(cfg['boundaries_epochs'])))
  if uses_epochs and steps_per_epoch < 1:
    raise ConfigError(f'steps_per_epoch={steps_per_epoch} must be positive when the schedule is '
                      'given in epochs (schedule.warmup_epochs / schedule.boundaries_epochs).')
  warmup = _warmup_steps(cfg, steps_per_epoch)
  if warmup > total_steps:
    raise ConfigError(f'the warmup ({warmup} steps from schedule.warmup_steps='
                      f"{cfg['warmup_steps']!r} / schedule.warmup_epochs={cfg['warmup_epochs']!r}) "
                      f'is longer than total_steps={total_steps}.')

  if name == 'constant':
    def after_warmup(step):
      return jnp.full(jnp.shape(step), peak, jnp.float32)
  elif name == 'cosine':
    end_factor = float(cfg['end_lr_factor'])
    decay_steps = max(total_steps - warmup, 1)

    def after_warmup(step):
      progress = jnp.clip((step - warmup).astype(jnp.float32) / decay_steps, 0.0, 1.0)
      cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
      return (peak * (end_factor + (1.0 - end_factor) * cosine)).astype(jnp.float32)
  else:
    decay = float(cfg['decay_factor'])
    field, shown, boundaries = _boundaries(cfg, steps_per_epoch)
    if boundaries[0] < warmup:
      raise ConfigError(f'{field}={shown!r}: the first boundary ({boundaries[0]} steps) falls '
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

