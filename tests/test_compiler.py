"""Compiler options per back end (resnet_flax.compiler) and the BatchNorm formulations: the
same numbers as XLA's defaults and the two-pass variance, to float32 round-off."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from resnet_flax import compiler
from resnet_flax.models import create_model, init_variables, model_fields
from resnet_flax.models.layers import BatchNorm


def test_auto_sets_the_cpu_library_fusions_only_on_cpu():
  for step in compiler.STEPS:
    for block in compiler.BLOCKS:
      assert (compiler.options('auto', 'cpu', step, block) ==
              compiler.PLATFORM_OPTIONS[('cpu', step, block)])
      assert compiler.options('auto', 'gpu', step, block) == {}
      assert compiler.options('none', 'cpu', step, block) == {}
  with pytest.raises(ValueError, match='compiler_options'):
    compiler.options('fastest', 'cpu', 'train')
  with pytest.raises(ValueError, match='step'):
    compiler.options('auto', 'cpu', 'predict')
  with pytest.raises(ValueError, match='block'):
    compiler.options('auto', 'cpu', 'eval', 'Bottleneck')


def test_the_fusion_types_per_step_and_unit_type():
  """docs/BENCHMARKS.md: the element-wise type slowed the train steps of networks of basic
  units and the eval steps of bottleneck networks, the dot type the eval steps at 224 px."""
  ynn = 'xla_cpu_experimental_ynn_fusion_type'
  types = {(step, block): set(compiler.options('auto', 'cpu', step, block)[ynn].split(','))
           for step in compiler.STEPS for block in compiler.BLOCKS}
  dot, eltwise, reduce = (f'LIBRARY_FUSION_TYPE_{t}' for t in ('DOT', 'ELTWISE', 'REDUCE'))
  assert types['train', 'basic'] == {dot, reduce}
  assert types['train', 'bottleneck'] == {dot, eltwise, reduce}
  assert types['eval', 'basic'] == {eltwise, reduce}
  assert types['eval', 'bottleneck'] == {reduce}


def test_a_model_names_its_unit_type():
  assert create_model(model_fields('resnet20')).block_kind == 'basic'
  assert create_model(model_fields('resnet18')).block_kind == 'basic'
  assert create_model(model_fields('resnet50')).block_kind == 'bottleneck'
  assert create_model(model_fields('keras_resnet50v2')).block_kind == 'bottleneck'
  assert create_model(model_fields('preact_resnet164')).block_kind == 'bottleneck'


def test_auto_leaves_small_images_to_the_defaults():
  assert compiler.resolve('auto', (8, 8, 3)) == 'none'
  assert compiler.resolve('auto', (16, 16, 3)) == 'auto'
  assert compiler.resolve('none', (224, 224, 3)) == 'none'


def test_a_users_xla_flags_win(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=dot')
  assert compiler.options('auto', 'cpu', 'train') == {}
  assert compiler.options('auto', 'cpu', 'eval') == {}


def test_an_option_this_jaxlib_does_not_know_is_left_out(monkeypatch):
  monkeypatch.setitem(compiler.PLATFORM_OPTIONS, ('cpu', 'train', 'basic'),
                      {'xla_cpu_no_such_option': 'true'})
  assert compiler.options('auto', 'cpu', 'train') == {}
  f = compiler.jit(lambda x: x * 2, 'auto', 'cpu', 'train')
  assert float(f(jnp.float32(3.0))) == 6.0


def _rel(a, b):
  pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return np.sqrt(sum(float(jnp.sum((x - y) ** 2)) for x, y in pairs) /
                 sum(float(jnp.sum(y ** 2)) for _, y in pairs))


@pytest.mark.parametrize('conv_impl', ['fast', 'xla'])
def test_the_cpu_options_give_the_same_logits_and_gradients(conv_impl):
  model = create_model({**model_fields('resnet20'), 'conv_impl': conv_impl})
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))
  variables = init_variables(model, x[:1])

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                            mutable=['batch_stats'])
    return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), logits
  out = {s: compiler.jit(jax.value_and_grad(loss, has_aux=True), s, 'cpu', 'train')(
      variables['params']) for s in ('none', 'auto')}
  (_, logits_auto), grads_auto = out['auto']
  (_, logits_none), grads_none = out['none']
  assert _rel(logits_auto, logits_none) < 1e-5
  assert _rel(grads_auto, grads_none) < 1e-5
  forward = {s: compiler.jit(lambda v: model.apply(v, x, train=False), s, 'cpu', 'eval')(variables)
             for s in ('none', 'auto')}
  assert _rel(forward['auto'], forward['none']) < 1e-5


def test_a_training_run_compiles_with_the_options_it_is_given():
  """The eval step of a run with compiler_options=auto hands more of its ops to the library
  fusions than with none (the element-wise ones join the reductions), and both take the same
  train steps; at 8 px (below compiler.MIN_IMAGE_SIZE) auto compiles as none."""
  from resnet_flax.train.build import build_run
  fusions, params = {}, {}
  for setting in ('none', 'auto'):
    run = build_run(tiny_config(compiler_options=setting, **{'data.image_size': 16}),
                    devices=jax.devices()[:1])
    eval_batch = run.par.put_batch(next(iter(run.eval_ds.eval_batches(8, 0, 1))))
    fusions[setting] = run.p_eval.lower(run.state, eval_batch).compile().as_text().count(
        '__ynn_fusion')
    batch = run.par.put_batch(run.train_batches.batch(0))
    state, _ = run.p_train(run.state, batch)
    state, _ = run.p_train(state, run.par.put_batch(run.train_batches.batch(1)))
    params[setting] = run.par.host_state(state).params
  assert fusions['auto'] > fusions['none']
  assert _rel(params['auto'], params['none']) < 1e-5
  assert build_run(tiny_config(), devices=jax.devices()[:1]).par.compiler_options == 'none'


def test_a_run_compiles_each_step_with_its_own_options(monkeypatch):
  """The train step asks for the train options, the eval step for the eval options, both for
  the model's unit type (a loaded predictor too: tests/test_predict_export.py)."""
  from resnet_flax.train.build import build_run
  asked, options = [], compiler.options
  monkeypatch.setattr(compiler, 'options', lambda *a: asked.append(a) or options(*a))
  build_run(tiny_config(**{'data.image_size': 16}), devices=jax.devices()[:1])
  assert sorted(asked) == [('auto', 'cpu', 'eval', 'basic'), ('auto', 'cpu', 'train', 'basic')]


