"""A run folder belongs to one run: a second training on it is refused, a finished run keeps its
results, a failed checkpoint write stops the run with one line (tracebacks to errors.log), and
evaluation falls back past an unreadable checkpoint and survives a folder it cannot write."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import (REPO, config_text, metrics_events, run_command, saved_steps,
                      subprocess_env, tiny_config, train_cmd, wait_for)
from resnet_flax import rundir
from resnet_flax.checkpoint import pretrained
from resnet_flax.errors import CheckpointError, ConfigError, WorkdirError
from resnet_flax.train import loop


def _lock_holder(workdir):
  """The lock record of a workdir, once its run wrote it."""
  try:
    return json.loads(open(os.path.join(workdir, rundir.LOCK_FILE)).read() or 'null')
  except (OSError, ValueError):
    return None


def test_a_workdir_lock_excludes_a_second_holder(tmp_path):
  with rundir.WorkdirLock(str(tmp_path / 'run')):
    with pytest.raises(WorkdirError, match=rf'in use by another run \(host .*, pid {os.getpid()}'
                                           r', started 20\d\d-'):
      rundir.WorkdirLock(str(tmp_path / 'run')).acquire()
  rundir.WorkdirLock(str(tmp_path / 'run')).acquire().release()   # released: free again


@pytest.mark.slow
def test_a_second_training_on_a_busy_workdir_is_refused(tmp_path):
  """Two real processes on one workdir: the second exits 2 at once with one line naming the
  holder; the first trains on undisturbed (then stops on SIGTERM, saving its checkpoint), and
  the folder holds only its run."""
  config = tmp_path / 'tiny.py'
  config.write_text(config_text('memory', tmp_path))
  workdir = tmp_path / 'run'
  first = subprocess.Popen(train_cmd(config, workdir, '--config.num_train_steps=100000',
                                     '--config.seed=1'),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                           env=subprocess_env())
  try:
    assert wait_for(first, lambda: saved_steps(workdir)), first.stderr.read()[-2000:]
    holder = _lock_holder(workdir)
    second = run_command(train_cmd(config, workdir, '--config.model.depth=14',
                                   '--config.seed=2'))
    assert first.poll() is None, 'the first run ended before the second one was tried'
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate()
  finally:
    if first.poll() is None:
      first.kill()
  assert second.returncode == 2, second.stderr[-2000:]
  line = second.stderr.strip().splitlines()[-1]
  assert line == (f'workdir error: {workdir} is in use by another run (host {holder["host"]}, '
                  f'pid {holder["pid"]}, started {holder["started"]}); a folder holds one run '
                  f'at a time: wait for that run to end or stop it, or use another --workdir')
  assert second.stdout == '' and holder['pid'] == first.pid
  assert first.returncode == 0 and 'SIGTERM: saved checkpoint' in out, err[-2000:]
  saved = json.load(open(workdir / 'config.json'))
  assert (saved['seed'], saved['model']['depth']) == (1, 8)
  steps = [e['step'] for e in metrics_events(workdir) if 'train_loss' in e]
  assert steps == list(range(4, 4 * len(steps) + 1, 4))    # one run's events, in order
  _, _, _, checkpoint_config = pretrained.load_checkpoint(str(workdir))
  assert (checkpoint_config['seed'], checkpoint_config['model']['depth']) == (1, 8)


@pytest.mark.slow
def test_a_sigkilled_run_leaves_no_stale_lock(tmp_path):
  config = tmp_path / 'tiny.py'
  config.write_text(config_text('memory', tmp_path))
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(train_cmd(config, workdir), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, env=subprocess_env())
  try:
    assert wait_for(proc, lambda: saved_steps(workdir)), proc.stderr.read()[-2000:]
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  p = run_command(train_cmd(config, workdir))
  assert p.returncode == 0, p.stderr[-2000:]
  assert 'resuming from checkpoint' in p.stdout


def test_rerunning_a_finished_run_keeps_its_results(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  config = tiny_config(num_train_steps=3)
  first = loop.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  before = {name: open(os.path.join(workdir, name), 'rb').read()
            for name in (rundir.RESULTS_FILE, rundir.METRICS_FILE, rundir.CONFIG_FILE)}
  again = loop.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  assert again == first and first['train_time_s'] > 0 and first['images_per_sec'] > 0
  assert 'already complete at step 3' in capsys.readouterr().out
  for name, content in before.items():
    assert open(os.path.join(workdir, name), 'rb').read() == content, name


def test_a_run_shortened_to_its_checkpoint_reports_that_steps_evaluation(tmp_path):
  """Checkpoint 4 carries the evaluation of step 3; a rerun that ends the run at step 4 must
  evaluate step 4 for results.json (and log it), not report step 3's numbers."""
  workdir = str(tmp_path / 'run')
  config = tiny_config(num_train_steps=8, eval_every_steps=3, checkpoint_every_steps=4)
  loop.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '8'))
  os.remove(os.path.join(workdir, rundir.RESULTS_FILE))
  shorter = tiny_config(num_train_steps=4, eval_every_steps=3, checkpoint_every_steps=4)
  results = loop.train_and_evaluate(shorter, workdir, devices=jax.devices()[:1])
  _, at_4 = loop.evaluate_checkpoint(shorter, workdir, 4, devices=jax.devices()[:1])
  assert results['steps'] == 4 and results['eval_loss'] == pytest.approx(at_4['eval_loss'])
  evals = [e for e in metrics_events(workdir) if 'eval_loss' in e]
  assert [e['step'] for e in evals] == [3, 4]
  assert evals[-1]['eval_loss'] == pytest.approx(at_4['eval_loss'])


