"""Models with numpy-filled weights for the model tests: no random-init compilation."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from resnet_flax.models import create_model, model_fields


def make(name, **overrides):
  return create_model({**model_fields(name), **overrides})


def abstract_variables(model, shape):
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                        jax.ShapeDtypeStruct(shape, jnp.float32))


def numpy_variables(model, shape, seed=0):
  """Concrete variables with the model's structure: He-scaled normal kernels, BN at its init."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', str(path[-1]))
    if name == 'kernel':
      fan_in = math.prod(leaf.shape[:-1])
      value = rng.standard_normal(leaf.shape) * math.sqrt(2.0 / fan_in)
    elif name in ('scale', 'var'):
      value = np.ones(leaf.shape)
    else:  # bias, mean
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, shape))