@pytest.mark.parametrize('axis', [None, 'batch'])
def test_one_pass_batchnorm_equals_two_pass(axis):
  """E[x^2] - E[x]^2 against E[(x - E[x])^2], for activations with a mean of 3 standard
  deviations: outputs and running statistics to 1e-5, also over a pmap axis."""
  x = 3.0 + jax.random.normal(jax.random.PRNGKey(0), (8, 6, 6, 16))
  outs = {}
  for one_pass in (False, True):
    bn = BatchNorm(one_pass=one_pass, axis_name=axis)
    variables = BatchNorm().init(jax.random.PRNGKey(1), x[:1])
    apply = lambda v, x, bn=bn: bn.apply(v, x, mutable=['batch_stats'])  # noqa: E731
    if axis:
      apply = jax.pmap(apply, axis_name=axis, in_axes=(None, 0))
      outs[one_pass] = apply(variables, x.reshape((2, 4) + x.shape[1:]))
    else:
      outs[one_pass] = apply(variables, x)
  (y1, s1), (y2, s2) = outs[False], outs[True]
  assert _rel(y2, y1) < 1e-5
  assert _rel(s2, s1) < 1e-5
  assert float(jnp.abs(jnp.asarray(y1).mean())) < 1e-4   # normalised: the mean was removed


def test_batchnorm_normalises_with_its_statistics():
  """The folded output x * a + b is (x - mean) / sqrt(var + eps) * scale + bias, in train mode
  with the batch's statistics and in eval mode with the running ones."""
  x = 2.0 + 3.0 * jax.random.normal(jax.random.PRNGKey(0), (16, 4, 4, 8))
  bn = BatchNorm(momentum=0.0)
  variables = bn.init(jax.random.PRNGKey(1), x[:1])
  params = {'scale': jnp.linspace(0.5, 2.0, 8), 'bias': jnp.linspace(-1.0, 1.0, 8)}
  y, stats = bn.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  expected = (x - mean) / jnp.sqrt(var + 1e-5) * params['scale'] + params['bias']
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  eval_bn = BatchNorm(use_running_average=True)
  y_eval = eval_bn.apply({'params': params, **stats}, x)
  np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)
