"""The model zoo against published numbers, unit and layer semantics, and the summary script.

Parameter counts and MACs use abstract shapes only (`jax.eval_shape` / `jax.make_jaxpr`); forward
passes run on tiny inputs with weights filled from numpy (no slow random-init compilation).
"""

import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import command, run_command
from resnet_flax.tools import model_stats
from resnet_flax.models import (NAMES, UnitLayer, create_model, init_variables, model_fields,
                                unit_layer)
from resnet_flax.models import layers
from resnet_flax.models.blocks import BasicBlock, BottleneckBlock



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
# Parameter counts.

TORCHVISION_PARAMS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'resnet152': 60_192_808,
    'resnext50_32x4d': 25_028_904,
    'resnext101_32x8d': 88_791_336,
    'resnext101_64x4d': 83_455_272,
    'wide_resnet50_2': 68_883_240,
    'wide_resnet101_2': 126_886_696,
}

CIFAR_PARAMS = {  # He et al. 2015, section 4.2 (option A shortcuts)
    'resnet20': 269_722,
    'resnet32': 464_154,
    'resnet44': 658_586,
    'resnet56': 853_018,
    'resnet110': 1_727_962,
    'resnet1202': 19_421_274,
}


LAYOUTS = pytest.mark.parametrize('layout', ['off', 'on'])   # model.scan_units


@LAYOUTS
@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS))
def test_params_equal_torchvision(name, layout):
  counts = model_stats.count_variables(make(name, scan_units=layout), 224)
  assert counts['params'] == TORCHVISION_PARAMS[name]


@LAYOUTS
@pytest.mark.parametrize('name', sorted(CIFAR_PARAMS))
def test_cifar_params_equal_paper(name, layout):
  counts = model_stats.count_variables(make(name, scan_units=layout), 32)
  assert counts['params'] == CIFAR_PARAMS[name]


@pytest.mark.parametrize('name,expected,tolerance', [
    ('preact_resnet164', 1.7e6, 0.01),
    ('preact_resnet1001', 10.2e6, 0.02),
])
@LAYOUTS
def test_preact_params_match_paper(name, expected, tolerance, layout):
  params = model_stats.count_variables(make(name, scan_units=layout), 32)['params']
  assert abs(params - expected) <= tolerance * expected


def test_batch_stats_count():
  # torchvision's running_mean + running_var of ResNet-50: 2 x 26,560.
  assert model_stats.count_variables(make('resnet50'), 224)['batch_stats'] == 53_120
  # ResNet-20: 19 BN layers (stem + 18 in units) of 16/32/64 channels, mean and var each.
  assert model_stats.count_variables(make('resnet20'), 32)['batch_stats'] == 2 * (
      16 + 6 * 16 + 6 * 32 + 6 * 64)


def test_init_variables_is_model_init_in_one_program():
  """The same variables as `model.init` run op by op (one draw per key, to float32 round-off of
  the fused normal sampling), another key giving other ones, BatchNorm statistics at their
  initial values."""
  model = create_model({**model_fields('resnet20'), 'scan_units': 'on'})
  x = jnp.zeros((1, 32, 32, 3))
  eager = model.init(jax.random.PRNGKey(3), x, train=False)
  jitted = init_variables(model, x, jax.random.PRNGKey(3))
  assert jax.tree.structure(jitted) == jax.tree.structure(eager)
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  other = init_variables(model, x)                               # PRNGKey(0)
  kernel = lambda v: np.asarray(v['params']['stem_conv']['kernel'])
  assert not np.allclose(kernel(other), kernel(jitted))
  stats = jax.tree.leaves(jitted['batch_stats'])
  assert all(np.all((s == 0) | (s == 1)) for s in stats)


def test_params_do_not_depend_on_image_size():
  model = make('resnet18')
  assert (model_stats.count_variables(model, 32)['params'] ==
          model_stats.count_variables(model, 224)['params'] == TORCHVISION_PARAMS['resnet18'])


def test_depth_sweep_through_fields():
  fields = {**model_fields('resnet50'), 'depth': 101}
  assert model_stats.count_variables(create_model(fields), 224)['params'] == 44_549_160
  fields = {**model_fields('resnet20'), 'depth': 56}
  assert model_stats.count_variables(create_model(fields), 32)['params'] == 853_018


# ---------------------------------------------------------------------------------------------
# MACs.

@pytest.mark.parametrize('name,expected', [
    ('resnet18', 1.814e9),
    ('resnet34', 3.664e9),
    ('resnet50', 4.089e9),      # v1.5 (stride in the 3x3)
    ('resnet50_v1', 3.858e9),   # stride in the first 1x1
    ('resnet101', 7.801e9),
    ('resnet152', 11.514e9),
])
def test_macs_at_224(name, expected):
  macs = model_stats.count_macs(make(name), None, 224)
  assert abs(macs - expected) <= 0.005 * expected


def test_macs_exact_resnet50():
  assert model_stats.count_macs(make('resnet50'), None, 224) == 4_089_184_256


