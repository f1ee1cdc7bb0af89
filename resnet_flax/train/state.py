"""The training state: one pytree holding everything a step reads and writes (and a checkpoint
saves): step, params, batch_stats, optimizer state, the optional EMA copies, and the RNG key.
"""

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from resnet_flax.models import init_variables


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array                 # raw uint32 key data (checkpointable), see `jax.random.key_data`
  ema_params: Optional[Any] = None
  ema_batch_stats: Optional[Any] = None

  def eval_variables(self) -> dict:
    """The variables evaluation uses: the EMA when one is kept, else the live ones."""
    if self.ema_params is not None:
      return {'params': self.ema_params, 'batch_stats': self.ema_batch_stats}
    return {'params': self.params, 'batch_stats': self.batch_stats}


def create_train_state(model, tx: optax.GradientTransformation, *, seed: int, image_shape,
                       use_ema: bool) -> TrainState:
  """Initialises the model on one example of `image_shape` (H, W, C) and the optimizer, with
  the EMA copies, in one compiled program (`models.init_variables` says why)."""
  def build(root):
    init_key, train_key = jax.random.split(root)
    variables = init_variables(model, jnp.zeros((1,) + tuple(image_shape), jnp.float32),
                               init_key)
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params), rng=train_key,
        # copies: the step donates the state, and one buffer may not be donated twice
        ema_params=jax.tree.map(jnp.copy, params) if use_ema else None,
        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if use_ema else None)
  return jax.jit(build)(jax.random.PRNGKey(seed))