def _varint(data, at):
  value, shift = 0, 0
  while True:
    byte = data[at]
    value |= (byte & 0x7F) << shift
    at, shift = at + 1, shift + 7
    if byte < 0x80:
      return value, at


def _tensorboard_events(workdir):
  """(step, kind) of every event in the run's TensorBoard files, kind 'summary' or
  'session_log' (TFRecord framing, and the Event protobuf's fields 2, 5 and 7 read by hand:
  tensorboardX would import torch into this process, which other tests check it does not)."""
  folder = os.path.join(workdir, rundir.TENSORBOARD)
  events = []
  for name in sorted(os.listdir(folder)):
    data = open(os.path.join(folder, name), 'rb').read()
    at = 0
    while at + 12 <= len(data):
      length = int.from_bytes(data[at:at + 8], 'little')
      record, at = data[at + 12:at + 12 + length], at + 12 + length + 4
      pos, step, kind = 0, 0, None
      while pos < len(record):
        key, pos = _varint(record, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
          value, pos = _varint(record, pos)
          step = value if field == 2 else step
        elif wire == 1:
          pos += 8
        elif wire == 5:
          pos += 4
        else:
          size, pos = _varint(record, pos)
          pos += size
          kind = {5: 'summary', 7: 'session_log'}.get(field, kind)
      events.append((step, kind))
  return events


def test_tensorboard_events_follow_a_resume_and_a_restart(tmp_path):
  """A resumed run marks the events after its checkpoint as superseded (TensorBoard drops
  them, as metrics.jsonl is cut there); a restart starts the folder afresh. (Training runs in
  subprocesses: tensorboardX imports torch.)"""
  if importlib.util.find_spec('tensorboardX') is None:
    pytest.skip('tensorboardX is not installed (requirements.txt)')
  config_path = tmp_path / 'tiny.py'
  config_path.write_text(config_text('memory', str(tmp_path)))
  workdir = tmp_path / 'run'
  args = ['--config.num_train_steps=8', '--config.log_every_steps=2',
          '--config.checkpoint_every_steps=4', '--config.log_tensorboard=True']
  p = run_command(train_cmd(config_path, workdir, *args))
  assert p.returncode == 0, p.stderr[-2000:]
  shutil.rmtree(workdir / 'checkpoints' / '8')
  os.remove(workdir / rundir.RESULTS_FILE)
  p = run_command(train_cmd(config_path, workdir, *args))
  assert p.returncode == 0 and 'resuming from checkpoint 4' in p.stdout, p.stderr[-2000:]
  # SessionLog START at step 5: TensorBoard purges the first segment's events from step 5 on
  assert (5, 'session_log') in _tensorboard_events(workdir)
  p = run_command(train_cmd(config_path, workdir, '--config.num_train_steps=6',
                            '--config.log_every_steps=2', '--config.log_tensorboard=True',
                            '--config.on_existing_run=restart'))
  assert p.returncode == 0, p.stderr[-2000:]
  assert {step for step, kind in _tensorboard_events(workdir) if kind == 'summary'} == {2, 4, 6}
  assert len(os.listdir(workdir / rundir.TENSORBOARD)) == 1


def test_a_finished_run_is_not_replaced_or_relabelled_by_a_rerun_that_cannot_resume_it(tmp_path):
  """Its checkpoint folder emptied, or its length lowered below its last checkpoint: a rerun
  refuses in one line and leaves results, metrics and config as they were; `restart` starts
  over."""
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(num_train_steps=4, checkpoint_every_steps=2), workdir,
                          devices=jax.devices()[:1])
  names = (rundir.RESULTS_FILE, rundir.METRICS_FILE, rundir.CONFIG_FILE)
  before = {name: open(os.path.join(workdir, name), 'rb').read() for name in names}
  with pytest.raises(ConfigError) as e:
    loop.train_and_evaluate(tiny_config(num_train_steps=2, checkpoint_every_steps=2), workdir,
                            devices=jax.devices()[:1])
  assert 'at step 4, past the end of this run (2 steps)' in str(e.value)
  assert '\n' not in str(e.value)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  with pytest.raises(WorkdirError) as e:
    loop.train_and_evaluate(tiny_config(num_train_steps=4, checkpoint_every_steps=2), workdir,
                            devices=jax.devices()[:1])
  assert 'results of a finished run' in str(e.value) and 'on_existing_run=restart' in str(e.value)
  for name, content in before.items():
    assert open(os.path.join(workdir, name), 'rb').read() == content, name
  again = loop.train_and_evaluate(
      tiny_config(num_train_steps=2, checkpoint_every_steps=2, on_existing_run='restart'),
      workdir, devices=jax.devices()[:1])
  assert again['steps'] == 2 and rundir.read_results(workdir)['steps'] == 2