@pytest.mark.parametrize('depth', [20, 56, 110])  # 1202: test_summary_script_resnet1202
def test_cifar_macs_exact(depth):
  n = (depth - 2) // 6
  unit = 2 * 32 * 32 * 16 * 9 * 16  # two 3x3 convs at 32x32x16; the same at 16x16x32, 8x8x64
  down = unit // 4 + unit // 2  # first unit of stages 2 and 3: half the input channels in conv1
  expected = 32 * 32 * 16 * 27 + 3 * n * unit - 2 * (unit - down) + 64 * 10
  assert model_stats.count_macs(make(f'resnet{depth}'), None, 32) == expected


def test_macs_walk_sub_jaxprs():
  w = jnp.ones((5, 6))
  w2 = jnp.ones((5, 5))

  @jax.custom_jvp
  def custom(x):
    return x @ w

  custom.defjvp(lambda primals, tangents: (custom(*primals), tangents[0] @ w))

  def f(x, pred):
    a = jax.jit(lambda x: x @ w)(x)                                  # 4*6*5 = 120
    c, _ = jax.lax.scan(lambda c, _: (c @ w2, None), x, None, length=3)  # 3 * 4*5*5 = 300
    b = jax.checkpoint(lambda x: x @ w)(x)                           # 120
    d = jax.lax.cond(pred, lambda x: x @ w, lambda x: jnp.zeros((4, 6)), x)  # max(120, 0)
    e = custom(x)                                                    # 120
    return a + b + d + e, c

  jaxpr = jax.make_jaxpr(f)(jax.ShapeDtypeStruct((4, 5), jnp.float32),
                            jax.ShapeDtypeStruct((), jnp.bool_))
  assert model_stats.jaxpr_macs(jaxpr) == 120 + 300 + 120 + 120 + 120


def test_macs_grouped_and_strided_conv():
  def f(x, k):
    return jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=2)
  jaxpr = jax.make_jaxpr(f)(jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32),
                            jax.ShapeDtypeStruct((3, 3, 2, 6), jnp.float32))
  # output 4x4x6, each output element: 3x3 window x 4/2 input channels.
  assert model_stats.jaxpr_macs(jaxpr) == 4 * 4 * 6 * 9 * 2


# ---------------------------------------------------------------------------------------------
# Shapes, stage table, pooling.

@pytest.mark.parametrize('name,channels', [
    ('resnet18', (64, 128, 256, 512)),
    ('resnet34', (64, 128, 256, 512)),
    ('resnet50', (256, 512, 1024, 2048)),
    ('resnet50_v2', (256, 512, 1024, 2048)),
    ('resnet101_v1', (256, 512, 1024, 2048)),
])
def test_stage_shapes_imagenet(name, channels):
  rows = model_stats.stage_table(make(name), 224)
  assert [r['name'] for r in rows] == ['stem', 'stage1', 'stage2', 'stage3', 'stage4', 'head']
  assert rows[0]['output_shape'] == (56, 56, 64)  # conv1 112x112, then the max pool
  assert [r['output_shape'] for r in rows[1:5]] == [
      (s, s, c) for s, c in zip((56, 28, 14, 7), channels)]
  assert rows[5]['output_shape'] == (1000,)


@pytest.mark.parametrize('name,widths', [
    ('resnet20', (16, 32, 64)),
    ('resnet110', (16, 32, 64)),
    ('preact_resnet164', (64, 128, 256)),
])
def test_stage_shapes_cifar(name, widths):
  rows = model_stats.stage_table(make(name), 32)
  assert [r['name'] for r in rows] == ['stem', 'stage1', 'stage2', 'stage3', 'head']
  assert rows[0]['output_shape'] == (32, 32, 16)
  assert [r['output_shape'] for r in rows[1:4]] == [
      (s, s, c) for s, c in zip((32, 16, 8), widths)]
  assert rows[4]['output_shape'] == (10,)


@pytest.mark.parametrize('name,overrides,size', [
    ('resnet50', {}, 224),
    ('resnet18_v2', {}, 224),
    ('resnext50_32x4d', {}, 64),
    ('resnet50', {'include_top': False, 'pooling': 'none'}, 96),
    ('resnet20', {}, 32),
    ('preact_resnet164', {}, 32),
])
def test_stage_table_totals(name, overrides, size):
  model = make(name, **overrides)
  rows = model_stats.stage_table(model, size)
  counts = model_stats.count_variables(model, size)
  assert sum(r['params'] for r in rows) == counts['params']
  assert sum(r['macs'] for r in rows) == model_stats.count_macs(model, None, size)
  assert all(r['macs'] > 0 for r in rows[:-1])


def test_stage_table_attribution_resnet50():
  rows = {r['name']: r for r in model_stats.stage_table(make('resnet50'), 224)}
  assert rows['stem']['params'] == 64 * 3 * 49 + 2 * 64
  assert rows['stem']['macs'] == 112 * 112 * 64 * 3 * 49
  assert rows['head']['params'] == 2048 * 1000 + 1000
  assert rows['head']['macs'] == 2048 * 1000


