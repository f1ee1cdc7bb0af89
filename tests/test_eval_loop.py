"""Forward-only passes with runs of identical units as loops (`model.eval_loop`,
`scan.run_looped`): the same logits and features as the unrolled pass for every kind of unit,
the same parameter layout, the training pass untouched, and the loop really in the compiled
program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_flax.errors import ConfigError
from resnet_flax.models import create_model, init_variables, model_fields, scan

SHORT = {'stage_sizes': (1, 4, 1, 1)}
# every kind of unit: basic with option-A shortcuts, v1 / v1.5 / v2 bottlenecks, Keras' conv
# biases and its V2 strides (a stage's last unit strides), ResNeXt groups, SE gates, projections
# in every unit (shortcut C), the plain network
CASES = [('resnet20', {}, 32), ('resnet50', {'version': 'v1', 'width': 8, **SHORT}, 32),
         ('resnet50', {'width': 8, **SHORT}, 32), ('preact_resnet164', {'depth': 29}, 32),
         ('keras_resnet50', {'width': 8, **SHORT}, 32),
         ('keras_resnet50v2', {'width': 8, **SHORT}, 32),
         ('resnext50_32x4d', {'width': 32, **SHORT}, 32),
         ('resnet50', {'width': 8, 'se_ratio': 0.25, **SHORT}, 32),
         ('resnet50', {'width': 8, 'shortcut': 'C', **SHORT}, 32),
         ('plain20', {}, 32)]


def _models(name, overrides, **extra):
  fields = {**model_fields(name), **overrides, **extra}
  return (create_model({**fields, 'eval_loop': 'on'}),
          create_model({**fields, 'eval_loop': 'off'}))


def _variables(model, x):
  v = init_variables(model, x[:1])
  rng = np.random.default_rng(3)   # statistics and parameters unlike the initial ones (the
  # classifier starts at zero)
  stats = jax.tree.map(lambda s: (s + rng.uniform(0.1, 0.5, s.shape)).astype(s.dtype),
                       v['batch_stats'])
  params = jax.tree.map(lambda p: (p + rng.normal(0, 0.05, p.shape)).astype(p.dtype),
                        v['params'])
  return {'params': params, 'batch_stats': stats}


def _primitives(jaxpr) -> set:
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          names |= _primitives(inner)
  return names


@pytest.mark.parametrize('name, overrides, size', CASES)
def test_the_looped_forward_pass_equals_the_unrolled_one(name, overrides, size):
  looped, unrolled = _models(name, overrides)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, size, size, 3))
  v = _variables(unrolled, x)
  shapes = jax.eval_shape(lambda: looped.init(jax.random.PRNGKey(0), x[:1], train=False))
  assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(lambda a: a.shape, v)

  def forward(model):
    return jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True))(v, x)
  (logits, features), (ref_logits, ref_features) = forward(looped), forward(unrolled)
  scale = float(jnp.max(jnp.abs(ref_logits)))
  assert scale > 0
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-5,
                             atol=1e-5 * scale)
  for key, ref in ref_features.items():
    np.testing.assert_allclose(np.asarray(features[key]), np.asarray(ref), rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(ref))))

  eval_prims = _primitives(jax.make_jaxpr(lambda v: looped.apply(v, x, train=False))(v).jaxpr)
  plain_prims = _primitives(jax.make_jaxpr(lambda v: unrolled.apply(v, x, train=False))(v).jaxpr)
  assert {'scan', 'cond'} <= eval_prims        # a loop whose body switches between the units
  assert not {'scan', 'cond', 'while'} & plain_prims


@pytest.mark.parametrize('name, overrides', [('resnet20', {}),
                                             ('keras_resnet50', {'width': 8, **SHORT})])
def test_the_training_pass_and_a_scanned_layout_are_left_as_they_are(name, overrides):
  """eval_loop changes only forward-only passes of unrolled runs: the train-mode program is the
  same with it on or off, and a model whose runs are all scanned evaluates with its scan."""
  looped, unrolled = _models(name, overrides)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  v = _variables(unrolled, x)

  def train_jaxpr(model):
    return str(jax.make_jaxpr(lambda v: model.apply(v, x, train=True,
                                                    mutable=['batch_stats']))(v))
  assert train_jaxpr(looped) == train_jaxpr(unrolled)

  scanned_on, scanned_off = _models(name, overrides, scan_units='on')
  vs = init_variables(scanned_off, x[:1])
  a = jax.make_jaxpr(lambda v: scanned_on.apply(v, x, train=False))(vs)
  b = jax.make_jaxpr(lambda v: scanned_off.apply(v, x, train=False))(vs)
  assert str(a) == str(b)


def test_a_stage_may_hold_a_scanned_run_and_a_looped_one():
  """With scan_units scanning runs of three or more (as 'auto' does for 32 or more), stage 2's
  run of three stays a scan and stage 3's run of two becomes a loop: one of each, and the same
  logits as the unrolled pass of the same parameters."""
  fields = {**model_fields('resnet50'), 'width': 8, 'stage_sizes': (1, 4, 3, 1)}
  looped = create_model({**fields, 'eval_loop': 'on'}).clone(scan_min_units=3)
  plain = looped.clone(eval_loop=False)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  v = _variables(plain, x)
  assert 'stage2_units2to4' in v['params'] and 'stage3_unit3' in v['params']
  prims = _primitives(jax.make_jaxpr(lambda v: looped.apply(v, x, train=False))(v).jaxpr)
  assert {'scan', 'cond'} <= prims
  out = jax.jit(lambda v: looped.apply(v, x, train=False))(v)
  ref = jax.jit(lambda v: plain.apply(v, x, train=False))(v)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5,
                             atol=1e-5 * float(jnp.max(jnp.abs(ref))))
  text = jax.jit(lambda v: looped.apply(v, x, train=False)).lower(v).compile().as_text()
  assert text.count(' while(') == 2


def test_bfloat16_compute_agrees_to_its_own_round_off():
  looped, unrolled = _models('resnet50', {'width': 8, **SHORT}, dtype='bfloat16')
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  v = _variables(unrolled, x)
  out = jax.jit(lambda v: looped.apply(v, x, train=False))(v)
  ref = jax.jit(lambda v: unrolled.apply(v, x, train=False))(v)
  assert out.dtype == ref.dtype
  scale = float(jnp.max(jnp.abs(ref)))
  assert scale > 0
  assert float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32)))) <= 2e-2 * scale


def test_variables_of_another_layout_are_named_in_the_error():
  looped, _ = _models('resnet50', {'width': 8, **SHORT})
  scanned = create_model({**model_fields('resnet50'), 'width': 8, **SHORT, 'scan_units': 'on'})
  x = jnp.zeros((2, 32, 32, 3))
  v = init_variables(scanned, x[:1])
  with pytest.raises(KeyError, match='stage2_unit2'):
    looped.apply(v, x, train=False)


@pytest.mark.parametrize('name, overrides, loops', [('resnet20', {'eval_loop': 'on'}, 3),
                                                    ('keras_resnet50', SHORT, 1)])
def test_the_compiled_eval_program_keeps_one_loop_per_run(name, overrides, loops):
  """XLA must not unroll the loops again: the compiled forward pass holds one while loop per
  run (ResNet-20: three runs of two units; the short Keras ResNet50 with 'auto': stage 2's run
  of three)."""
  model = create_model({**model_fields(name), **overrides})
  assert model.eval_loop
  x = jnp.zeros((2, 32, 32, 3))
  v = init_variables(model, x[:1])
  text = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(v, x).compile().as_text()
  assert text.count(' while(') == loops


def test_the_setting_resolves_per_back_end_and_unit_and_is_checked():
  """'auto': bottleneck networks on CPU only (the measured choice, docs/BENCHMARKS.md)."""
  assert scan.eval_loop('auto', 'bottleneck', 'cpu') is True
  assert scan.eval_loop('auto', 'basic', 'cpu') is False
  assert scan.eval_loop('auto', 'bottleneck', 'gpu') is False
  assert scan.eval_loop('auto', 'bottleneck', 'tpu') is False
  assert scan.eval_loop('on', 'basic', 'gpu') is True
  assert scan.eval_loop('off', 'bottleneck', 'cpu') is False
  on_cpu = jax.default_backend() == 'cpu'
  for name, expected in (('resnet50', on_cpu), ('keras_resnet50', on_cpu),
                         ('preact_resnet164', on_cpu), ('resnet18', False), ('resnet20', False)):
    assert create_model(model_fields(name)).eval_loop is expected, name
  with pytest.raises(ConfigError, match='eval_loop'):
    create_model({**model_fields('resnet20'), 'eval_loop': 'sometimes'})


@pytest.mark.parametrize('name, overrides', [('resnet20', {}), ('preact_resnet164', {'depth': 29})])
def test_the_loops_write_their_carry_in_place(name, overrides):
  """Each iteration joins the unit's branch with its input outside the switch, so the compiled
  loops copy no activation (a switch's result is a new buffer: returned as the carry, the loop
  copied it once per unit)."""
  looped, unrolled = _models(name, overrides)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  v = _variables(unrolled, x)
  text = jax.jit(lambda v: looped.apply(v, x, train=False)).lower(v).compile().as_text()
  assert text.count(' while(') == 3
  copies = [line for line in text.splitlines() if ' copy(' in line and 'f32[4,' in line]
  assert not copies, copies


def test_only_an_identity_unit_returns_its_branch():
  fields = model_fields('resnet20')
  unit = create_model(fields).block_cls(filters=32, conv=None, norm=None, strides=2,
                                        shortcut='A', branch_only=True)
  with pytest.raises(ValueError, match='identity shortcut'):
    unit.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 16)))