def test_run_folder_files_are_replaced_whole_and_failures_are_one_line(tmp_path, monkeypatch):
  """A full disk while config.json, metrics.jsonl or results.json is rewritten leaves the old
  file whole and is one line naming the file; a damaged JSON file is one line too, and so is a
  metrics log that cannot be appended to."""
  import errno
  from resnet_flax.train.metrics_log import MetricsLog
  workdir = str(tmp_path)
  rundir.write_results(workdir, {'eval_top1': 0.5})
  with open(os.path.join(workdir, rundir.METRICS_FILE), 'w') as f:
    f.write('{"step": 1, "train_loss": 2.0}\n{"step": 2, "train_loss": 1.0}\n')
  before = {n: open(os.path.join(workdir, n)).read()
            for n in (rundir.RESULTS_FILE, rundir.METRICS_FILE)}

  def full(*args):
    raise OSError(errno.ENOSPC, 'No space left on device')
  with monkeypatch.context() as patch:
    patch.setattr(os, 'replace', full)
    with pytest.raises(WorkdirError, match=r'cannot write .*results.json \(OSError: .*No space'):
      rundir.write_results(workdir, {'eval_top1': 0.9})
    with pytest.raises(WorkdirError, match=r'cannot write .*metrics.jsonl'):
      rundir.truncate_metrics(workdir, 1)
    with pytest.raises(WorkdirError, match=r'cannot write .*config.json'):
      rundir.write_config(workdir, tiny_config())
  for name, text in before.items():
    assert open(os.path.join(workdir, name)).read() == text, name
  assert sorted(os.listdir(workdir)) == [rundir.METRICS_FILE, rundir.RESULTS_FILE]  # no .tmp
  rundir.truncate_metrics(workdir, 1)
  assert [r['step'] for r in rundir.read_metrics(workdir)] == [1]
  with open(os.path.join(workdir, rundir.CONFIG_FILE), 'w') as f:
    f.write('{"model": {"depth"')                  # cut short
  with pytest.raises(WorkdirError, match=r'config.json cannot be read \(JSONDecodeError'):
    rundir.read_config(workdir)
  full_dir = tmp_path / 'full'                     # a metrics file on a full device
  full_dir.mkdir()
  os.symlink('/dev/full', full_dir / rundir.METRICS_FILE)
  log = MetricsLog(str(full_dir), tensorboard=False, progress_bar=False)
  with pytest.raises(WorkdirError, match=r'cannot write .*metrics.jsonl .*No space left.*'
                                         r'checkpoints saved so far are kept'):
    log.write(3, 0.1, {'train_loss': 1.0})
  log.close()


