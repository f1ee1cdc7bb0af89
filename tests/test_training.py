"""The training system: device-count invariance (jit and pmap), ghost BatchNorm, whole-split
eval, config validation, a learning test on real data, and the command line."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (REPO, assert_trees_close, assert_trees_differ, command, run_command,
                      mnist_config, run_steps, subprocess_env, tiny_config)
from resnet_flax import config as config_lib
from resnet_flax.config import base_config
from resnet_flax.data import arrays, batches
from resnet_flax.errors import ConfigError
from resnet_flax.train import loop
from resnet_flax.train.build import build_run


@pytest.fixture(scope='module')
def one_device_reference():
  return run_steps(tiny_config(), jax.devices()[:1])


@pytest.mark.parametrize('mode', ['jit', 'pmap'])
def test_eight_devices_match_one_device(mode, one_device_reference):
  assert len(jax.devices()) == 8
  ref_state, ref_metrics = one_device_reference
  state, metrics = run_steps(tiny_config(parallelism=mode), jax.devices())
  for m, r in zip(metrics, ref_metrics):
    np.testing.assert_allclose(m['loss_sum'], r['loss_sum'], rtol=1e-5)
    np.testing.assert_allclose(m['grad_norm_sq'], r['grad_norm_sq'], rtol=1e-5)
    assert m['count'] == r['count'] == 16
  assert_trees_close(state.params, ref_state.params)
  assert_trees_close(state.batch_stats, ref_state.batch_stats)
  assert_trees_close(state.opt_state, ref_state.opt_state)   # momentum = running gradients
  assert int(state.step) == 2


def test_first_step_gradients_match_across_device_counts(one_device_reference):
  """With plain SGD (no momentum) the parameter change of one step is -lr * gradient."""
  cfg = dict(**{'optimizer.momentum': 0.0, 'optimizer.weight_decay': 0.0})
  run1 = build_run(tiny_config(**cfg), devices=jax.devices()[:1])
  p0 = run1.par.host_state(run1.state).params
  s1, _ = run1.p_train(run1.state, run1.par.put_batch(run1.train_batches.batch(0)))
  g1 = jax.tree.map(lambda a, b: (a - b) / 0.1, p0, run1.par.host_state(s1).params)
  for mode in ('jit', 'pmap'):
    run8 = build_run(tiny_config(parallelism=mode, **cfg), devices=jax.devices())
    s8, _ = run8.p_train(run8.state, run8.par.put_batch(run8.train_batches.batch(0)))
    g8 = jax.tree.map(lambda a, b: (a - b) / 0.1, p0, run8.par.host_state(s8).params)
    assert_trees_close(g8, g1, tol=2e-4)   # differences of params / lr: 1e-5 relative on params
    assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(g1)) > 1e-3


def test_bn_group_size_gives_per_group_statistics(one_device_reference):
  """Ghost BN with groups of 2 (= the per-device batch on 8 devices) is the same on 1 device,
  on 8 devices under jit, and under pmap where each device holds one group; it differs from
  statistics over the whole batch."""
  ghost_1, _ = run_steps(tiny_config(**{'model.bn_group_size': 2}), jax.devices()[:1], 1)
  ghost_jit, _ = run_steps(tiny_config(**{'model.bn_group_size': 2}), jax.devices(), 1)
  ghost_pmap, _ = run_steps(tiny_config(**{'model.bn_group_size': 2, 'parallelism': 'pmap'}),
                            jax.devices(), 1)
  assert_trees_close(ghost_jit.batch_stats, ghost_1.batch_stats)
  assert_trees_close(ghost_pmap.batch_stats, ghost_1.batch_stats)
  assert_trees_close(ghost_pmap.params, ghost_1.params)
  global_bn, _ = run_steps(tiny_config(), jax.devices()[:1], 1)
  assert_trees_differ(ghost_1.batch_stats, global_bn.batch_stats)


def test_stem_running_mean_equals_mean_of_group_means():
  """The running mean of the first BN after one step is momentum-averaged from the mean of the
  per-group means, which for equal groups equals the batch mean: ghost and global BN agree on
  the *mean* statistic of the first layer but not on the variance."""
  ghost, _ = run_steps(tiny_config(**{'model.bn_group_size': 4}), jax.devices()[:1], 1)
  full, _ = run_steps(tiny_config(), jax.devices()[:1], 1)
  np.testing.assert_allclose(ghost.batch_stats['stem_norm']['mean'],
                             full.batch_stats['stem_norm']['mean'], rtol=1e-5, atol=1e-6)
  assert np.all(ghost.batch_stats['stem_norm']['var'] < full.batch_stats['stem_norm']['var'])


@pytest.mark.parametrize('mode,num_devices,eval_batch', [
    ('jit', 8, 16), ('pmap', 8, 16), ('jit', 1, 5), ('jit', 8, 8)])
def test_eval_counts_every_example_once(mode, num_devices, eval_batch):
  """37 eval examples never divide the batch: padded and masked, the metrics equal a direct
  computation over all 37 examples."""
  config = tiny_config(parallelism=mode, eval_batch_size=eval_batch)
  run = build_run(config, devices=jax.devices()[:num_devices])
  metrics = loop.evaluate(run.state, run.p_eval, run.par, run.eval_ds, eval_batch)
  host = run.par.host_state(run.state)
  images = (run.eval_ds.images.astype(np.float32) - 127.0) / 64.0
  logits = run.model.apply({'params': host.params, 'batch_stats': host.batch_stats},
                           jnp.asarray(images), train=False)
  labels = run.eval_ds.labels
  top1 = np.mean(np.argmax(logits, -1) == labels)
  top5 = np.mean([l in np.argsort(-row)[:5] for row, l in zip(np.asarray(logits), labels)])
  loss = np.mean(-jax.nn.log_softmax(logits)[np.arange(37), labels])
  assert len(run.eval_ds) == 37
  assert metrics['eval_top1'] == pytest.approx(top1, abs=1e-6)
  assert metrics['eval_top5'] == pytest.approx(top5, abs=1e-6)
  assert metrics['eval_loss'] == pytest.approx(float(loss), rel=1e-4)


def test_eval_batches_cover_split_once_across_processes():
  ds = arrays.ArrayDataset(
      np.zeros((37, 2, 2, 1), np.uint8), np.arange(37, dtype=np.int32) % 10, 10)
  seen = []
  for process in range(2):
    for b in batches.eval_batches(ds, 8, process, 2):
      seen.extend(b['label'][b['mask'] > 0].tolist())
  assert sorted(seen) == sorted(ds.labels.tolist())
  assert len(list(batches.eval_batches(ds, 8))) == 5   # ceil(37 / 8), the last one padded


def test_train_batches_are_a_function_of_seed_and_step():
  ds = arrays.ArrayDataset(
      np.zeros((50, 2, 2, 1), np.uint8), np.arange(50, dtype=np.int32) % 10, 10)
  a, b = batches.TrainBatches(ds, 8, seed=1), batches.TrainBatches(ds, 8, seed=1)
  np.testing.assert_array_equal(a.indices(13), b.indices(13))   # no replay of steps 0..12
  assert not np.array_equal(a.indices(0), batches.TrainBatches(ds, 8, seed=2).indices(0))
  epoch = np.concatenate([a.indices(k) for k in range(a.steps_per_epoch)])
  assert len(set(epoch.tolist())) == len(epoch) == 48    # no example twice within an epoch
  shares = [batches.TrainBatches(ds, 8, 1, p, 2).indices(5) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(shares), a.indices(5))


@pytest.mark.parametrize('overrides,field', [
    ({'model.depth': 19, 'model.family': 'imagenet'}, 'model.depth'),
    ({'model.depth': 21}, 'model.depth'),
    ({'model.version': 'v3'}, 'model.version'),
    ({'batch_size': 12}, 'batch_size'),
    ({'eval_every_steps': 0}, 'eval_every_steps'),
    ({'eval_batch_size': 12}, 'eval_batch_size'),
    ({'parallelism': 'fsdp'}, 'parallelism'),
    ({'data.source': 'ftp'}, 'data.source'),
    ({'model.bn_group_size': 3}, 'model.bn_group_size'),
    ({'label_smoothing': 1.5}, 'label_smoothing'),
    ({'data.eval_crop_fraction': 0.0}, 'data.eval_crop_fraction'),
    ({'data.eval_crop_fraction': 1.2}, 'data.eval_crop_fraction'),
    ({'num_epochs': 0.0, 'num_train_steps': -1}, 'num_epochs'),
])
def test_config_errors_name_the_field(overrides, field):
  with pytest.raises(ConfigError) as e:
    config_lib.validate(tiny_config(**overrides), device_count=8)
  message = str(e.value)
  assert field in message and '\n' not in message


def test_unknown_field_in_a_config_file_is_rejected():
  c = tiny_config()
  c.unlock()
  c.learning_rate = 0.1
  with pytest.raises(ConfigError, match='learning_rate is not a known field'):
    config_lib.validate(c)


@pytest.mark.parametrize('overrides,field', [
    ({'optimizer.name': 'adam'}, 'optimizer.name'),
    ({'schedule.name': 'poly'}, 'schedule.name'),
    ({'model.num_classes': 7}, 'model.num_classes'),
])
def test_build_errors_are_config_errors(overrides, field):
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
    build_run(tiny_config(**overrides), devices=jax.devices()[:1])


@pytest.mark.slow
def test_learns_mnist(tmp_path):
  """ResNet-8 on 6,000 MNIST digits for 240 steps: far above chance, falling loss."""
  results = loop.train_and_evaluate(mnist_config(), str(tmp_path))
  assert results['eval_top1'] > 0.9
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  train_losses = [l['train_loss'] for l in lines if 'train_loss' in l]
  assert train_losses[-1] < 0.5 * train_losses[0]
  assert results['steps'] == 240


def _run_script(args, env_extra=None):
  return run_command(command('train', *args), **(env_extra or {}))


def test_script_rejects_bad_config_with_one_line():
  p = _run_script(['--config.model.depth=19', '--config.model.family=imagenet'])
  assert p.returncode == 2
  lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
  assert lines[-1].startswith('config error: model.depth=19')
  assert '18, 34' in lines[-1]


def test_script_rejects_indivisible_batch_on_eight_devices():
  p = _run_script(['--config.batch_size=12'],
                  {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert p.returncode == 2
  assert 'config.batch_size=12' in p.stderr and 'divisible by the 8 devices' in p.stderr


@pytest.mark.slow
def test_script_trains_digits_and_writes_run_files(tmp_path):
  p = _run_script(['--workdir', str(tmp_path), '--config.num_epochs=4',
                   '--config.log_every_steps=10'])
  assert p.returncode == 0, p.stderr[-2000:]
  results = json.load(open(tmp_path / 'results.json'))
  assert {'eval_top1', 'eval_top5', 'eval_loss', 'steps', 'train_time_s',
          'images_per_sec'} <= set(results)
  assert results['steps'] == 4 * (1348 // 64)
  assert results['eval_top1'] > 0.8
  config = json.load(open(tmp_path / 'config.json'))
  assert config['num_epochs'] == 4
  events = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert all('step' in e and 'epoch' in e for e in events)
  assert {'train_loss', 'train_top1', 'lr', 'images_per_sec'} <= set(events[0])
  assert any('eval_top5' in e for e in events)
  times = [e['train_time_s'] for e in events if 'eval_top1' in e]   # the run's wall time
  assert len(times) == 4 and times == sorted(times) and times[0] > 0
  assert os.listdir(tmp_path / 'tensorboard')


def test_bfloat16_mixed_precision_keeps_float32_state():
  f32, m32 = run_steps(tiny_config(), jax.devices()[:1], 1)
  bf16, m16 = run_steps(tiny_config(dtype='bfloat16'), jax.devices()[:1], 1)
  for tree in (bf16.params, bf16.batch_stats, bf16.opt_state):
    floats = {x.dtype for x in jax.tree.leaves(tree) if not np.issubdtype(x.dtype, np.integer)}
    assert floats == {np.dtype('float32')}
  assert np.isfinite(m16[0]['loss_sum'])
  assert m16[0]['loss_sum'] != m32[0]['loss_sum']            # bf16 compute really happened
  np.testing.assert_allclose(m16[0]['loss_sum'], m32[0]['loss_sum'], rtol=5e-2)
  with pytest.raises(ConfigError, match='config.dtype'):
    config_lib.validate(tiny_config(**{'model.dtype': 'bfloat16'}))


def test_ema_of_params_is_used_for_eval():
  """ema_k = d * ema_{k-1} + (1 - d) * params_k from ema_0 = params_0; eval reads the EMA."""
  decay = 0.5
  run = build_run(tiny_config(ema_decay=decay), devices=jax.devices()[:1])
  state = run.state
  history = [run.par.host_state(state).params]
  for step in range(2):
    state, _ = run.p_train(state, run.par.put_batch(run.train_batches.batch(step)))
    history.append(run.par.host_state(state).params)
  expected = jax.tree.map(lambda p0, p1, p2: decay * (decay * p0 + (1 - decay) * p1)
                          + (1 - decay) * p2, *history)
  host = run.par.host_state(state)
  assert_trees_close(host.ema_params, expected, tol=1e-6)
  assert_trees_differ(host.ema_params, host.params)
  assert host.eval_variables()['params'] is host.ema_params


def test_script_rejects_unknown_override_with_a_suggestion():
  p = _run_script(['--config.model.dept=56'])
  assert p.returncode == 2
  assert p.stderr.strip().splitlines()[-1].startswith(
      "config error: --config.model.dept: config.model has no field 'dept'; did you mean "
      'model.depth?')


_NO_TF = r'''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'tensorboard'):
      raise ImportError(f'{name} is not installed here')
sys.meta_path.insert(0, Block())
sys.path.insert(0, 'tests')
from conftest import tiny_config
from resnet_flax.train import loop
results = loop.train_and_evaluate(tiny_config(log_tensorboard=True), sys.argv[1])
assert not any(m.split('.')[0] in ('tensorflow', 'tensorflow_datasets') for m in sys.modules)
print('eval_top1', results['eval_top1'])
'''


def test_training_runs_without_tensorflow(tmp_path):
  """The GPU machines have no TensorFlow: the training path must neither need nor import it."""
  p = subprocess.run([sys.executable, '-c', _NO_TF, str(tmp_path)], capture_output=True,
                     text=True, cwd=REPO, env=subprocess_env())
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'eval_top1' in p.stdout
  assert json.load(open(tmp_path / 'results.json'))['steps'] == 2


@pytest.mark.parametrize('preset,stored,expected,size', [
    ('mnist', (28, 28, 1), (32, 32, 3), 0), ('cifar', (32, 32, 3), (32, 32, 3), 0),
    ('none', (8, 8, 1), (8, 8, 1), 0), ('none', (8, 12, 3), (8, 12, 3), 0),
    ('none', (8, 12, 3), (8, 8, 3), 8), ('none', (12, 8, 3), (8, 8, 3), 8)])
def test_preprocess_presets_output_shape(preset, stored, expected, size):
  """The images' own size, non-square ones too, unless data.image_size names a square side."""
  from resnet_flax.data import augment
  c = base_config()
  c.data.preprocess = preset
  c.data.image_size = size
  fn = augment.make_preprocess(c.data, stored_shape=stored)
  images = np.full((2,) + stored, 255, np.uint8)
  out = fn(jnp.asarray(images), jax.random.PRNGKey(0), jnp.arange(2), True)
  assert augment.output_shape(c.data, stored) == expected == out.shape[1:]
  if preset == 'mnist':   # the 2-pixel border is zero-padding (0 on the 0..255 scale)
    np.testing.assert_allclose(out[:, :2], 0.0)
    np.testing.assert_allclose(out[:, 2:30, 2:30], 1.0)
  if preset == 'cifar':   # pad-4 random crops: some images shifted, so zeros appear
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_imagenet_preset_needs_a_host_backend():
  c = tiny_config(**{'data.preprocess': 'imagenet', 'data.backend': 'memory'})
  with pytest.raises(ConfigError, match="data.backend='grain' or data.backend='tfdata'"):
    build_run(c, devices=jax.devices()[:1])


