"""Optimizers built from `config.optimizer` (fields and defaults: `OPTIMIZER_DEFAULTS`), over optax.

Weight decay has two modes. 'l2': the optimizer applies no decay, and the train step adds
`weight_decay * l2_penalty(params, mask)` to the loss, whose gradient is `wd * w` (the original
ResNet recipe: SGD with momentum on the gradient of loss + L2). 'decoupled': the decay is
applied inside the optimizer, outside the momentum / adaptive statistics (SGDW, AdamW, LARS's
and LAMB's own decay). With `weight_decay_exclude='bn_and_bias'` every parameter of ndim <= 1
(BatchNorm scales and biases, dense biases) is not decayed, in both modes. A scanned run of
units (`models.scan`) stacks its units' parameters along a leading axis: the mask and the
trust ratios of LARS and LAMB see each unit's slice, as in the unrolled network.
"""

import functools
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from resnet_flax import fields
from resnet_flax.models import scan

OPTIMIZER_DEFAULTS = {
    'name': 'sgd',             # 'sgd', 'adamw', 'lars' or 'lamb'
    'momentum': 0.9,           # sgd and lars
    'nesterov': False,         # sgd and lars
    'b1': 0.9,                 # adamw and lamb
    'b2': 0.999,
    'eps': 1e-8,               # (timm's LAMB: 1e-6)
    'weight_decay': 1e-4,
    'weight_decay_mode': 'l2',  # 'l2' (penalty added to the loss by the caller) or 'decoupled'
    'weight_decay_exclude': 'none',  # 'none' or 'bn_and_bias' (leaves with ndim <= 1)
    'grad_clip_norm': 0.0,     # 0 = off; else clip the global gradient norm first
    'lars_trust_coefficient': 0.001,
    'lars_eps': 0.0,
}

OPTIMIZERS = ('sgd', 'adamw', 'lars', 'lamb')
WEIGHT_DECAY_MODES = ('l2', 'decoupled')
WEIGHT_DECAY_EXCLUDES = ('bn_and_bias', 'none')


def weight_decay_mask(params: Any, exclude: str) -> Any:
  """A pytree of bools like `params`: True = decayed.

  exclude='bn_and_bias' leaves out every parameter with ndim <= 1 (BatchNorm scale and bias,
  dense / conv biases); exclude='none' decays everything.
  """
  fields.choice({'weight_decay_exclude': exclude}, 'optimizer', 'weight_decay_exclude',
                WEIGHT_DECAY_EXCLUDES)
  if exclude == 'none':
    return jax.tree.map(lambda _: True, params)
  return jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.ndim(p) - _stacked(path) > 1, params)


def _stacked(path) -> int:
  """1 for a leaf of a scanned run of units (its leading axis counts the units), else 0."""
  return int(any(isinstance(getattr(k, 'key', None), str) and scan.is_scanned_name(k.key)
                 for k in path))