def test_summarize():
  summary = model_stats.summarize('resnet20')
  assert summary['name'] == 'resnet20' and summary['image_size'] == 32
  assert summary['params'] == 269_722 and summary['batch_stats'] == 1376
  assert summary['macs'] == sum(r['macs'] for r in summary['stages'])
  assert model_stats.summarize(model_fields('resnet18'), 64)['image_size'] == 64


@pytest.mark.parametrize('pooling,shape', [('avg', (2, 2048)), ('max', (2, 2048)),
                                           ('none', (2, 2, 2, 2048))])
def test_include_top_false(pooling, shape):
  model = make('resnet50', include_top=False, pooling=pooling)
  variables = abstract_variables(model, (2, 64, 64, 3))
  assert 'head' not in variables['params']
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert out.shape == shape
  params = model_stats.count_variables(model, 224)['params']
  assert params == TORCHVISION_PARAMS['resnet50'] - (2048 * 1000 + 1000)


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


# ---------------------------------------------------------------------------------------------
# Config validation.

@pytest.mark.parametrize('name,overrides,field', [
    ('resnet50', {'depth': 19}, 'depth'),
    ('resnet20', {'depth': 21}, 'depth'),
    ('resnet50', {'version': 'v3'}, 'version'),
    ('resnet50', {'shortcut': 'D'}, 'shortcut'),
    ('resnet50', {'no_such_field': 1}, 'no_such_field'),
    ('resnet50', {'family': 'mnist'}, 'family'),
    ('resnet50', {'pooling': 'sum', 'include_top': False}, 'pooling'),
    ('resnet18', {'groups': 32}, 'groups'),
])
def test_invalid_config_names_field(name, overrides, field):
  with pytest.raises(ValueError, match=field):
    create_model({**model_fields(name), **overrides})


def test_unknown_name():
  with pytest.raises(ValueError, match='unknown model name'):
    model_fields('resnet19')


def test_registry_names_all_build():
  for name in NAMES:
    assert isinstance(create_model(model_fields(name)), nn.Module)


# ---------------------------------------------------------------------------------------------
# The summary script.

def run_summary(*args):
  return run_command(command('summary', *args))


def check_summary_json(proc):
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(proc.stdout)  # exactly one JSON object on stdout
  assert sum(r['params'] for r in summary['stages']) == summary['params']
  assert sum(r['macs'] for r in summary['stages']) == summary['macs']
  return summary


def test_summary_script_resnet50():
  summary = check_summary_json(run_summary('resnet50', '--json'))
  assert summary['name'] == 'resnet50' and summary['image_size'] == 224
  assert summary['params'] == 25_557_032 and summary['batch_stats'] == 53_120
  assert summary['macs'] == 4_089_184_256
  assert [tuple(r['output_shape']) for r in summary['stages']] == [
      (56, 56, 64), (56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048), (1000,)]


def test_summary_script_resnet1202():
  summary = check_summary_json(run_summary('resnet1202', '--json'))
  assert summary['image_size'] == 32
  assert summary['params'] == 19_421_274 and summary['batch_stats'] == 89_632
  assert summary['macs'] == 2_829_238_912
  assert len(summary['stages']) == 5


def test_summary_script_overrides_and_table():
  proc = run_summary('resnet50', '--set', 'depth=101', '--set', 'version=v1', '--image-size',
                     '224')
  assert proc.returncode == 0, proc.stderr
  assert '44,549,160' in proc.stdout and 'stage4' in proc.stdout and 'G' in proc.stdout
  proc = run_summary('no_such_model')
  assert proc.returncode == 2
  assert proc.stderr.strip().count('\n') == 0 and 'no_such_model' in proc.stderr


def test_describe_names_the_fields_that_differ_from_the_name():
  from resnet_flax.models.registry import describe
  assert describe(model_fields('resnet56')) == 'resnet56'
  assert describe({**model_fields('resnet20'), 'depth': 56, 'version': 'v2'}) == (
      'resnet20 with depth=56, version=v2')
  assert describe({**model_fields('resnet20'), 'name': ''}) == ''


def test_unit_layer_reads_every_layer_path_of_a_network():
  """Every conv/norm module of ResNet-50's units has a position; stem and head have none."""
  params = abstract_variables(make('resnet50'), (1, 32, 32, 3))['params']
  positions = {(unit, layer): unit_layer((unit, layer))
               for unit, sub in params.items() if unit.startswith('stage') for layer in sub}
  assert len(positions) == 16 * 6 + 4 * 2      # 3 convs + 3 norms a unit, 4 projections
  assert all(p is not None for p in positions.values())
  assert positions['stage2_unit1', 'conv3'] == UnitLayer(2, 1, 'conv', 3)
  assert positions['stage4_unit3', 'norm2'] == UnitLayer(4, 3, 'norm', 2)
  assert positions['stage3_unit1', 'shortcut_norm'] == UnitLayer(3, 1, 'shortcut_norm', 0)
  for outside in (('stem_conv',), ('head',), ('stage1_unit1', 'conv1', 'kernel'),
                  ('stage1_unit1', 'se_pool')):
    assert unit_layer(outside) is None
