"""Scanned stages (`model.scan_units`) and rematerialisation (`model.remat`): the same network
as the unrolled one (logits, BatchNorm updates, gradients), lossless layout conversion, the
compiler seeing each distinct unit once, and every consumer (training, freezing, EMA, per-stage
gradient norms, pmap, bfloat16, init_from, resume) working with them."""

import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_close, metrics_events, run_steps, tiny_config
from resnet_flax.models import create_model, init_variables, model_fields, scan
from resnet_flax.tools import model_stats
from resnet_flax.train import loop

# (name, field overrides, image size): ImageNet-family widths cut to 8 and stages to one unit
# but stage 2's four (a scanned run of identical units inside it, also in the Keras flavour
# whose last unit strides): every kind of unit and shortcut of the full network, under half the
# compile time. The pre-activation bottleneck net at depth 29 (3 units a stage, each stage's
# units 2-3 scanned) instead of 164: the same units, a fifth of the work.
SHORT = {'stage_sizes': (1, 4, 1, 1)}
EQUIVALENCE = [('resnet20', {}, 32), ('resnet50', {'version': 'v1', 'width': 8, **SHORT}, 32),
               ('resnet50', {'width': 8, **SHORT}, 32),
               ('resnet50_v2', {'width': 8, **SHORT}, 64),
               ('preact_resnet164', {'depth': 29}, 32),
               ('resnext50_32x4d', {'width': 32, **SHORT}, 32),
               ('plain20', {}, 32), ('keras_resnet50v2', {'width': 8, **SHORT}, 32)]


def _pair(name, overrides):
  fields = {**model_fields(name), **overrides}
  return (create_model({**fields, 'scan_units': 'on'}),
          create_model({**fields, 'scan_units': 'off'}))


