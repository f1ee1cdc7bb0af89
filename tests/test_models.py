"""The model zoo against published numbers (parameters, MACs, stage shapes, the headless
networks' counts), initialisation in one program, config validation, the summary script and
`describe` / `unit_layer`.

Parameter counts and MACs use abstract shapes (`jax.eval_shape` / `jax.make_jaxpr`).
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import command, run_command
from model_helpers import abstract_variables, make
from resnet_flax.tools import model_stats
from resnet_flax.models import (NAMES, UnitLayer, create_model, init_variables, model_fields,
                                unit_layer)


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
