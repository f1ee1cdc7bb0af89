"""Checkpoints and resuming: exact resume after SIGKILL, SIGTERM, other device counts and
parallelism modes, unreadable checkpoints, NaN, incompatible configs, fine-tuning, evaluation,
unwritable checkpoint folders."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (REPO, assert_bitwise_equal, assert_trees_close, config_text,
                      final_state, metrics_events, run_command, saved_steps, subprocess_env,
                      tiny_config, train_cmd, wait_for, without_time)
from resnet_flax.checkpoint import store
from resnet_flax.errors import CheckpointError, ConfigError
from resnet_flax.train import loop, resume, steps
from resnet_flax.train.build import build_run

# What the exact-resume tests cover: the in-memory back end (JAX augmentation), tf.data (host
# augmentation with stateless random ops) and Grain (host augmentation keyed by example, no
# iterator state) reading an image-folder tree, and a model with scanned stages (in memory).
BACKENDS = ['memory', 'tfdata', 'grain', 'scan']


def _saving_now(workdir):
  folder = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(folder) and any('.orbax-checkpoint-tmp' in n for n in os.listdir(folder))


@pytest.fixture(scope='module', params=BACKENDS)
def uninterrupted(request, tmp_path_factory):
  """(config file, workdir) of a 60-step run that nothing interrupted."""
  root = tmp_path_factory.mktemp(f'reference-{request.param}')
  config_path = root / 'tiny.py'
  config_path.write_text(config_text(request.param, root))
  p = run_command(train_cmd(config_path, root / 'run'))
  assert p.returncode == 0, p.stderr[-3000:]
  return config_path, root / 'run'


def _assert_same_run(workdir, reference):
  ref_results = json.load(open(reference / 'results.json'))
  results = json.load(open(workdir / 'results.json'))
  assert without_time(results) == without_time(ref_results)
  assert metrics_events(workdir) == metrics_events(reference)
  ref_step, ref_state = final_state(reference)
  step, state = final_state(workdir)
  assert step == ref_step == 60
  assert_bitwise_equal(state, ref_state)   # params, batch_stats, opt_state, EMA, step, rng


@pytest.mark.slow
def test_sigkill_and_restart_ends_bit_identical(uninterrupted, tmp_path):
  """Killed (SIGKILL) at a random moment after a random checkpoint, then started again with
  the same command: the same run, bit for bit, with each input back end."""
  _kill_and_restart(*uninterrupted, tmp_path, 'random')


@pytest.mark.slow
@pytest.mark.parametrize('uninterrupted', ['memory'], indirect=True)
def test_sigkill_while_a_checkpoint_is_written_ends_bit_identical(uninterrupted, tmp_path):
  """Killed while a checkpoint is being written: the partial one is ignored. What this tests
  is the checkpoint store's, the same for every input back end (their resume from a complete
  checkpoint is the test above), so it runs on one."""
  _kill_and_restart(*uninterrupted, tmp_path, 'during_save')


def _kill_and_restart(config_path, reference, tmp_path, when):
  """SIGKILL at `when` (a random moment after a checkpoint, or during a save), then the same
  command again: it resumes once and ends as the uninterrupted run did."""
  workdir = tmp_path / 'run'
  rng = random.Random({'random': 20261201, 'during_save': 20261202}[when])
  kill_after = rng.randint(6, 36)     # kill once a checkpoint at or after this step exists
  delay = rng.uniform(0.0, 0.3) if when == 'random' else 0.0
  proc = subprocess.Popen(train_cmd(config_path, workdir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, env=subprocess_env())
  try:
    if when == 'random':
      ready = lambda: any(s >= kill_after for s in saved_steps(workdir))
    else:
      ready = lambda: saved_steps(workdir) and _saving_now(workdir)
    running = wait_for(proc, ready, poll=0.0005)
    assert running, f'the run ended before the kill: {proc.stderr.read()[-2000:]}'
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  killed_at = saved_steps(workdir)
  assert killed_at and max(killed_at) < 60, f'killed too late (checkpoints {killed_at})'

  p = run_command(train_cmd(config_path, workdir))
  assert p.returncode == 0, p.stderr[-3000:]
  resumed = [l for l in p.stdout.splitlines() if l.startswith('resuming from checkpoint')]
  assert len(resumed) == 1, (when, kill_after, delay, p.stdout[-2000:])
  print(f'killed ({when}, after {kill_after} + {delay:.2f}s) with checkpoints {killed_at}; '
        f'{resumed[0]}')
  _assert_same_run(workdir, reference)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_cleanly(uninterrupted, tmp_path):
  config_path, reference = uninterrupted
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(train_cmd(config_path, workdir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, env=subprocess_env())
  try:
    assert wait_for(proc, lambda: saved_steps(workdir)), proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  line = [l for l in out.splitlines() if l.startswith('SIGTERM: saved checkpoint')]
  assert len(line) == 1, out[-2000:]
  stopped_at = int(line[0].split()[3])
  assert max(saved_steps(workdir)) == stopped_at < 60
  assert not (workdir / 'results.json').exists()

  p = run_command(train_cmd(config_path, workdir))
  assert p.returncode == 0, p.stderr[-3000:]
  assert f'resuming from checkpoint {stopped_at} ' in p.stdout
  _assert_same_run(workdir, reference)


def _resume_config(**overrides):
  base = {'num_train_steps': 4, 'checkpoint_every_steps': 2, 'log_every_steps': 1,
          'eval_every_steps': 100, 'schedule.name': 'constant'}
  base.update(overrides)
  return tiny_config(**base)


@pytest.fixture(scope='module')
def eight_device_runs(tmp_path_factory):
  """A 4-step run saved on 8 devices (jit), and its 6-step continuation on 8 devices."""
  root = tmp_path_factory.mktemp('eight')
  loop.train_and_evaluate(_resume_config(), str(root / 'saved'))
  shutil.copytree(root / 'saved', root / 'continued')
  loop.train_and_evaluate(_resume_config(num_train_steps=6), str(root / 'continued'))
  return root


def _train_losses(workdir):
  return {e['step']: e['train_loss'] for e in metrics_events(workdir) if 'train_loss' in e}


@pytest.mark.parametrize('mode,num_devices', [('jit', 1), ('pmap', 4), ('pmap', 8)])
def test_resume_on_other_devices_and_parallelism(eight_device_runs, tmp_path, mode, num_devices,
                                                 capsys):
  workdir = tmp_path / 'run'
  shutil.copytree(eight_device_runs / 'saved', workdir)
  loop.train_and_evaluate(_resume_config(num_train_steps=6, parallelism=mode), str(workdir),
                          devices=jax.devices()[:num_devices])
  assert 'resuming from checkpoint 4 ' in capsys.readouterr().out
  ref = _train_losses(eight_device_runs / 'continued')
  got = _train_losses(workdir)
  assert set(got) == set(ref) == set(range(1, 7))
  for step in (5, 6):   # the steps after the resume
    assert got[step] == pytest.approx(ref[step], rel=1e-5)
  _, ref_state = final_state(eight_device_runs / 'continued')
  _, state = final_state(workdir)
  assert_trees_close(state['params'], ref_state['params'])
  assert_trees_close(state['batch_stats'], ref_state['batch_stats'])


def test_unreadable_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
  workdir = tmp_path / 'run'
  loop.train_and_evaluate(_resume_config(num_train_steps=6), str(workdir),
                          devices=jax.devices()[:1])
  assert saved_steps(workdir) == [2, 4, 6]
  # corrupt the latest checkpoint, and leave a half-written (unfinalised) one after it
  state_dir = workdir / 'checkpoints' / '6' / 'state'
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  partial = workdir / 'checkpoints' / '8.orbax-checkpoint-tmp-1234567'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'data').write_bytes(b'half written')
  capsys.readouterr()
  results = loop.train_and_evaluate(_resume_config(num_train_steps=8), str(workdir),
                                    devices=jax.devices()[:1])
  out = capsys.readouterr().out
  assert 'warning: checkpoint 6 in' in out and 'cannot be read' in out
  assert 'resuming from checkpoint 4 ' in out
  assert results['steps'] == 8
  assert saved_steps(workdir) == [4, 6, 8]      # 6 written again, from the resumed run
  assert not partial.exists()
  assert os.listdir(str(workdir / 'checkpoints') + '.skipped')


def test_processes_that_restore_different_checkpoints_stop_before_training(tmp_path,
                                                                        monkeypatch):
  """One host read checkpoint 4, another 2 (4 was unreadable there): the step counts of the
  processes would differ, so the run stops in one line and the checkpoints stay."""
  from jax.experimental import multihost_utils
  from resnet_flax.train import distributed
  workdir = tmp_path / 'run'
  loop.train_and_evaluate(_resume_config(num_train_steps=4), str(workdir),
                          devices=jax.devices()[:1])
  with monkeypatch.context() as patch:   # the collective of two processes: this one and one at 2
    patch.setattr(jax, 'process_count', lambda: 2)
    patch.setattr(multihost_utils, 'process_allgather',
                  lambda x: np.stack([np.asarray(x), np.asarray([2])]))
    assert not distributed.same_on_every_process(4) and distributed.same_on_every_process(2)
  monkeypatch.setattr(distributed, 'same_on_every_process', lambda step: step == 2)
  with pytest.raises(CheckpointError, match='the processes of this run restored different '
                                            'checkpoints'):
    loop.train_and_evaluate(_resume_config(num_train_steps=8), str(workdir),
                            devices=jax.devices()[:1])
  assert saved_steps(workdir) == [2, 4]


def _nan_loss_at_step(monkeypatch, config, step):
  """The train step's loss becomes NaN on the batch of `step` (1-based) and only there: the
  real non-finite path of the step and the loop handle it."""
  run = build_run(config, devices=jax.devices()[:1])
  target = jnp.asarray(run.train_batches.batch(step - 1)['label'])
  real = steps.losses.cross_entropy

  def cross_entropy(logits, labels, *args):
    loss = real(logits, labels, *args)
    return jnp.where(jnp.all(labels == target), jnp.nan, loss)

  monkeypatch.setattr(steps.losses, 'cross_entropy', cross_entropy)


def test_nan_stops_and_keeps_the_checkpoints_before_it(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  # logs every 3 steps, checkpoints every 2: the checkpoint at step 4 must check step 4 first
  config = _resume_config(num_train_steps=10, log_every_steps=3)
  _nan_loss_at_step(monkeypatch, config, 4)
  with pytest.raises(loop.NonFiniteLossError, match='at step 4;') as e:
    loop.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  assert 'Checkpoints up to step 2 are kept' in str(e.value)
  assert saved_steps(workdir) == [2]
  step, state = final_state(workdir)
  assert step == 2 and int(state['step']) == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state['params']))
  assert not (workdir / 'results.json').exists()


def test_nan_on_the_command_line_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
  from resnet_flax.cli import train as train_cli
  config = _resume_config(num_train_steps=10, log_every_steps=3)
  _nan_loss_at_step(monkeypatch, config, 4)
  assert train_cli.train_main(config, str(tmp_path / 'run'), '') == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('stopped: ') and 'at step 4;' in err[0], err


def test_nan_skip_step_policy_keeps_training(tmp_path, monkeypatch, capsys):
  config = _resume_config(num_train_steps=4, nan_policy='skip_step')
  _nan_loss_at_step(monkeypatch, config, 2)
  results = loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  assert results['steps'] == 4 and np.isfinite(results['eval_loss'])
  assert _train_losses(tmp_path)[2] is None      # the NaN loss is logged as null
  assert results['skipped_steps'] == 1           # the results say how many updates were dropped
  assert 'warning: 1 of the last 1 steps had a non-finite loss' in capsys.readouterr().out


def test_a_window_with_a_dropped_step_averages_the_steps_that_were_applied(tmp_path,
                                                                          monkeypatch):
  """Logged every 4 steps, a window with the dropped step 2 gives the mean loss and the RMS
  gradient norm of steps 1, 3 and 4 as the same run logged every step has them (the dropped
  step's NaN made the whole window's loss and gradient norm null)."""
  runs = {}
  for every in (1, 4):
    config = _resume_config(num_train_steps=4, nan_policy='skip_step', log_every_steps=every)
    _nan_loss_at_step(monkeypatch, config, 2)
    workdir = tmp_path / f'every{every}'
    loop.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
    runs[every] = {e['step']: e for e in metrics_events(workdir) if 'train_loss' in e}
    monkeypatch.undo()
  applied = [runs[1][s] for s in (1, 3, 4)]
  assert runs[1][2]['train_loss'] is None and runs[1][2]['grad_norm'] is None
  window = runs[4][4]
  np.testing.assert_allclose(window['train_loss'], np.mean([e['train_loss'] for e in applied]),
                             rtol=1e-5)
  np.testing.assert_allclose(window['train_top1'], np.mean([e['train_top1'] for e in applied]),
                             rtol=1e-5)
  np.testing.assert_allclose(window['grad_norm'],
                             np.sqrt(np.mean([e['grad_norm'] ** 2 for e in applied])), rtol=1e-5)


def test_a_window_saved_before_it_counted_applied_steps_counts_all_of_them():
  """A checkpoint's open window from before the count existed: all its steps were applied, so
  the RMS gradient norm of the resumed window divides by every step (it divided by the steps
  since the resume: 1.414 for four steps of norm 1, two of them before the checkpoint)."""
  from resnet_flax.train.loop_state import LoopState
  old = {'window': {'loss_sum': 8.0, 'top1_sum': 4.0, 'count': 8.0, 'grad_norm_sq': 2.0},
         'window_steps': 2}
  restored = LoopState.from_meta(old)
  assert restored.window['finite'] == 2
  later = LoopState.from_meta({**old, 'window': {**old['window'], 'finite': 1.0}})
  assert later.window['finite'] == 1          # a window that has the count keeps it


def test_incompatible_config_is_refused_in_one_line(tmp_path):
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(_resume_config(num_train_steps=2), workdir,
                          devices=jax.devices()[:1])
  config_json = open(os.path.join(workdir, 'config.json')).read()
  changed = _resume_config(num_train_steps=4, batch_size=32, **{'model.depth': 14})
  with pytest.raises(ConfigError) as e:
    loop.train_and_evaluate(changed, workdir, devices=jax.devices()[:1])
  message = str(e.value)
  assert '\n' not in message and 'incompatible config' in message
  assert 'model.depth (8 -> 14)' in message and 'batch_size (16 -> 32)' in message
  assert 'on_existing_run=restart' in message
  assert open(os.path.join(workdir, 'config.json')).read() == config_json   # untouched
  with pytest.raises(ConfigError, match='on_existing_run=error'):
    loop.train_and_evaluate(_resume_config(num_train_steps=4, on_existing_run='error'),
                            workdir, devices=jax.devices()[:1])
  results = loop.train_and_evaluate(
      _resume_config(num_train_steps=2, batch_size=32, on_existing_run='restart',
                     **{'model.depth': 14}), workdir, devices=jax.devices()[:1])
  assert results['steps'] == 2 and saved_steps(workdir) == [2]
  assert json.load(open(os.path.join(workdir, 'config.json')))['model']['depth'] == 14


def test_config_that_reshapes_the_optimizer_state_is_refused_and_the_checkpoints_stay(tmp_path,
                                                                                    capsys):
  """A field outside the resume checks that changes the optimizer state's structure (gradient
  clipping adds a state, no momentum drops the trace) is refused in one line naming it; the
  readable checkpoints stay where they are (not moved aside as unreadable), and the run resumes
  from them with the values it was saved with."""
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(_resume_config(num_train_steps=2), workdir, devices=jax.devices()[:1])
  for change in ({'optimizer.grad_clip_norm': 1.0}, {'optimizer.momentum': 0.0}):
    with pytest.raises(ConfigError) as e:
      loop.train_and_evaluate(_resume_config(num_train_steps=4, **change), workdir,
                              devices=jax.devices()[:1])
    message = str(e.value)
    assert '\n' not in message and 'another structure' in message, message
    assert next(iter(change)) in message and 'on_existing_run=restart' in message
    assert saved_steps(workdir) == [2]
    assert not os.path.exists(os.path.join(workdir, 'checkpoints.skipped'))
  capsys.readouterr()
  results = loop.train_and_evaluate(_resume_config(num_train_steps=4), workdir,
                                    devices=jax.devices()[:1])
  assert 'resuming from checkpoint 2 ' in capsys.readouterr().out
  assert results['steps'] == 4 and saved_steps(workdir) == [2, 4]


def test_a_restart_that_would_delete_the_init_from_checkpoints_is_refused(tmp_path):
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(_resume_config(num_train_steps=2), workdir, devices=jax.devices()[:1])
  for source in (workdir, os.path.join(workdir, 'checkpoints', '2')):
    with pytest.raises(ConfigError, match=r'is the checkpoint folder of this run, which '
                                          r'on_existing_run=restart deletes before loading'):
      loop.train_and_evaluate(_resume_config(num_train_steps=2, on_existing_run='restart',
                                             init_from=source), workdir,
                              devices=jax.devices()[:1])
    assert saved_steps(workdir) == [2]


def test_init_from_reports_loaded_reinitialised_and_new(tmp_path, capsys):
  source = str(tmp_path / 'source')
  loop.train_and_evaluate(_resume_config(num_train_steps=2), source,
                          devices=jax.devices()[:1])
  _, saved = final_state(source)
  # a new head (5 classes): head/kernel and head/bias have other shapes
  config = _resume_config(num_train_steps=2, init_from=source,
                          **{'model.num_classes': 5, 'data.synthetic_num_classes': 5})
  run = build_run(config, devices=jax.devices()[:1])
  state, report = resume.init_from_checkpoint(run, source)
  host = run.par.host_state(state)
  assert report.step == 2
  assert sorted(r.split()[0] for r in report.reinitialised) == ['params/head/bias',
                                                               'params/head/kernel']
  assert 'params/head/kernel (16, 10) -> (16, 5)' in report.reinitialised
  assert not report.new and not report.dropped
  assert len(report.loaded) == len(jax.tree.leaves(saved['params'])) - 2 + len(
      jax.tree.leaves(saved['batch_stats']))
  np.testing.assert_array_equal(host.params['stem_conv']['kernel'],
                                saved['params']['stem_conv']['kernel'])
  np.testing.assert_array_equal(host.batch_stats['stem_norm']['mean'],
                                saved['batch_stats']['stem_norm']['mean'])
  fresh = run.par.host_state(run.state)
  np.testing.assert_array_equal(host.params['head']['kernel'], fresh.params['head']['kernel'])
  # through the trainer: the report is printed and returned
  capsys.readouterr()
  results = loop.train_and_evaluate(config, str(tmp_path / 'finetune'),
                                    devices=jax.devices()[:1])
  out = capsys.readouterr().out
  assert 'init_from ' in out and 're-initialised (shape mismatch): params/head/bias' in out
  assert results['init_from']['reinitialised'] == report.reinitialised
  # a model without a head (a backbone to build on): the checkpoint's head arrays are dropped
  from resnet_flax.checkpoint import pretrained
  from resnet_flax.models import create_model
  headless = create_model({**_resume_config().model, 'include_top': False})
  variables = jax.device_get(headless.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                           train=False))
  _, _, report = pretrained.load_pretrained(os.path.join(source, 'checkpoints', '2'), -1,
                                            variables['params'], variables['batch_stats'])
  assert report.dropped == ['params/head/bias', 'params/head/kernel']


def test_unwritable_checkpoint_folder_is_one_clear_error(tmp_path):
  (tmp_path / 'file.txt').write_text('not a folder')
  bad = tmp_path / 'file.txt' / 'checkpoints'
  config = _resume_config(num_train_steps=2, checkpoint_dir=str(bad))
  with pytest.raises(CheckpointError) as e:
    loop.train_and_evaluate(config, str(tmp_path / 'run'), devices=jax.devices()[:1])
  message = str(e.value)
  assert '\n' not in message and str(bad) in message and 'writable folder' in message


def test_save_that_fails_midway_leaves_earlier_checkpoints(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  real_save = store.Checkpoints.save

  def failing_save(self, step, *args, **kwargs):
    if step == 4:
      raise CheckpointError(f'cannot write checkpoints to {self.directory} (OSError: [Errno 28] '
                            f'No space left on device)')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(store.Checkpoints, 'save', failing_save)
  with pytest.raises(CheckpointError, match='No space left on device'):
    loop.train_and_evaluate(_resume_config(num_train_steps=6), str(workdir),
                            devices=jax.devices()[:1])
  assert saved_steps(workdir) == [2]
  step, state = final_state(workdir)
  assert step == 2 and int(state['step']) == 2


def test_checkpoint_config_validation():
  from resnet_flax import config as config_lib
  for field, value in (('checkpoint_every_steps', 0), ('keep_checkpoints', 0),
                       ('on_existing_run', 'resume_maybe'), ('best_metric', 'top1')):
    with pytest.raises(ConfigError, match=field):
      config_lib.validate(tiny_config(**{field: value}))
  # the direction that would keep the worst checkpoint by the metric
  for metric, mode in (('eval_loss', 'max'), ('eval_top1', 'min'), ('eval_top5', 'min')):
    with pytest.raises(ConfigError, match=rf"best_mode='{mode}': would keep the worst "
                                          rf"checkpoint by best_metric='{metric}'"):
      config_lib.validate(tiny_config(best_metric=metric, best_mode=mode))


@pytest.mark.parametrize('metric', ['eval_top1', 'eval_loss'])
def test_keeps_latest_and_best(tmp_path, metric):
  """best_mode=auto: the highest top-1, the lowest loss."""
  workdir = tmp_path / 'run'
  config = _resume_config(num_train_steps=12, checkpoint_every_steps=1, eval_every_steps=3,
                          keep_checkpoints=2, best_metric=metric)
  loop.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  evals = {e['step']: e[metric] for e in metrics_events(workdir) if metric in e}
  sign = 1 if metric == 'eval_top1' else -1
  best = max(sorted(evals), key=lambda s: (sign * evals[s], s))   # ties: orbax keeps the latest
  assert set(saved_steps(workdir)) == {11, 12} | {best}


@pytest.mark.slow
def test_evaluate_script(tmp_path):
  workdir = tmp_path / 'run'
  results = loop.train_and_evaluate(_resume_config(num_train_steps=4), str(workdir),
                                    devices=jax.devices()[:1])
  script = os.path.join(REPO, 'scripts', 'evaluate.py')
  p = run_command([sys.executable, script, '--workdir', str(workdir)])
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'checkpoint 4, split test: top-1' in p.stdout
  saved = json.load(open(workdir / 'eval_4.json'))
  for key in ('eval_top1', 'eval_top5', 'eval_loss'):
    assert saved[key] == pytest.approx(results[key], rel=1e-5)
  p = run_command([sys.executable, script, '--workdir', str(workdir), '--checkpoint', '2',
            '--config.data.eval_split=train[:16]', '--config.eval_batch_size=8'])
  assert p.returncode == 0, p.stderr[-3000:]
  saved = json.load(open(workdir / 'eval_2.json'))
  assert saved['eval_split'] == 'train[:16]' and saved['data']['source'] == 'synthetic'
  p = run_command([sys.executable, script, '--workdir', str(workdir), '--checkpoint', '3'])
  assert p.returncode == 2 and 'no checkpoint at step 3' in p.stderr.strip().splitlines()[-1]
  p = run_command([sys.executable, script, '--workdir', str(workdir), '--checkpoint', '-5'])
  assert p.returncode == 2 and '--checkpoint -5: give a saved step number' in p.stderr
  p = run_command([sys.executable, script, '--workdir', str(workdir), '--checkpoint=latest'])
  assert p.returncode == 2 and p.stderr.strip().splitlines() == [
      'error: --checkpoint latest: give a saved step number (or -1, or leave it out, for the '
      'latest readable checkpoint)']