def test_a_run_with_its_checkpoints_elsewhere_is_found_by_its_workdir(tmp_path):
  workdir, elsewhere = str(tmp_path / 'run'), str(tmp_path / 'scratch' / 'ckpt')
  loop.train_and_evaluate(tiny_config(num_train_steps=2, checkpoint_dir=elsewhere), workdir,
                          devices=jax.devices()[:1])
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  assert rundir.resolve_checkpoint_path(workdir) == (elsewhere, None)
  step, _, _, config = pretrained.load_checkpoint(workdir)
  assert step == 2 and config['checkpoint_dir'] == elsewhere


def test_a_checkpoint_folder_belongs_to_one_run_folder(tmp_path):
  """Two workdirs naming one checkpoint_dir: the second took the first's checkpoints and
  results (or deleted them with restart). A copied run folder keeps using its own
  checkpoints; a rerun that drops its checkpoint_dir override would start over: refused."""
  shared, a, b = (str(tmp_path / n) for n in ('shared', 'a', 'b'))
  loop.train_and_evaluate(tiny_config(num_train_steps=2, checkpoint_dir=shared), a,
                          devices=jax.devices()[:1])
  metrics_a = open(os.path.join(a, rundir.METRICS_FILE)).read()
  for restart in ('resume', 'restart'):
    with pytest.raises(WorkdirError, match=rf'{shared} holds the checkpoints of the run in {a}: '
                                           r'give this run its own --config.checkpoint_dir'):
      loop.train_and_evaluate(tiny_config(num_train_steps=4, checkpoint_dir=shared,
                                          on_existing_run=restart), b,
                              devices=jax.devices()[:1])
  in_shared = lambda: sorted(int(n) for n in os.listdir(shared) if n.isdigit())  # noqa: E731
  assert in_shared() == [2] and not os.path.exists(os.path.join(b, rundir.RESULTS_FILE))
  with pytest.raises(WorkdirError, match=rf'{a}: its run keeps its checkpoints in {shared} '
                                         rf'\(config.json\), not in {a}/checkpoints: resume '
                                         rf'with --config.checkpoint_dir={shared}, or'):
    loop.train_and_evaluate(tiny_config(num_train_steps=4), a, devices=jax.devices()[:1])
  assert open(os.path.join(a, rundir.METRICS_FILE)).read() == metrics_a
  results = loop.train_and_evaluate(tiny_config(num_train_steps=4, checkpoint_dir=shared), a,
                                    devices=jax.devices()[:1])
  assert results['steps'] == 4 and in_shared() == [2, 4]
  # a run folder with its checkpoints inside, copied: the copy resumes from its own copy
  loop.train_and_evaluate(tiny_config(num_train_steps=2), b, devices=jax.devices()[:1])
  shutil.copytree(b, str(tmp_path / 'b2'))
  results = loop.train_and_evaluate(tiny_config(num_train_steps=4), str(tmp_path / 'b2'),
                                    devices=jax.devices()[:1])
  assert results['steps'] == 4 and saved_steps(b) == [2]
  assert saved_steps(str(tmp_path / 'b2')) == [2, 4]


