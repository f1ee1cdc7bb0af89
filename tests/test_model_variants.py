"""The later ResNet variants as model fields: SE-ResNet(eXt), ResNet-D, ResNet-RS and stochastic
depth, against timm's parameter counts and hand computations of their parts.

timm's logits are checked in tests/test_weights_timm.py (a separate torch process).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import make
from resnet_flax.errors import ConfigError
from resnet_flax.models import (UnitLayer, create_model, init_variables, model_fields,
                                unit_layer)
from resnet_flax.models import layers, registry
from resnet_flax.models.blocks import BasicBlock, BottleneckBlock
from resnet_flax.models.resnet import drop_path_rates

# timm 1.0: sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
TIMM_PARAMS = {
    'seresnet18': 11_779_624,
    'seresnet34': 21_960_416,
    'seresnet50': 28_088_024,
    'seresnet101': 49_326_872,
    'seresnet152': 66_821_848,
    'seresnext50_32x4d': 27_559_896,
    'seresnext101_32x8d': 93_569_048,
    'resnet18d': 11_708_744,
    'resnet34d': 21_816_904,
    'resnet50d': 25_576_264,
    'resnet101d': 44_568_392,
    'resnet152d': 60_212_040,
    'resnetrs50': 35_691_912,
    'resnetrs101': 63_618_696,
}


def abstract_params(name):
  return registry.abstract_variables(model_fields(name), 64)['params']


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name', sorted(TIMM_PARAMS))
def test_params_equal_timm(name):
  assert count(abstract_params(name)) == TIMM_PARAMS[name]


def test_variant_layers_have_their_names_and_shapes():
  rs = abstract_params('resnetrs50')
  assert [rs[f'stem_conv{k}']['kernel'].shape for k in (1, 2, 3)] == [
      (3, 3, 3, 32), (3, 3, 32, 32), (3, 3, 32, 64)]
  assert {'stem_norm1', 'stem_norm2', 'stem_norm3', 'stem_pool_norm'} <= set(rs)
  assert rs['stem_pool_conv']['kernel'].shape == (3, 3, 64, 64)
  assert rs['stage1_unit1']['se']['reduce']['kernel'].shape == (1, 1, 256, 64)   # 256 * 0.25
  assert rs['stage1_unit1']['se']['expand']['bias'].shape == (256,)
  se18 = abstract_params('seresnet18')
  assert se18['stage1_unit1']['se']['reduce']['kernel'].shape == (1, 1, 64, 8)    # 64/16 -> 8
  assert 'stem_conv' in se18 and 'stem_pool_conv' not in se18
  # ResNet-D keeps the projection's names: only its input (pooled) changes
  d50 = abstract_params('resnet50d')
  assert d50['stage2_unit1']['shortcut_conv']['kernel'].shape == (1, 1, 256, 512)
  assert 'se' not in d50['stage2_unit1']


def test_squeeze_excite_width_is_timms_rounding():
  width = layers.squeeze_excite_width
  assert [width(64, 1 / 16), width(128, 1 / 16), width(256, 1 / 16), width(2048, 1 / 16)] == [
      8, 8, 16, 128]
  assert [width(256, 0.25), width(20, 0.25), width(12, 0.5)] == [64, 8, 8]


def test_unit_layer_places_the_se_convs():
  assert unit_layer(('stage2_unit3', 'se', 'reduce')) == UnitLayer(2, 3, 'se_reduce', 0)
  assert unit_layer(('stage1_unit1', 'se', 'expand')) == UnitLayer(1, 1, 'se_expand', 0)
  for outside in (('stage1_unit1', 'se', 'other'), ('stage1_unit1', 'conv1', 'x'),
                  ('stem_conv1',), ('stem_pool_conv',)):
    assert unit_layer(outside) is None


# ---------------------------------------------------------------------------------------------
# Units, against hand computations.

CONV = functools.partial(nn.Conv, use_bias=False)
NORM = functools.partial(layers.BatchNorm, use_running_average=True)


def randomised(variables, seed):
  """`variables` with every leaf random (BN variances positive), so no layer is an identity."""
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
  out = []
  for path, leaf in leaves:
    value = rng.standard_normal(leaf.shape) * 0.5
    if getattr(path[-1], 'key', '') == 'var':
      value = rng.uniform(0.5, 2.0, leaf.shape)
    out.append(jnp.asarray(value, leaf.dtype))
  return jax.tree_util.tree_unflatten(tree, out)


def without_se(variables):
  return {'params': {k: v for k, v in variables['params'].items() if k != 'se'},
          'batch_stats': variables['batch_stats']}


def zero_excitation(variables):
  params = dict(variables['params'])
  se = dict(params['se'])
  se['expand'] = jax.tree.map(jnp.zeros_like, se['expand'])
  params['se'] = se
  return {'params': params, 'batch_stats': variables['batch_stats']}


@pytest.mark.parametrize('block', [BasicBlock, BottleneckBlock])
@pytest.mark.parametrize('version', ['v1.5', 'v2'])
def test_se_with_zeroed_excitation_halves_the_residual_branch(block, version):
  """sigmoid(0) = 0.5: the SE unit is the unit without SE with its branch scaled by 0.5."""
  filters = 8 if block is BasicBlock else 2        # 8 output channels, the input's
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 8)), jnp.float32)
  kw = dict(filters=filters, conv=CONV, norm=NORM, version=version)
  se_unit, unit = block(se_ratio=0.25, **kw), block(**kw)
  variables = zero_excitation(randomised(se_unit.init(jax.random.PRNGKey(0), x), 1))
  plain_kw = dict(kw, residual=False)
  branch = block(**plain_kw).apply(without_se(variables), x)      # the branch alone
  half = block(se_ratio=0.25, **plain_kw).apply(variables, x)
  # (v1.5: ReLU ends the plain branch, and ReLU(b / 2) = ReLU(b) / 2)
  np.testing.assert_allclose(half, 0.5 * branch, rtol=1e-6, atol=1e-6)
  assert np.abs(branch).max() > 0.1
  if version == 'v2':   # nothing after the addition: out = branch + x
    np.testing.assert_allclose(se_unit.apply(variables, x) - x, 0.5 * (
        unit.apply(without_se(variables), x) - x), rtol=1e-5, atol=1e-5)


def avg_pool_by_hand(x, stride):
  """2x2 windows at every `stride`-th pixel; a window cut by the edge averages what it covers."""
  n, h, w, c = x.shape
  rows, cols = -(-h // stride), -(-w // stride)
  out = np.zeros((n, rows, cols, c), np.float64)
  for i in range(rows):
    for j in range(cols):
      window = x[:, i * stride:i * stride + 2, j * stride:j * stride + 2, :]
      out[:, i, j] = window.mean(axis=(1, 2))
  return out


@pytest.mark.parametrize('size', [6, 7])
def test_resnet_d_shortcut_is_avgpool_then_1x1(size):
  """A stride-2 ResNet-D unit whose branch is zero is ReLU(BN(1x1(avgpool(x))))."""
  x = np.random.default_rng(2).standard_normal((2, size, size, 8)).astype(np.float32)
  unit = BottleneckBlock(filters=4, strides=2, conv=CONV, norm=NORM, shortcut_downsample='avg',
                         zero_init_residual=True)
  variables = randomised(unit.init(jax.random.PRNGKey(0), x), 3)
  params = dict(variables['params'])
  params['norm3'] = {'scale': jnp.zeros(16), 'bias': jnp.zeros(16)}   # branch output: 0
  variables = {'params': params, 'batch_stats': variables['batch_stats']}
  got = np.asarray(unit.apply(variables, jnp.asarray(x)))

  kernel = np.asarray(params['shortcut_conv']['kernel'])[0, 0]        # (8, 16)
  stats = variables['batch_stats']['shortcut_norm']
  bn = params['shortcut_norm']
  z = avg_pool_by_hand(x, 2) @ kernel
  z = (z - np.asarray(stats['mean'])) / np.sqrt(np.asarray(stats['var']) + 1e-5)
  expected = np.maximum(z * np.asarray(bn['scale']) + np.asarray(bn['bias']), 0)
  assert got.shape == (2, (size + 1) // 2, (size + 1) // 2, 16)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  strided = BottleneckBlock(filters=4, strides=2, conv=CONV, norm=NORM, zero_init_residual=True)
  assert not np.allclose(strided.apply(variables, jnp.asarray(x)), got)


# ---------------------------------------------------------------------------------------------
# Stochastic depth.

def net_and_variables(rate, name='resnet18d'):
  model = make(name, num_classes=10, width=8, drop_path_rate=rate)
  x = jnp.asarray(np.random.default_rng(4).standard_normal((8, 32, 32, 3)), jnp.float32)
  variables = init_variables(model, x)
  return model, variables, x


def primitives(fn, *args):
  names = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      names.add(eqn.primitive.name)
      for sub in jax.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return names


def test_drop_path_rate_zero_is_the_model_without_stochastic_depth():
  model, variables, x = net_and_variables(0.0)
  train = functools.partial(model.apply, train=True, mutable=['batch_stats'])
  out, _ = train(variables, x)                                  # no RNG needed
  with_rng, _ = train(variables, x, rngs={'drop_path': jax.random.PRNGKey(5)})
  np.testing.assert_array_equal(out, with_rng)
  assert not {n for n in primitives(lambda v: train(v, x), variables)
              if 'random' in n or 'threefry' in n}


def test_stochastic_depth_is_the_identity_at_eval_time():
  model, variables, x = net_and_variables(0.5)
  reference, _, _ = net_and_variables(0.0)
  out = model.apply(variables, x, train=False)                  # no RNG needed
  np.testing.assert_array_equal(out, reference.apply(variables, x, train=False))


def test_drop_pattern_is_a_function_of_the_key():
  model, variables, x = net_and_variables(0.5)

  def train(key):
    return model.apply(variables, x, train=True, mutable=['batch_stats'],
                       rngs={'drop_path': key})[0]
  a, b = train(jax.random.PRNGKey(1)), train(jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, train(jax.random.PRNGKey(2)))
  with pytest.raises(Exception, match='drop_path'):
    model.apply(variables, x, train=True, mutable=['batch_stats'])


def test_unit_drops_whole_examples_and_rescales_the_kept():
  """Each example's branch is either dropped (output = input) or kept and scaled by
  1 / (1 - rate), with the rate passed to the call."""
  x = jnp.asarray(np.random.default_rng(5).standard_normal((64, 4, 4, 8)), jnp.float32)
  kw = dict(filters=8, conv=CONV, norm=NORM, version='v2')
  unit = BasicBlock(drop_path=True, **kw)
  variables = randomised(BasicBlock(**kw).init(jax.random.PRNGKey(0), x), 6)
  branch = BasicBlock(**kw).apply(variables, x) - x
  out = unit.apply(variables, x, 0.25, rngs={'drop_path': jax.random.PRNGKey(7)}) - x
  dropped = np.all(np.asarray(out) == 0, axis=(1, 2, 3))
  kept = np.all(np.isclose(out, branch / 0.75, rtol=1e-5, atol=1e-5), axis=(1, 2, 3))
  assert np.all(dropped ^ kept)
  assert 4 <= dropped.sum() <= 32          # 16 expected of 64
  same = unit.apply(variables, x, 0.0, rngs={'drop_path': jax.random.PRNGKey(7)}) - x
  np.testing.assert_array_equal(same, branch)


def test_units_get_timms_linear_drop_rates():
  assert drop_path_rates((1, 2, 1), 0.3) == pytest.approx([0.0, 0.1, 0.2, 0.3])
  assert drop_path_rates((1,), 0.3) == [0.0]
  model, variables, x = net_and_variables(0.35)
  rates = {}

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and '_unit' in (context.module.name or ''):
      rates[context.module.name] = float(args[1])
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    model.apply(variables, x, train=True, mutable=['batch_stats'],
                rngs={'drop_path': jax.random.PRNGKey(0)})
  assert list(rates) == [f'stage{s}_unit{u}' for s in (1, 2, 3, 4) for u in (1, 2)]
  assert list(rates.values()) == pytest.approx([0.05 * k for k in range(8)])


# ---------------------------------------------------------------------------------------------
# Field checks.

@pytest.mark.parametrize('overrides, message', [
    ({'stem': 'wide'}, "model.stem='wide' is not allowed"),
    ({'stem_pool': 'avg'}, "model.stem_pool='avg' is not allowed"),
    ({'family': 'cifar', 'depth': 20, 'stem_pool': 'conv'}, 'needs a strided stem'),
    ({'shortcut_downsample': 'max'}, "model.shortcut_downsample='max' is not allowed"),
    ({'shortcut': 'A', 'shortcut_downsample': 'avg'}, "shortcut 'A' has none"),
    ({'se_ratio': -0.1}, r'model.se_ratio=-0.1 must be in \[0.0, 1.0\]'),
    ({'drop_path_rate': 1.0}, r'model.drop_path_rate=1.0 must be in \[0.0, 1.0\)'),
    ({'residual': False, 'drop_path_rate': 0.1}, 'the plain network'),
])
def test_invalid_variant_fields_name_the_field(overrides, message):
  with pytest.raises(ConfigError, match=message):
    create_model({**model_fields('resnet50'), **overrides})


def test_stems_compose_with_both_families_and_versions():
  """The deep stem and the conv stem pool on a CIFAR-family and a pre-activation network."""
  for overrides in ({'family': 'cifar', 'depth': 20, 'stem': 'deep'},
                    {'version': 'v2', 'stem': 'deep', 'stem_pool': 'conv', 'depth': 18},
                    {'family': 'cifar', 'depth': 20, 'stem': 'imagenet'}):
    model = create_model({**model_fields('resnet50'), 'num_classes': 10, **overrides})
    variables = jax.eval_shape(lambda x, m=model: m.init(jax.random.PRNGKey(0), x, train=False),
                               jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    out = jax.eval_shape(lambda v, x, m=model: m.apply(v, x, train=False, return_features=True),
                         variables, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert out[0].shape == (1, 10)
    width = 16 if overrides.get('family') == 'cifar' else 64
    assert out[1]['stem'].shape[1:] == (8, 8, width), overrides