def scale_by_trust_ratio(trust_coefficient: float = 1.0,
                         eps: float = 0.0) -> optax.GradientTransformation:
  """optax.scale_by_trust_ratio (`update * c * ||w|| / (||update|| + eps)`, 1 where a norm is
  0) with one ratio per unit of a scanned run (norms over all axes but the leading one)."""
  def update_fn(updates, state, params):
    if params is None:
      raise ValueError('the trust ratio needs the parameters')

    def scale(path, update, param):
      axes = tuple(range(_stacked(path), jnp.ndim(param)))
      param_norm = jnp.sqrt(jnp.sum(jnp.square(param), axis=axes, keepdims=True))
      update_norm = jnp.sqrt(jnp.sum(jnp.square(update), axis=axes, keepdims=True))
      ratio = trust_coefficient * param_norm / (update_norm + eps)
      ratio = jnp.where((param_norm == 0.0) | (update_norm == 0.0),
                        jnp.ones_like(ratio), ratio)
      return update * ratio.astype(update.dtype)
    return jax.tree_util.tree_map_with_path(scale, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


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


def optimizer_fields(optimizer_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """The optimizer fields (defaults filled in), each checked."""
  cfg = fields.merged(optimizer_cfg, OPTIMIZER_DEFAULTS, 'optimizer')
  fields.choice(cfg, 'optimizer', 'name', OPTIMIZERS)
  fields.choice(cfg, 'optimizer', 'weight_decay_mode', WEIGHT_DECAY_MODES)
  fields.choice(cfg, 'optimizer', 'weight_decay_exclude', WEIGHT_DECAY_EXCLUDES)
  fields.number(cfg, 'optimizer', 'momentum', low=0.0, high=1.0, high_open=True)
  fields.boolean(cfg, 'optimizer', 'nesterov')
  fields.number(cfg, 'optimizer', 'b1', low=0.0, high=1.0, high_open=True)
  fields.number(cfg, 'optimizer', 'b2', low=0.0, high=1.0, high_open=True)
  fields.number(cfg, 'optimizer', 'eps', low=0.0)
  fields.number(cfg, 'optimizer', 'weight_decay', low=0.0)
  fields.number(cfg, 'optimizer', 'grad_clip_norm', low=0.0)
  fields.number(cfg, 'optimizer', 'lars_trust_coefficient', low=0.0, low_open=True)
  fields.number(cfg, 'optimizer', 'lars_eps', low=0.0)
  return cfg



def build_optimizer(optimizer_cfg: Mapping[str, Any], schedule: optax.ScalarOrSchedule,
                    params: Any = None) -> optax.GradientTransformation:
  """The optax optimizer of a config, with `schedule` as its learning rate.

  'sgd': (Nesterov) momentum on the gradient, scaled by the lr; in 'decoupled' mode SGDW:
  `update = -lr * (momentum_buffer + wd * w)` with the decay outside the momentum.
  'adamw': Adam; in 'decoupled' mode optax.adamw's decay (`-lr * wd * w`).
  'lars': optax.lars; in 'decoupled' mode with its own weight decay, and with
  weight_decay_exclude='bn_and_bias' the excluded leaves also skip the trust ratio.
  'lamb' (You et al. 2020): optax.lamb's chain (Adam's update, plus `wd * w` in 'decoupled'
  mode, scaled by the layer's trust ratio ||w|| / ||update||); as for LARS, the excluded
  leaves skip the trust ratio (timm's Lamb adapts only the decayed parameter group). timm's
  Lamb also clips the global gradient norm at 1: `grad_clip_norm=1.0` does the same here.
  In 'l2' mode no optimizer decays: the caller adds `l2_coefficient(cfg) * l2_penalty` to the loss.

  The decay mask is handed to optax as a callable, so the optimizer can be built before the
  parameters exist. `params`, when given, is only used to check the mask on them now.
  """
  cfg = optimizer_fields(optimizer_cfg)
  name = cfg['name']
  decoupled = cfg['weight_decay_mode'] == 'decoupled'
  wd = float(cfg['weight_decay']) if decoupled else 0.0
  exclude = cfg['weight_decay_exclude']
  momentum = float(cfg['momentum'])
  nesterov = cfg['nesterov']

  mask: Optional[Callable[[Any], Any]] = None
  if exclude != 'none':
    mask = functools.partial(weight_decay_mask, exclude=exclude)
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
  elif name == 'lamb':
    trust_ratio = scale_by_trust_ratio()
    parts = [optax.scale_by_adam(b1=float(cfg['b1']), b2=float(cfg['b2']), eps=float(cfg['eps']))]
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd, mask=mask))
    parts.append(trust_ratio if mask is None else optax.masked(trust_ratio, mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    tx = optax.chain(*parts)
  else:   # optax.lars's chain, with the trust ratio per unit
    trust_ratio = scale_by_trust_ratio(float(cfg['lars_trust_coefficient']),
                                       float(cfg['lars_eps']))
    tx = optax.chain(
        optax.add_decayed_weights(wd, mask=True if mask is None else mask),
        optax.masked(trust_ratio, True if mask is None else mask),
        optax.scale_by_learning_rate(schedule),
        optax.trace(decay=momentum, nesterov=nesterov))

  clip = float(cfg['grad_clip_norm'])
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx

