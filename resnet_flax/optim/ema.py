"""Exponential moving averages of parameters and BatchNorm statistics (`config.ema_decay`)."""

from typing import Any

import jax
import jax.numpy as jnp


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

