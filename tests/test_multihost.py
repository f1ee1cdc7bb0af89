"""Multi-process training on one machine: 2 processes x 4 CPU devices against 1 process x 8,
globally reduced eval, resume after every process was killed, a lost process, the launcher."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import (REPO, assert_trees_close, config_text, final_state, metrics_events,
                      run_command, saved_steps, subprocess_env, train_cmd, wait_for,
                      without_time)
from resnet_flax.cli import launch_local

STEPS = 24
# 4 steps per epoch (64 examples, batch 16); eval of 37 examples (not a multiple of 16) at 12, 24
_OVERRIDES = (f'--config.num_train_steps={STEPS}', '--config.eval_every_steps=12')


def _launch_cmd(config_path, workdir, *extra, num_processes=2, devices=4):
  return [sys.executable, os.path.join(REPO, 'scripts', 'launch_local.py'),
          f'--num-processes={num_processes}', f'--devices-per-process={devices}', '--',
          '--config', str(config_path), '--workdir', str(workdir), *_OVERRIDES, *extra]


def _single_env(devices):
  return {'JAX_NUM_CPU_DEVICES': str(devices),
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(config file, workdir of 1 process x 8 devices, workdir of 2 processes x 4 devices)."""
  root = tmp_path_factory.mktemp('multihost')
  config_path = root / 'tiny.py'
  config_path.write_text(config_text('memory', root))
  one = run_command(train_cmd(config_path, root / 'one', *_OVERRIDES), **_single_env(8))
  assert one.returncode == 0, one.stderr[-3000:]
  two = run_command(_launch_cmd(config_path, root / 'two'))
  assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
  lines = two.stdout.splitlines()
  assert any(line.startswith('[p0] ') for line in lines)
  assert any(line.startswith('[p1] ') for line in lines)
  # process 0 alone logs and reports
  assert [line for line in lines if 'results (' in line and line.startswith('[p1]')] == []
  assert any(line.startswith('[p0] results (') for line in lines)
  return config_path, root / 'one', root / 'two'


def _wait_until_training_logs(procs, workdir, tmp_path):
  """Waits for the first metrics line while the processes make progress (no fixed deadline:
  a loaded machine starts slowly); every process must still be alive meanwhile."""
  metrics = workdir / 'metrics.jsonl'
  started = wait_for(procs, lambda: metrics.exists() and metrics.stat().st_size > 0,
                     poll=0.05)
  assert started and all(p.poll() is None for p in procs), \
      open(tmp_path / 'p0.log').read()[-3000:]


def test_two_processes_train_as_one_process_with_the_same_global_batch(runs):
  _, one, two = runs
  r1 = json.load(open(one / 'results.json'))
  r2 = json.load(open(two / 'results.json'))
  assert r1['num_devices'] == r2['num_devices'] == 8 and r1['steps'] == r2['steps'] == STEPS
  for key in ('eval_loss', 'eval_top1', 'eval_top5'):
    np.testing.assert_allclose(r2[key], r1[key], rtol=1e-5, atol=1e-5)
  train1 = [e for e in metrics_events(one) if 'train_loss' in e]
  train2 = [e for e in metrics_events(two) if 'train_loss' in e]
  assert [e['step'] for e in train1] == [e['step'] for e in train2] == [4, 8, 12, 16, 20, 24]
  for a, b in zip(train1, train2):
    np.testing.assert_allclose(b['train_loss'], a['train_loss'], rtol=1e-5, atol=1e-5)
  step1, state1 = final_state(one)
  step2, state2 = final_state(two)
  assert step1 == step2 == STEPS
  assert_trees_close(state2['params'], state1['params'], tol=1e-5)
  assert_trees_close(state2['batch_stats'], state1['batch_stats'], tol=1e-5)
  assert_trees_close(state2, state1, tol=1e-5)     # optimizer state, EMA, step too


@pytest.mark.slow
def test_two_process_eval_counts_every_example_once(runs):
  # 37 eval examples in global batches of 16: the last batch is 5 real + 11 padding, so
  # process 1's share of it is padding only. `trainer.evaluate` raises unless the globally
  # reduced count is exactly 37; the metrics equal the single-process eval at both evals.
  _, one, two = runs
  evals1 = [e for e in metrics_events(one) if 'eval_loss' in e]
  evals2 = [e for e in metrics_events(two) if 'eval_loss' in e]
  assert [e['step'] for e in evals1] == [e['step'] for e in evals2] == [12, 24]
  for a, b in zip(evals1, evals2):
    for key in ('eval_loss', 'eval_top1', 'eval_top5'):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-5)
    # top-1 is a count over 37 examples: every example counted exactly once
    assert abs(b['eval_top1'] * 37 - round(b['eval_top1'] * 37)) < 1e-4


def _start(cmd, log_path, env=None):
  return subprocess.Popen(cmd, stdout=open(log_path, 'w'), stderr=subprocess.STDOUT, cwd=REPO,
                          env=env or subprocess_env(), start_new_session=True)


def _kill_group(proc, sig=signal.SIGKILL):
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass


@pytest.mark.slow
def test_kill_every_process_and_relaunch_resumes_exactly(runs, tmp_path):
  config_path, _, reference = runs
  workdir = tmp_path / 'run'
  proc = _start(_launch_cmd(config_path, workdir), tmp_path / 'first.log')
  try:
    wait_for(proc, lambda: saved_steps(workdir), poll=0.01)
  finally:
    _kill_group(proc)     # the launcher and both training processes, at once
    proc.wait()
  killed_at = saved_steps(workdir)
  assert killed_at and max(killed_at) < STEPS, (killed_at, open(tmp_path / 'first.log').read())
  p = run_command(_launch_cmd(config_path, workdir))
  assert p.returncode == 0, p.stdout[-3000:]
  assert f'resuming from checkpoint {max(killed_at)}' in p.stdout
  assert without_time(json.load(open(workdir / 'results.json'))) == without_time(
      json.load(open(reference / 'results.json')))
  assert metrics_events(workdir) == metrics_events(reference)
  step, state = final_state(workdir)
  ref_step, ref_state = final_state(reference)
  assert step == ref_step == STEPS
  assert_trees_close(state, ref_state, tol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('victim', [1, 0])
def test_a_lost_process_stops_the_other_within_a_bounded_time(runs, tmp_path, victim):
  """No launcher (as on a cluster): the survivor must not hang in a collective."""
  config_path = runs[0]
  workdir = tmp_path / 'run'
  port = launch_local.free_port()
  env = launch_local.process_env(4, subprocess_env())
  procs = [_start(train_cmd(config_path, workdir, '--config.num_train_steps=100000',
                             '--config.distributed.heartbeat_timeout_s=10',
                             f'--config.distributed.coordinator=127.0.0.1:{port}',
                             '--config.distributed.num_processes=2',
                             f'--config.distributed.process_id={i}'),
                  tmp_path / f'p{i}.log', env=env) for i in range(2)]
  survivor = procs[1 - victim]
  try:
    _wait_until_training_logs(procs, workdir, tmp_path)
    _kill_group(procs[victim])
    killed = time.time()
    try:
      code = survivor.wait(timeout=60)
    except subprocess.TimeoutExpired:
      pytest.fail('the surviving process hung for 60 s after the other one died')
    elapsed = time.time() - killed
  finally:
    for p in procs:
      _kill_group(p)
      p.wait()
  log = open(tmp_path / f'p{1 - victim}.log').read()
  assert code != 0, log[-3000:]
  if victim == 1:   # the coordinator (process 0) names the tasks that stopped sending heartbeats
    assert 'tasks are unhealthy (stopped sending heartbeats):\n1\n' in log, log[-3000:]
  else:             # process 0 runs the coordination service: the others lose the leader
    assert 'leader task' in log and 'task 0' in log, log[-3000:]
  print(f'process {victim} killed: process {1 - victim} exited with {code} after '
        f'{elapsed:.1f} s')


def test_launcher_stops_every_process_when_one_fails(tmp_path):
  script = tmp_path / 'job.py'
  script.write_text(
      'import sys, time\n'
      'i = int([a for a in sys.argv if a.startswith("--config.distributed.process_id=")][0]'
      '.split("=")[1])\n'
      'print("hello from", i, flush=True)\n'
      'if i == 1:\n'
      '  time.sleep(0.5)\n'
      '  sys.exit(3)\n'
      'time.sleep(120)\n')
  start = time.time()
  p = run_command([sys.executable, os.path.join(REPO, 'scripts', 'launch_local.py'),
                   '--num-processes=3', '--grace=2', f'--script={script}', '--', '--x'])
  assert p.returncode == 3, p.stdout
  assert time.time() - start < 30
  for i in range(3):
    assert f'[p{i}] hello from {i}' in p.stdout
  assert '[launch] process 1 exited with code 3' in p.stdout


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_the_same_checkpoint(runs, tmp_path):
  """A SIGTERM reaching only process 1: the processes agree at the next log boundary, both save
  the same checkpoint and exit 0; relaunching finishes the run."""
  config_path = runs[0]
  workdir = tmp_path / 'run'
  port = launch_local.free_port()
  env = launch_local.process_env(4, subprocess_env())
  procs = [_start(train_cmd(config_path, workdir, *_OVERRIDES,
                             '--config.checkpoint_every_steps=1000',
                             f'--config.distributed.coordinator=127.0.0.1:{port}',
                             '--config.distributed.num_processes=2',
                             f'--config.distributed.process_id={i}'),
                  tmp_path / f'p{i}.log', env=env) for i in range(2)]
  try:
    _wait_until_training_logs(procs, workdir, tmp_path)
    procs[1].send_signal(signal.SIGTERM)
    wait_for(procs, None, until_all_exit=True, poll=0.05)
    codes = [p.wait() for p in procs]
  finally:
    for p in procs:
      _kill_group(p)
      p.wait()
  assert codes == [0, 0], open(tmp_path / 'p0.log').read()[-3000:]
  saved = saved_steps(workdir)
  assert len(saved) == 1 and 0 < saved[0] < STEPS and saved[0] % 4 == 0, saved
  assert 'SIGTERM: saved checkpoint' in open(tmp_path / 'p0.log').read()
  p = run_command(_launch_cmd(config_path, workdir))
  assert p.returncode == 0, p.stdout[-3000:]
  assert f'resuming from checkpoint {saved[0]}' in p.stdout
  assert json.load(open(workdir / 'results.json'))['steps'] == STEPS


def test_pmap_on_several_processes_is_refused(monkeypatch):
  """pmap over each process's own devices would reduce gradients within a process only: every
  process would train a model of its own."""
  import jax
  from resnet_flax.errors import ConfigError
  from resnet_flax.train import parallel
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  with pytest.raises(ConfigError, match=r'parallelism=pmap runs on the devices of one process; '
                                        r'with 2 processes use config.parallelism=jit'):
    parallel.create('pmap')