def test_a_relative_checkpoint_dir_is_found_from_any_directory(tmp_path, monkeypatch):
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  monkeypatch.chdir(tmp_path / 'a')
  loop.train_and_evaluate(tiny_config(num_train_steps=2, checkpoint_dir='ckpt'), '../run',
                          devices=jax.devices()[:1])
  monkeypatch.chdir(tmp_path / 'b')
  assert rundir.resolve_checkpoint_path('../run') == (str(tmp_path / 'a' / 'ckpt'), None)
  assert pretrained.load_checkpoint('../run')[0] == 2


def test_relative_data_and_checkpoint_folders_are_saved_as_the_folders_they_name(
    tmp_path, monkeypatch):
  """config.json is read from other directories (evaluate, sweeps): a relative data.dir would
  name other data there. Paths from the home folder stay portable."""
  monkeypatch.chdir(tmp_path)
  for data_dir, checkpoints, saved_data, saved_checkpoints in (
      ('d.npz', 'ck', str(tmp_path / 'd.npz'), str(tmp_path / 'ck')),
      ('~/data/cifar', '~/ck', '~/data/cifar', '~/ck'), ('', '', '', '')):
    rundir.write_config(str(tmp_path), tiny_config(**{'data.dir': data_dir,
                                                      'checkpoint_dir': checkpoints}))
    saved = rundir.read_config(str(tmp_path))
    assert (saved['data']['dir'], saved['checkpoint_dir']) == (saved_data, saved_checkpoints)


def test_results_of_a_resumed_run_count_every_segment(tmp_path):
  workdir = str(tmp_path / 'run')
  part = loop.train_and_evaluate(tiny_config(num_train_steps=4, checkpoint_every_steps=2),
                                 workdir, devices=jax.devices()[:1])
  whole = loop.train_and_evaluate(tiny_config(num_train_steps=8, checkpoint_every_steps=2),
                                  workdir, devices=jax.devices()[:1])
  assert whole['steps'] == 8 and whole['train_time_s'] > part['train_time_s']


def test_results_json_is_strict_json(tmp_path):
  rundir.write_results(str(tmp_path), {'eval_loss': float('nan'), 'x': [1.0, float('inf')]})
  text = open(tmp_path / rundir.RESULTS_FILE).read()

  def refuse(constant):
    raise ValueError(f'{constant} is not JSON')
  assert json.loads(text, parse_constant=refuse) == {'eval_loss': None, 'x': [1.0, None]}


def test_a_workdir_that_is_a_file_fails_before_any_set_up(tmp_path, monkeypatch):
  from resnet_flax import data
  monkeypatch.setattr(data, 'load_datasets', lambda *a: pytest.fail('data loaded first'))
  (tmp_path / 'file').write_text('x')
  with pytest.raises(WorkdirError, match='is a file, not a folder'):
    loop.train_and_evaluate(tiny_config(), str(tmp_path / 'file'), devices=jax.devices()[:1])