def test_benchmark_reports_throughput_and_macs():
  from resnet_flax.models import create_model
  from resnet_flax.tools import benchmarking, model_stats
  config = tiny_config(**{'data.source': 'npz'})  # the benchmark must replace the source
  result = benchmarking.benchmark(config, steps=2, warmup=1, peak_flops=1e12,
                                  devices=jax.devices()[:2])
  assert config.data.source == 'npz'  # the caller's config is not modified
  for key in ('model', 'image_size', 'batch_size', 'num_devices', 'device_kind', 'jax_version',
              'backend', 'dtype', 'parallelism', 'compile_s', 'train_step_ms_median',
              'train_step_ms_p10', 'train_step_ms_p90', 'train_images_per_sec',
              'train_images_per_sec_per_device', 'infer_compile_s', 'infer_step_ms_median',
              'infer_images_per_sec', 'peak_memory_bytes', 'macs_per_image',
              'train_tflops_achieved', 'mfu'):
    assert key in result, key
  assert (result['image_size'], result['batch_size'], result['num_devices']) == (8, 16, 2)
  assert result['train_step_ms_p10'] <= result['train_step_ms_median'] <= \
      result['train_step_ms_p90']
  assert result['train_images_per_sec'] > 0 and result['infer_images_per_sec'] > 0
  assert result['train_images_per_sec_per_device'] == pytest.approx(
      result['train_images_per_sec'] / 2, rel=1e-3)
  model = create_model(config.model)
  macs = model_stats.count_macs(model, image_size=8, channels=3)
  assert result['macs_per_image'] == macs > 0
  # XLA's own count of the forward pass: 2 FLOPs per multiply-accumulate, but without the
  # products with the zero padding (a large share of a 3x3 conv on 8x8 maps), plus BatchNorm
  # and activations
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      variables, jnp.zeros((1, 8, 8, 3))).compile()
  cost = compiled.cost_analysis()
  xla_flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']
  assert 1.6 * macs <= xla_flops <= 2.3 * macs
  assert 0 < result['mfu'] < 1