def _random_stats(variables, seed=3):
  """Running statistics unlike the initial ones, so that eval mode is really tested."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (s + rng.uniform(0.1, 0.5, s.shape)).astype(s.dtype),
                      variables['batch_stats'])


def _assert_close(actual, expected, tol=1e-5):
  """The trees agree to `tol` relative to their norm (float32 round-off of another summation
  order through a deep network), and every leaf that is not zero up to round-off (the
  gradient of a conv bias that a BatchNorm follows is) to 10 x `tol` relative to itself."""
  pairs = [(np.asarray(a, np.float64), np.asarray(e, np.float64))
           for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected))]
  total = np.sqrt(sum(np.sum(e ** 2) for _, e in pairs))
  error = np.sqrt(sum(np.sum((a - e) ** 2) for a, e in pairs))
  assert error <= tol * total, (error, total)
  largest = max(np.linalg.norm(e) for _, e in pairs)
  for a, e in pairs:
    if np.linalg.norm(e) > 1e-3 * largest:
      assert np.linalg.norm(a - e) <= 10 * tol * np.linalg.norm(e)


@pytest.mark.parametrize('name, overrides, size', EQUIVALENCE)
def test_scanned_and_unrolled_models_compute_the_same(name, overrides, size):
  scanned, unrolled = _pair(name, overrides)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, size, size, 3))
  labels = jnp.arange(4) % 10
  vs = init_variables(scanned, x[:1])
  vs = {'params': vs['params'], 'batch_stats': _random_stats(vs)}
  shapes = jax.eval_shape(lambda: unrolled.init(jax.random.PRNGKey(0), x[:1], train=False))
  vu = {c: scan.restack(tree, shapes[c]) for c, tree in vs.items()}
  assert any(scan.is_scanned_name(n) for n in vs['params'])
  assert not any(scan.is_scanned_name(n) for n in vu['params'])
  for model, v in ((scanned, vs), (unrolled, vu)):
    assert model_stats.count_variables(model, size)['params'] == sum(
        a.size for a in jax.tree.leaves(v['params']))

  def everything(model, params, stats):
    def loss(p):
      logits, new = model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                                mutable=['batch_stats'])
      return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels]), new['batch_stats']
    (value, new_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, new_stats, grads, model.apply({'params': params, 'batch_stats': stats}, x,
                                                train=False)

  ls, ns, gs, es = jax.jit(everything, static_argnums=0)(scanned, vs['params'],
                                                         vs['batch_stats'])
  lu, nu, gu, eu = jax.jit(everything, static_argnums=0)(unrolled, vu['params'],
                                                         vu['batch_stats'])
  np.testing.assert_allclose(ls, lu, rtol=1e-5)
  np.testing.assert_allclose(es, eu, rtol=1e-5, atol=1e-5)
  _assert_close(scan.restack(ns, nu), nu)
  _assert_close(scan.restack(gs, gu), gu)


def test_the_layouts_convert_losslessly_and_units_initialise_independently():
  scanned, unrolled = _pair('preact_resnet164', {})
  params = init_variables(scanned, jnp.zeros((1, 32, 32, 3)))['params']
  shapes = jax.eval_shape(lambda: unrolled.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                                train=False))['params']
  flat = scan.restack(params, shapes)
  assert sorted(flat) == sorted(shapes) and 'stage2_unit7' in flat
  back = scan.restack(flat, params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  # each unit of a stack has its own random kernel, drawn from the same He-normal distribution
  kernels = np.asarray(params['stage2_units2to18']['conv2']['kernel'])   # (17, 3, 3, 32, 32)
  assert len({k.tobytes() for k in kernels}) == 17
  fan_out = 3 * 3 * 32
  np.testing.assert_allclose(kernels.std(axis=(1, 2, 3, 4)), np.sqrt(2 / fan_out), rtol=0.1)


def _hlo_ops(depth):
  model = create_model({**model_fields('resnet20'), 'depth': depth, 'scan_units': 'on'})
  x = jnp.zeros((2, 32, 32, 3))
  variables = init_variables(model, x)

  def step(params):
    def loss(p):
      out, _ = model.apply({'params': p, 'batch_stats': variables['batch_stats']}, x,
                           train=True, mutable=['batch_stats'])
      return out.sum()
    return jax.grad(loss)(params)
  lowered = jax.jit(step).lower(variables['params'])
  return lowered, lowered.as_text().count(' stablehlo.convolution')


def test_compile_work_does_not_grow_with_depth():
  """With scanned stages the program holds each distinct unit once: ResNet-110's train step
  has as many convolutions as ResNet-56's, and compiles in about the same time (the timing is
  a wide bound measured in alternation; the op count is the exact check)."""
  (low56, ops56), (low110, ops110) = _hlo_ops(56), _hlo_ops(110)
  assert ops56 == ops110 > 0
  unrolled = create_model({**model_fields('resnet56'), 'scan_units': 'off'})
  lowered = jax.jit(lambda v, x: unrolled.apply(v, x, train=False)).lower(
      unrolled.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False),
      jnp.zeros((1, 32, 32, 3)))
  assert lowered.as_text().count(' stablehlo.convolution') > 3 * ops56 / 4   # 57 convs unrolled
  seconds = {56: [], 110: []}
  with _no_cache():
    for _ in range(2):
      for depth, low in ((56, low56), (110, low110)):
        start = time.perf_counter()
        low.compile()
        seconds[depth].append(time.perf_counter() - start)
  assert min(seconds[110]) < 1.5 * min(seconds[56]), seconds


class _no_cache:
  """The persistent compilation cache off inside the block (every compile really compiles)."""

  def __enter__(self):
    self.saved = jax.config.jax_enable_compilation_cache
    jax.config.update('jax_enable_compilation_cache', False)

  def __exit__(self, *exc):
    jax.config.update('jax_enable_compilation_cache', self.saved)


def test_remat_recomputes_to_save_memory_with_the_same_gradients():
  """XLA's temporary memory of a scanned ResNet-20's gradient at batch 32 drops (on the CPU back
  end the saving needs the scan: XLA schedules the recomputation of unrolled units early)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 32, 32, 3))
  stats, grads = {}, {}
  for remat in ('none', 'unit'):
    model = create_model({**model_fields('resnet20'), 'remat': remat, 'scan_units': 'on'})
    variables = init_variables(model, x[:1])

    def loss(p, model=model, variables=variables):
      out, _ = model.apply({'params': p, 'batch_stats': variables['batch_stats']}, x,
                           train=True, mutable=['batch_stats'])
      return jnp.sum(out ** 2)
    compiled = jax.jit(jax.grad(loss)).lower(variables['params']).compile()
    stats[remat] = compiled.memory_analysis().temp_size_in_bytes
    grads[remat] = compiled(variables['params'])
  assert_trees_close(grads['unit'], grads['none'], tol=1e-4)
  assert stats['unit'] < 0.7 * stats['none'], stats


def _scan_config(**overrides):
  """tiny_config at depth 20 (3 units a stage: units 2-3 scanned)."""
  return tiny_config(**{'model.depth': 20, 'model.scan_units': 'on', **overrides})