def _with_file_size_limit(limit, cmd):
  """`cmd` in a process whose files cannot grow beyond `limit` bytes: a write beyond it fails
  (EFBIG), as on a full disk. The limit is set by a small launcher that then execs `cmd`."""
  launcher = ('import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
              f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); '
              'os.execv(sys.argv[1], sys.argv[1:])')
  return [sys.executable, '-c', launcher, *cmd]


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_stops_the_run_in_one_line(tmp_path):
  """Files are capped at 20 kB (as a full disk does, a checkpoint write fails in orbax's
  background threads): one line on stderr naming the failed checkpoint and where training
  stopped (the next log step or save at the latest), the tracebacks in errors.log."""
  config = tmp_path / 'tiny.py'
  config.write_text(config_text('memory', tmp_path))
  workdir = tmp_path / 'run'
  p = run_command(_with_file_size_limit(20_000, train_cmd(
      config, workdir, '--config.checkpoint_every_steps=10', '--config.log_every_steps=1',
      '--config.eval_every_steps=100')),
      # the capped process must not write (truncated) entries into the shared compilation cache
      JAX_ENABLE_COMPILATION_CACHE='false')
  lines = [line for line in p.stderr.splitlines() if line.strip()]
  assert p.returncode == 2 and len(lines) <= 2, p.stderr[-3000:]
  assert lines[-1].startswith(f'checkpoint error: cannot write checkpoint 10 to '
                              f'{workdir / "checkpoints"}')
  assert f'full traceback in {workdir / "errors.log"}' in lines[-1]
  stopped = int(lines[-1].split('training stopped at step ')[1].split(',')[0])
  assert lines[-1].endswith(f'training stopped at step {stopped}, no checkpoint is complete')
  assert 'Traceback' in open(workdir / 'errors.log').read()
  trained = [e['step'] for e in metrics_events(workdir) if 'train_loss' in e]
  assert 10 < stopped <= 20 and max(trained) <= stopped    # at the latest at the next save
  assert saved_steps(workdir) == []


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('eval') / 'run'
  loop.train_and_evaluate(tiny_config(num_train_steps=4, checkpoint_every_steps=2,
                                      eval_every_steps=4), str(workdir),
                          devices=jax.devices()[:1])
  return workdir


def _corrupt(workdir, step):
  for root, _, files in os.walk(workdir / 'checkpoints' / str(step) / 'state'):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')


@pytest.mark.slow
def test_evaluate_skips_an_unreadable_latest_checkpoint(finished_run, tmp_path):
  import shutil
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)
  _corrupt(workdir, 4)
  p = run_command([sys.executable, os.path.join(REPO, 'scripts', 'evaluate.py'), '--workdir',
                   str(workdir)])
  assert p.returncode == 0, p.stderr[-3000:]
  warnings = [line for line in p.stdout.splitlines() + p.stderr.splitlines()
              if line.startswith('warning: checkpoint 4')]
  assert len(warnings) == 1 and 'skipped, using the previous one' in warnings[0]
  assert 'checkpoint 2, split test: top-1' in p.stdout
  assert os.path.isdir(workdir / 'checkpoints' / '4')   # evaluation moves nothing
  p = run_command([sys.executable, os.path.join(REPO, 'scripts', 'evaluate.py'), '--workdir',
                   str(workdir), '--checkpoint', '4'])
  assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(
      'checkpoint error: ') and 'checkpoint 4 cannot be read' in p.stderr


@pytest.mark.slow
def test_evaluate_prints_its_metrics_when_it_cannot_write_them(finished_run):
  (finished_run / 'eval_4.json').mkdir()    # the file it writes cannot be created
  p = run_command([sys.executable, os.path.join(REPO, 'scripts', 'evaluate.py'), '--workdir',
                   str(finished_run)])
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'checkpoint 4, split test: top-1' in p.stdout
  err = [line for line in p.stderr.splitlines() if line.strip()]
  assert len(err) == 1 and err[0].startswith('warning: cannot write ') and 'eval_4.json' in err[0]


def test_startup_noise_is_kept_out_of_the_output(tmp_path):
  config = tmp_path / 'tiny.py'
  config.write_text(config_text('memory', tmp_path))
  p = run_command(train_cmd(config, tmp_path / 'run', '--config.num_train_steps=6'))
  assert p.returncode == 0, p.stderr[-2000:]
  assert 'Unable to initialize backend' not in p.stdout + p.stderr
  assert np.isfinite(json.load(open(tmp_path / 'run' / 'results.json'))['eval_loss'])


def test_checkpoint_errors_do_not_call_themselves_config_errors(tmp_path):
  bad = tmp_path / 'file.txt'
  bad.write_text('x')
  with pytest.raises(CheckpointError) as e:
    loop.train_and_evaluate(tiny_config(checkpoint_dir=str(bad / 'ckpt')), str(tmp_path / 'r'),
                            devices=jax.devices()[:1])
  assert e.value.kind == 'checkpoint error'
