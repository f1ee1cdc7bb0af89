"""Pooling and the head, return_features, input sizes, shortcuts and the semantics of residual and plain units.

Forward passes run on tiny inputs with weights filled from numpy (no slow random-init
compilation).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import abstract_variables, make, numpy_variables
from resnet_flax.models import model_fields
from resnet_flax.models import layers
from resnet_flax.models.blocks import BasicBlock, BottleneckBlock


def unit_io_shapes(model, image_size):
  """{unit name: (input shape, output shape)} of the top-level residual units."""
  records = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__' and len(module.path) == 1 and '_unit' in module.name:
      records[module.name] = (tuple(args[0].shape), tuple(out.shape))
    return out

  def init(x):
    with nn.intercept_methods(interceptor):
      return model.init(jax.random.PRNGKey(0), x, train=False)
  variables = jax.eval_shape(init, jax.ShapeDtypeStruct((1, image_size, image_size, 3),
                                                        jnp.float32))
  return records, variables['params']


# ---------------------------------------------------------------------------------------------
# Pooling and input sizes.

def test_pooling_values():
  model = make('resnet18', include_top=False, pooling='none')
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = numpy_variables(model, x.shape)
  fmap = np.asarray(model.apply(variables, x, train=False))
  for pooling, reduce in (('avg', np.mean), ('max', np.max)):
    pooled = make('resnet18', include_top=False, pooling=pooling).apply(variables, x, train=False)
    np.testing.assert_allclose(pooled, reduce(fmap, axis=(1, 2)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('pooling', ['avg', 'max', 'none'])
def test_the_head_takes_the_pooled_or_flattened_map(pooling):
  """With the top, `pooling` turns the last feature map into the head's input: its average,
  its maximum, or (none) the map flattened in H, W, C order as Keras' Flatten, whose first
  Dense layer then has H * W * C inputs."""
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 3)), jnp.float32)
  model = make('resnet20', pooling=pooling, head_hidden=(7,))
  variables = numpy_variables(model, x.shape, seed=3)
  variables['params']['head_hidden1']['bias'] = jnp.linspace(-0.5, 0.5, 7)
  hidden, head = variables['params']['head_hidden1'], variables['params']['head']
  assert hidden['kernel'].shape == ((8 * 8 * 64) if pooling == 'none' else 64, 7)
  backbone = {c: {k: v for k, v in tree.items() if not k.startswith('head')}
              for c, tree in variables.items()}
  fmap = np.asarray(make('resnet20', include_top=False, pooling='none').apply(
      backbone, x, train=False), np.float64)
  features = {'avg': fmap.mean(axis=(1, 2)), 'max': fmap.max(axis=(1, 2)),
              'none': fmap.reshape(2, -1)}[pooling]
  expected = (np.maximum(features @ np.asarray(hidden['kernel']) + np.asarray(hidden['bias']), 0)
              @ np.asarray(head['kernel']) + np.asarray(head['bias']))
  logits, feats = model.apply(variables, x, train=False, return_features=True)
  np.testing.assert_allclose(feats['pre_logits'], features, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_return_features():
  model = make('resnet50')
  variables = abstract_variables(model, (2, 64, 64, 3))
  out, feats = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, return_features=True), variables,
      jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert out.shape == (2, 1000)
  assert {k: v.shape for k, v in feats.items()} == {
      'stem': (2, 16, 16, 64), 'stage1': (2, 16, 16, 256), 'stage2': (2, 8, 8, 512),
      'stage3': (2, 4, 4, 1024), 'stage4': (2, 2, 2, 2048), 'pre_logits': (2, 2048)}
  model = make('resnet50', include_top=False, pooling='none')
  out, feats = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, return_features=True),
      abstract_variables(model, (2, 64, 64, 3)), jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert out.shape == feats['stage4'].shape == (2, 2, 2, 2048)
  assert 'pre_logits' not in feats


@pytest.mark.parametrize('size', [32, 33, 47, 64, 100, 224])
def test_any_input_size_shapes(size):
  model = make('resnet18')
  variables = abstract_variables(model, (1, size, size, 3))
  _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, return_features=True),
                            variables, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  half = lambda n: (n + 1) // 2  # every stride-2 layer (k, pad (k-1)//2) gives ceil(n/2)
  s = half(half(size))  # 7x7 stride-2 conv, then the 3x3 stride-2 max pool
  assert feats['stem'].shape[1:3] == (s, s)
  assert feats['stage1'].shape[1:3] == (s, s)
  for name in ('stage2', 'stage3', 'stage4'):
    s = half(s)
    assert feats[name].shape[1:3] == (s, s), name


@pytest.mark.parametrize('size', [32, 33])
def test_imagenet_forward_small_inputs(size):
  model = make('resnet18')
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, size, size, 3)), jnp.float32)
  out = model.apply(numpy_variables(model, x.shape), x, train=False)
  assert out.shape == (2, 1000) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


# ---------------------------------------------------------------------------------------------
# Shortcuts.

def count_projections(params):
  return sum('shortcut_conv' in v for k, v in params.items() if '_unit' in k)


@pytest.mark.parametrize('name,overrides,size,expected', [
    ('resnet18', {}, 64, 3),
    ('resnet34', {}, 64, 3),
    ('resnet50', {}, 64, 4),       # the first unit widens 64 -> 256
    ('resnet18_v2', {}, 64, 3),
    ('resnet20', {'shortcut': 'B'}, 32, 2),
    ('resnet20', {}, 32, 0),       # the paper's option A
])
def test_projection_only_where_shape_changes(name, overrides, size, expected):
  shortcut = {**model_fields(name), **overrides}['shortcut']
  io, params = unit_io_shapes(make(name, **overrides), size)
  assert io, 'no units recorded'
  for unit, (shape_in, shape_out) in io.items():
    has_projection = 'shortcut_conv' in params[unit]
    if shape_in == shape_out or shortcut == 'A':
      assert not has_projection, unit
    else:
      assert has_projection, unit
  assert count_projections(params) == expected


def test_shortcut_c_and_a():
  params = abstract_variables(make('resnet18', shortcut='C'), (1, 32, 32, 3))['params']
  units = [k for k in params if '_unit' in k]
  assert len(units) == 8 and count_projections(params) == 8
  params = abstract_variables(make('resnet18', shortcut='A'), (1, 32, 32, 3))['params']
  assert count_projections(params) == 0
  params = abstract_variables(make('resnet20'), (1, 32, 32, 3))['params']
  assert not any('shortcut_conv' in str(path) for path, _ in
                 jax.tree_util.tree_flatten_with_path(params)[0])
  # option A changes no parameter count of the units relative to the plain network
  plain = abstract_variables(make('plain20'), (1, 32, 32, 3))['params']
  assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(params)


def test_shortcut_a_zero_pads_channels():
  from resnet_flax.models.blocks import zero_pad_shortcut
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  y = zero_pad_shortcut(x, 5, 2)
  assert y.shape == (2, 2, 2, 5)
  np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
  np.testing.assert_array_equal(y[..., 3:], 0)


# ---------------------------------------------------------------------------------------------
# Unit semantics.

CONV = functools.partial(nn.Conv, use_bias=False)
NORM = functools.partial(layers.BatchNorm, use_running_average=True)


def make_unit(block, version, **kw):
  filters = 8 if block is BasicBlock else 2  # bottleneck output: 4 x 2 = 8 channels
  return block(filters=filters, conv=CONV, norm=NORM, version=version, **kw)


def unit_input(seed=0):
  x = np.random.default_rng(seed).standard_normal((2, 6, 6, 8)).astype(np.float32)
  assert (x < 0).any()
  return jnp.asarray(x)


@pytest.mark.parametrize('block', [BasicBlock, BottleneckBlock])
@pytest.mark.parametrize('version', ['v1', 'v1.5', 'v2'])
def test_zero_init_residual_unit(block, version):
  x = unit_input()
  unit = make_unit(block, version, zero_init_residual=True)
  variables = unit.init(jax.random.PRNGKey(0), x)
  assert 'shortcut_conv' not in variables['params']
  y = unit.apply(variables, x)
  if version == 'v2':
    np.testing.assert_array_equal(y, x)  # exactly the identity
  else:
    np.testing.assert_array_equal(y, jnp.maximum(x, 0))  # ReLU(x)

  plain = make_unit(block, version, zero_init_residual=True, residual=False)
  plain_vars = plain.init(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(plain.apply(plain_vars, x), 0)  # branch alone: exactly zero


@pytest.mark.parametrize('block', [BasicBlock, BottleneckBlock])
@pytest.mark.parametrize('version', ['v1', 'v2'])
def test_plain_unit_differs_from_residual(block, version):
  x = unit_input(1)
  residual = make_unit(block, version)
  plain = make_unit(block, version, residual=False)
  variables = residual.init(jax.random.PRNGKey(1), x)
  assert (jax.tree_util.tree_structure(variables) ==
          jax.tree_util.tree_structure(plain.init(jax.random.PRNGKey(1), x)))
  y_res = residual.apply(variables, x)
  y_plain = plain.apply(variables, x)
  assert not np.allclose(y_res, y_plain)
  if version == 'v2':  # pre-activation: nothing after the addition
    np.testing.assert_allclose(y_res, y_plain + x, rtol=1e-6, atol=1e-6)


def test_plain_network_differs_from_residual():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 3)), jnp.float32)
  resnet, plain = make('resnet20'), make('plain20')
  variables = numpy_variables(resnet, x.shape)
  y_res = resnet.apply(variables, x, train=False)
  y_plain = plain.apply(variables, x, train=False)
  assert y_res.shape == y_plain.shape == (2, 10)
  assert not np.allclose(y_res, y_plain)


def test_bottleneck_stride_placement():
  x = jnp.zeros((1, 8, 8, 16))
  for version, strides in (('v1', ((2, 2), (1, 1))), ('v1.5', ((1, 1), (2, 2)))):
    unit = BottleneckBlock(filters=4, conv=CONV, norm=NORM, version=version, strides=2)
    spec = unit.branch_layers()
    assert [(s, s) for _, _, s, _ in spec[:2]] == list(strides), version
    shapes = jax.eval_shape(unit.init, jax.random.PRNGKey(0), x)['params']
    assert shapes['conv2']['kernel'].shape == (3, 3, 4, 4)