@pytest.mark.parametrize('mode', ['jit', 'pmap'])
def test_scanned_training_matches_across_device_counts(mode):
  one, m1 = run_steps(_scan_config(), jax.devices()[:1])
  eight, m8 = run_steps(_scan_config(parallelism=mode), jax.devices())
  np.testing.assert_allclose(m8[-1]['loss_sum'], m1[-1]['loss_sum'], rtol=1e-5)
  assert_trees_close(eight.params, one.params)
  assert_trees_close(eight.batch_stats, one.batch_stats)


def test_scanned_training_with_freezing_ema_grad_norms_and_bfloat16(tmp_path):
  config = _scan_config(freeze='stem|stage1', ema_decay=0.9, log_grad_norms=True,
                        num_train_steps=4, log_every_steps=2, **{'model.head_hidden': (8,)})
  results = loop.train_and_evaluate(config, str(tmp_path / 'a'), devices=jax.devices()[:2])
  assert results['steps'] == 4 and np.isfinite(results['eval_loss'])
  events = [e for e in metrics_events(tmp_path / 'a') if 'train_loss' in e]
  stages = [k for k in events[-1] if k.startswith('grad_norm_') and k != 'grad_norm']
  assert {'grad_norm_stem', 'grad_norm_stage1', 'grad_norm_stage3'} <= set(stages)
  assert sum(events[-1][k] ** 2 for k in stages) == pytest.approx(events[-1]['grad_norm'] ** 2,
                                                                   rel=1e-4)
  state, _ = run_steps(_scan_config(dtype='bfloat16'), jax.devices()[:1], 1)
  assert state.params['stage2_units2to3']['conv1']['kernel'].dtype == np.float32


def test_init_from_and_resume_cross_layouts(tmp_path, capsys):
  """A run saved unrolled fine-tunes a scanned model (every array loaded) and resumes with
  scan on, ending where a scanned run from the same checkpoint ends."""
  source = str(tmp_path / 'unrolled')
  loop.train_and_evaluate(_scan_config(**{'model.scan_units': 'off'}, num_train_steps=4,
                                       checkpoint_every_steps=2), source,
                          devices=jax.devices()[:1])
  finetuned = loop.train_and_evaluate(_scan_config(init_from=source, num_train_steps=1),
                                      str(tmp_path / 'ft'), devices=jax.devices()[:1])
  assert not (finetuned['init_from']['new'] or finetuned['init_from']['dropped'] or
              finetuned['init_from']['reinitialised'])
  shutil.copytree(source, tmp_path / 'resumed')
  capsys.readouterr()
  resumed = loop.train_and_evaluate(_scan_config(num_train_steps=6), str(tmp_path / 'resumed'),
                                    devices=jax.devices()[:1])
  assert 'resuming from checkpoint 4' in capsys.readouterr().out
  straight = loop.train_and_evaluate(_scan_config(**{'model.scan_units': 'off'},
                                                  num_train_steps=6), source,
                                     devices=jax.devices()[:1])
  assert resumed['steps'] == straight['steps'] == 6
  np.testing.assert_allclose(resumed['eval_loss'], straight['eval_loss'], rtol=1e-4)


def test_scanned_units_get_their_own_drop_rates_and_masks(monkeypatch):
  """Stochastic depth inside a scan: each unit of a run receives its own rate (timm's linear
  rule over the whole network, as unrolled) and its own drop-path key."""
  from resnet_flax.models import blocks
  from resnet_flax.models.resnet import drop_path_rates
  seen = []

  def recording(x, rate, key):
    jax.debug.callback(lambda r, k: seen.append((float(r), tuple(np.asarray(k).ravel()))),
                       rate, jax.random.key_data(key) if jnp.issubdtype(key.dtype,
                                                                        jax.dtypes.prng_key)
                       else key)
    return original(x, rate, key)
  original = blocks.drop_path
  monkeypatch.setattr(blocks, 'drop_path', recording)
  model = create_model({**model_fields('resnet20'), 'scan_units': 'on', 'drop_path_rate': 0.4})
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  variables = init_variables(model, x)
  jax.block_until_ready(model.apply(variables, x, train=True, mutable=['batch_stats'],
                                    rngs={'drop_path': jax.random.PRNGKey(2)}))
  jax.effects_barrier()
  assert sorted(r for r, _ in seen) == pytest.approx(sorted(drop_path_rates((3, 3, 3), 0.4)))
  assert len({k for _, k in seen}) == 9
