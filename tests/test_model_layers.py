"""Layers: torchvision padding of convolutions and pooling, BatchNorm, and forward passes of
a tiny model in train and eval mode and in bfloat16.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import abstract_variables, make, numpy_variables
from resnet_flax.tools import model_stats
from resnet_flax.models import model_fields
from resnet_flax.models import layers


# ---------------------------------------------------------------------------------------------
# Padding (torchvision semantics).

def test_symmetric_padding():
  assert layers.symmetric_padding(3) == ((1, 1), (1, 1))
  assert layers.symmetric_padding(7) == ((3, 3), (3, 3))
  assert layers.symmetric_padding(1) == ((0, 0), (0, 0))


def test_stride2_conv_pads_one_each_side():
  x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
  conv = nn.Conv(1, (3, 3), strides=(2, 2), padding=layers.symmetric_padding(3), use_bias=False,
                 kernel_init=nn.initializers.ones)
  y = conv.apply(conv.init(jax.random.PRNGKey(0), x), x)
  xn = np.asarray(x[0, :, :, 0])
  assert y.shape == (1, 2, 2, 1)
  assert y[0, 0, 0, 0] == xn[0:2, 0:2].sum()  # window rows/cols -1..1: padding then 0, 1
  assert y[0, 1, 1, 0] == xn[1:4, 1:4].sum()
  same = nn.Conv(1, (3, 3), strides=(2, 2), padding='SAME', use_bias=False,
                 kernel_init=nn.initializers.ones)
  y_same = same.apply(same.init(jax.random.PRNGKey(0), x), x)
  assert y_same[0, 0, 0, 0] != y[0, 0, 0, 0]  # flax 'SAME' pads (0, 1): not torchvision


def _conv_eqns(jaxpr):
  jaxpr = model_stats._as_jaxpr(jaxpr)
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      yield eqn
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        if model_stats._as_jaxpr(sub) is not None:
          yield from _conv_eqns(sub)


@pytest.mark.parametrize('name', ['resnet18', 'resnet50_v1', 'resnet20'])
def test_model_convs_pad_symmetrically(name):
  model = make(name)
  size = 32 if model_fields(name)['family'] == 'cifar' else 64
  variables = abstract_variables(model, (1, size, size, 3))
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(
      variables, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  convs = list(_conv_eqns(jaxpr))
  assert convs
  strided = 0
  for eqn in convs:
    kernel = eqn.invars[1].aval.shape
    k = kernel[eqn.params['dimension_numbers'].rhs_spec[2]]
    p = (k - 1) // 2
    assert tuple(map(tuple, eqn.params['padding'])) == ((p, p), (p, p))
    strided += tuple(eqn.params['window_strides']) == (2, 2)
  assert strided > 0


def test_max_pool_pads_with_minus_infinity():
  rng = np.random.default_rng(0)
  x = -np.abs(rng.standard_normal((1, 8, 8, 2))).astype(np.float32) - 1.0  # all negative
  y = np.asarray(layers.max_pool(jnp.asarray(x)))
  assert y.shape == (1, 4, 4, 2)
  np.testing.assert_array_equal(y[0, 0, 0], x[0, :2, :2].max(axis=(0, 1)))
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  ref = np.stack([np.stack([padded[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1))
                            for j in range(4)]) for i in range(4)])
  np.testing.assert_array_equal(y[0], ref)
  assert (y < 0).all()  # a zero padding would have won every border window


@pytest.mark.parametrize('size, window, stride', [(8, 3, 2), (7, 3, 2), (9, 3, 1), (10, 5, 2),
                                                  (112, 3, 2)])
def test_zero_padded_max_pool_equals_pooling_the_zero_padded_input(size, window, stride):
  """Keras' ZeroPadding2D + MaxPooling2D, taken as the -inf pool raised to 0 where a window
  reaches over the border: the same values and gradients as pooling a zero-padded copy, on
  inputs mostly negative (where the zero wins) and without exact zeros (no ties)."""
  rng = np.random.default_rng(size)
  x = jnp.asarray(rng.standard_normal((2, size, size + 1, 3)).astype(np.float32) - 1.5)
  p = (window - 1) // 2

  def reference(x):
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    return nn.max_pool(padded, (window, window), strides=(stride, stride), padding='VALID')

  def pooled(x):
    return layers.max_pool(x, window, stride, zero_pad=True)
  y, ref = pooled(x), reference(x)
  assert y.shape == ref.shape
  np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))
  unpadded = np.asarray(layers.max_pool(x, window, stride))
  assert (unpadded != np.asarray(ref)).any() and (np.asarray(ref) < 0).any()   # zeros won
  grad = jax.grad(lambda x: jnp.sum(pooled(x) ** 3))(x)
  ref_grad = jax.grad(lambda x: jnp.sum(reference(x) ** 3))(x)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(ref_grad))


# ---------------------------------------------------------------------------------------------
# BatchNorm.

def bn_input(shape, seed=0):
  rng = np.random.default_rng(seed)
  return (3.0 + 2.0 * rng.standard_normal(shape)).astype(np.float32)


def test_batchnorm_train_mode():
  x = bn_input((8, 3, 3, 4))
  bn = layers.BatchNorm(momentum=0.9)
  variables = bn.init(jax.random.PRNGKey(0), jnp.asarray(x))
  np.testing.assert_array_equal(variables['batch_stats']['mean'], 0)
  np.testing.assert_array_equal(variables['batch_stats']['var'], 1)
  y, updates = bn.apply(variables, jnp.asarray(x), mutable=['batch_stats'])
  y = np.asarray(y)
  np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1, atol=1e-3)
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 + 0.1 * var, rtol=1e-5)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)


def test_batchnorm_eval_mode_uses_running_stats():
  x = bn_input((4, 2, 2, 3), seed=1)
  bn = layers.BatchNorm(use_running_average=True)
  stats = {'mean': jnp.array([1.0, -2.0, 0.5]), 'var': jnp.array([4.0, 0.25, 1.0])}
  params = {'scale': jnp.array([2.0, 1.0, 0.5]), 'bias': jnp.array([0.5, 0.0, -1.0])}
  y, updates = bn.apply({'params': params, 'batch_stats': stats}, jnp.asarray(x),
                        mutable=['batch_stats'])
  for key in stats:
    np.testing.assert_array_equal(updates['batch_stats'][key], stats[key])
  m, v = np.asarray(stats['mean']), np.asarray(stats['var'])
  ref = (x - m) / np.sqrt(v + 1e-5) * np.asarray(params['scale']) + np.asarray(params['bias'])
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_batchnorm_group_size():
  x = bn_input((6, 2, 2, 3), seed=2)
  bn = layers.BatchNorm(group_size=2)
  variables = bn.init(jax.random.PRNGKey(0), jnp.asarray(x))
  y, updates = bn.apply(variables, jnp.asarray(x), mutable=['batch_stats'])
  ref = np.empty_like(x)
  means, vars_ = [], []
  for g in range(3):
    xs = x[2 * g:2 * g + 2]
    m, v = xs.mean(axis=(0, 1, 2)), xs.var(axis=(0, 1, 2))
    ref[2 * g:2 * g + 2] = (xs - m) / np.sqrt(v + 1e-5)
    means.append(m)
    vars_.append(v)
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * np.mean(means, axis=0),
                             rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 + 0.1 * np.mean(vars_, axis=0),
                             rtol=1e-5)
  # different from the global statistics
  y_global, _ = layers.BatchNorm().apply(variables, jnp.asarray(x), mutable=['batch_stats'])
  assert not np.allclose(y, y_global, atol=1e-3)
  with pytest.raises(ValueError, match='group_size'):
    layers.BatchNorm(group_size=4).apply(variables, jnp.asarray(x), mutable=['batch_stats'])


# ---------------------------------------------------------------------------------------------
# Forward passes of a tiny model.

@pytest.fixture(scope='module')
def resnet20_setup():
  model = make('resnet20')
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 32, 32, 3)), jnp.float32)
  return model, numpy_variables(model, x.shape), x


def test_train_mode_updates_batch_stats(resnet20_setup):
  model, variables, x = resnet20_setup
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
  old = jax.tree_util.tree_leaves(variables['batch_stats'])
  new = jax.tree_util.tree_leaves(updates['batch_stats'])
  assert len(old) == len(new) == 2 * 19
  assert all(not np.allclose(a, b) for a, b in zip(old, new))
  assert (jax.tree_util.tree_structure(updates['batch_stats']) ==
          jax.tree_util.tree_structure(variables['batch_stats']))


def test_eval_mode_keeps_batch_stats(resnet20_setup):
  model, variables, x = resnet20_setup
  logits, updates = model.apply(variables, x, train=False, mutable=['batch_stats'])
  for a, b in zip(jax.tree_util.tree_leaves(variables['batch_stats']),
                  jax.tree_util.tree_leaves(updates['batch_stats'])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(logits, model.apply(variables, x, train=False))
  # eval mode treats examples independently
  np.testing.assert_allclose(model.apply(variables, x[:1], train=False), logits[:1],
                             rtol=1e-5, atol=1e-5)


def test_bfloat16_compute():
  model = make('resnet20', dtype='bfloat16')
  shapes = abstract_variables(model, (2, 32, 32, 3))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
  out, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, return_features=True),
                              shapes, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert out.dtype == jnp.float32
  for name in ('stem', 'stage1', 'stage2', 'stage3'):
    assert feats[name].dtype == jnp.bfloat16, name
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 32, 32, 3)), jnp.float32)
  logits, updates = model.apply(numpy_variables(model, x.shape), x, train=True,
                                mutable=['batch_stats'])
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree_util.tree_leaves(updates['batch_stats']))
