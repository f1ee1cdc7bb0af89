"""Sweeps and plots: expansion and naming, dry runs, skipping finished and resuming interrupted
points, the results table of two real tiny runs, and the curves / error-against-depth figures."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO, config_text, saved_steps, subprocess_env, wait_for
from resnet_flax import rundir
from resnet_flax.errors import SweepError
from resnet_flax.experiments import plotting, sweep


def test_axes_expand_in_order_and_points_are_named_by_their_overrides():
  axes = [sweep.parse_axis('model.depth=20,32,56'), sweep.parse_axis('config.model.version=v1,v2')]
  assert axes == [('model.depth', ['20', '32', '56']), ('model.version', ['v1', 'v2'])]
  points = sweep.expand(axes)
  assert len(points) == 6
  assert [sweep.point_name(p) for p in points] == [
      'depth=20,version=v1', 'depth=20,version=v2', 'depth=32,version=v1',
      'depth=32,version=v2', 'depth=56,version=v1', 'depth=56,version=v2']
  # clashing last parts keep the full path; unsafe characters are replaced
  point = {'model.name': 'resnet20', 'data.name': 'cifar10/3.0.2'}
  assert sweep.point_name(point) == 'model.name=resnet20,data.name=cifar10_3.0.2'


@pytest.mark.parametrize('text, message', [
    ('model.depth', 'expected FIELD=V1,V2'),
    ('model.dept=20,32', "no field 'model.dept'"),
    ('model.depth=20,,32', 'empty value'),
    ('model.depth=20,20', 'repeated'),
])
def test_bad_sweep_arguments_name_the_problem(text, message):
  with pytest.raises(SweepError, match=message):
    sweep.parse_axis(text)


def test_extra_override_of_a_swept_field_is_refused():
  with pytest.raises(SweepError, match='this field is swept'):
    sweep.train_command('c.py', 'w', {'model.depth': '20'}, ['--config.model.depth=32'])


def test_dry_run_prints_one_train_command_per_point(tmp_path):
  config = tmp_path / 'c.py'
  config.write_text('')
  lines = []
  axes = [sweep.parse_axis('model.depth=8,14'), sweep.parse_axis('model.residual=true,false')]
  assert sweep.run_sweep(str(config), str(tmp_path / 's'), axes, ['--config.seed=3'],
                         dry_run=True, log=lines.append) == 0
  assert len(lines) == 4 and not (tmp_path / 's').exists()
  for line, (depth, residual) in zip(lines, [(8, 'true'), (8, 'false'), (14, 'true'),
                                             (14, 'false')]):
    assert line.endswith(f'--config.model.depth={depth} --config.model.residual={residual} '
                         '--config.seed=3')
    assert f'depth={depth},residual={residual}' in line and '-m resnet_flax train' in line


def _script(name, *args, cwd=REPO):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', name), *args],
                        capture_output=True, text=True, cwd=cwd, env=subprocess_env())


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  """Two real tiny runs (ResNet-8, plain and residual) through scripts/sweep.py."""
  root = tmp_path_factory.mktemp('sweep')
  config = root / 'tiny.py'
  config.write_text(config_text('memory', str(root)))
  sweep_dir = root / 'runs'
  args = ['--config', str(config), '--workdir', str(sweep_dir),
          '--sweep', 'model.residual=true,false', '--config.num_train_steps=8',
          '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4']
  result = _script('sweep.py', *args)
  assert result.returncode == 0, result.stderr[-3000:]
  return config, sweep_dir, args, result


def _rows(sweep_dir):
  with open(sweep_dir / 'results.csv') as f:
    return list(csv.DictReader(f))


def test_results_table_of_two_tiny_runs(tiny_sweep):
  _, sweep_dir, _, result = tiny_sweep
  assert '2 of 2 points finished' in result.stdout
  rows = _rows(sweep_dir)
  assert [r['model.residual'] for r in rows] == ['true', 'false']
  for row in rows:
    workdir = sweep_dir / f'residual={row["model.residual"]}'
    results = json.loads((workdir / 'results.json').read_text())
    evals = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()
             if 'eval_top1' in line]
    assert [e['step'] for e in evals] == [4, 8]
    assert row['status'] == 'finished' and int(row['steps']) == 8
    assert int(row['params']) == results['num_params']
    assert float(row['top1_error']) == round(100 * (1 - results['eval_top1']), 2)
    assert float(row['top5_error']) == round(100 * (1 - results['eval_top5']), 2)
    best = max(e['eval_top1'] for e in evals)
    assert float(row['best_top1_error']) == round(100 * (1 - best), 2)
    assert float(row['wall_time_s']) > 0 and float(row['images_per_sec']) > 0
  # plain and residual ResNet-8 of the same width: same parameter count (option A shortcuts)
  assert rows[0]['params'] == rows[1]['params']
  table = (sweep_dir / 'results.md').read_text().splitlines()
  assert table[0].startswith('| model.residual | status | params | top-1 err %')
  assert len(table) == 4 and table[2].startswith('| true | finished |')


def test_finished_points_are_skipped_and_interrupted_ones_resume(tiny_sweep):
  _, sweep_dir, args, _ = tiny_sweep
  plain = sweep_dir / 'residual=false'
  before = _rows(sweep_dir)
  metrics_before = (plain / 'metrics.jsonl').read_text()
  # an interrupted point: its last checkpoint and results are gone, earlier checkpoints remain
  os.remove(plain / 'results.json')
  shutil.rmtree(plain / 'checkpoints' / '8')
  result = _script('sweep.py', *args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'residual=true: finished, skipped' in result.stdout
  assert 'residual=false: resuming' in result.stdout
  assert 'resuming from checkpoint 4' in result.stdout
  after = _rows(sweep_dir)
  assert after[0] == before[0]                       # the skipped point is untouched
  # the resumed point ends where the uninterrupted one did, with the same logged metrics
  assert after[1]['top1_error'] == before[1]['top1_error']
  assert after[1]['train_loss'] == before[1]['train_loss']
  assert float(after[1]['wall_time_s']) > float(before[1]['wall_time_s'])   # time adds up
  strip = lambda text: [{k: v for k, v in json.loads(line).items()
                         if k not in ('images_per_sec', 'data_wait_fraction', 'train_time_s')}
                        for line in text.splitlines()]
  assert strip((plain / 'metrics.jsonl').read_text()) == strip(metrics_before)


def test_a_rerun_with_other_arguments_or_a_shared_checkpoint_folder_is_refused(tiny_sweep):
  """The same sweep folder with another run length, or an edited config file: refused in one
  line naming the difference, before anything runs, so the table never mixes two recipes; a
  checkpoint_dir shared by every point is refused too. Nothing in the folder changes."""
  _, sweep_dir, args, _ = tiny_sweep
  table = (sweep_dir / 'results.md').read_text()
  longer = [a.replace('num_train_steps=8', 'num_train_steps=12') for a in args]
  result = _script('sweep.py', *longer)
  assert result.returncode == 2, result.stderr[-2000:]
  error = result.stderr.strip().splitlines()[-1]
  assert 'was run with other arguments (--config.num_train_steps=8 then, ' \
         '--config.num_train_steps=12 now)' in error, error
  assert 'starting' not in result.stdout and 'resuming' not in result.stdout
  shared = _script('sweep.py', *args, f'--config.checkpoint_dir={sweep_dir / "shared"}')
  assert shared.returncode == 2 and 'would share that folder' in shared.stderr
  assert not (sweep_dir / 'shared').exists()
  assert (sweep_dir / 'results.md').read_text() == table
  # the same arguments, the config file edited since (its learning rate): refused as well
  config_path = tiny_sweep[0]
  original = config_path.read_text()
  try:
    config_path.write_text(original.replace('base_lr = 0.1', 'base_lr = 0.01'))
    edited = _script('sweep.py', *args)
  finally:
    config_path.write_text(original)
  assert edited.returncode == 2, edited.stderr[-2000:]
  error = edited.stderr.strip().splitlines()[-1]
  assert 'was trained with another config (schedule.base_lr (0.1 -> 0.01); the config file ' \
         'or the arguments changed since)' in error, error
  assert (sweep_dir / 'results.md').read_text() == table
  # the same arguments, the sweep folder spelled another way: the same points, all finished
  respelled = [os.path.join(a, '.') if a == str(sweep_dir) else a for a in args]
  same = _script('sweep.py', *respelled)
  assert same.returncode == 0 and same.stdout.count('finished, skipped') == 2, same.stderr


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_at_a_checkpoint_and_the_same_command_resumes(tmp_path):
  """Ctrl-C in a terminal signals the whole foreground process group: the point's training must
  still stop at a checkpoint (not die mid-step), be recorded as stopped rather than failed, and
  resume when the same command runs again."""
  config = tmp_path / 'tiny.py'
  config.write_text(config_text('memory', str(tmp_path)))
  sweep_dir = tmp_path / 'runs'
  point = sweep_dir / 'residual=true'
  args = ['--config', str(config), '--workdir', str(sweep_dir), '--sweep', 'model.residual=true',
          '--config.num_train_steps=3000', '--config.checkpoint_every_steps=100',
          '--config.eval_every_steps=3000', '--config.log_every_steps=100']
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                          env=subprocess_env(), start_new_session=True)
  try:
    assert wait_for(proc, lambda: saved_steps(point)), proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 130, err[-2000:]
  assert 'Traceback' not in err and 'SIGTERM: saved checkpoint' in out, (out[-1000:], err[-1000:])
  record = json.loads((point / 'sweep_point.json').read_text())
  assert record['exit_code'] == 0 and 'error' not in record
  stopped_at = max(saved_steps(point))
  assert stopped_at < 3000 and not (point / 'results.json').exists()
  again = _script('sweep.py', *args)
  assert again.returncode == 0, again.stderr[-2000:]
  assert f'resuming from checkpoint {stopped_at} ' in again.stdout


def test_plot_script_draws_one_line_per_run_and_split(tiny_sweep, tmp_path):
  _, sweep_dir, _, _ = tiny_sweep
  runs = plotting.load_runs([str(sweep_dir)])
  assert [r.label for r in runs] == ['residual=False', 'residual=True']
  fig, data = plotting.curves_figure(runs)
  # per run: train and eval lines in each panel
  assert [len(data[p]) for p in ('loss', 'top1_error')] == [4, 4]
  assert [len(ax.get_lines()) for ax in fig.axes] == [4, 4]
  eval_line = next(d for d in data['top1_error'] if d[0] == 'residual=True (eval)')
  metrics = rundir.read_metrics(str(sweep_dir / 'residual=true'))
  assert eval_line[2] == [100 * (1 - m['eval_top1']) for m in metrics if 'eval_top1' in m]
  assert plotting.depth_figure(runs) == (None, {})   # one depth: no depth figure

  out = tmp_path / 'fig' / 'curves.png'
  result = _script('plot.py', str(sweep_dir), '--out', str(out))
  assert result.returncode == 0, result.stderr
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and out.stat().st_size > 10_000
  assert not (tmp_path / 'fig' / 'curves_vs_depth.png').exists()


def _fake_run(path, depth, version, errors, finished=True):
  os.makedirs(path)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump({'model': {'depth': depth, 'version': version}, 'seed': 0}, f)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for epoch, error in enumerate(errors, 1):
      f.write(json.dumps({'step': epoch, 'epoch': epoch, 'train_top1': 1 - error / 50,
                          'train_loss': 1.0}) + '\n')
      f.write(json.dumps({'step': epoch, 'epoch': epoch, 'eval_top1': 1 - error / 100,
                          'eval_loss': 1.0}) + '\n')
  if finished:
    rundir.write_results(path, {'eval_top1': 1 - errors[-1] / 100, 'steps': len(errors)})


def test_depth_figure_has_one_line_per_group_and_the_final_errors(tmp_path):
  """Two directories (as two sweeps) merge; --select keeps one version."""
  for depth, v1, v2 in ((20, 30, 31), (32, 25, 24), (56, 20, 22)):
    _fake_run(str(tmp_path / 'a' / f'depth={depth},version=v1'), depth, 'v1', [50, v1])
    _fake_run(str(tmp_path / 'b' / f'depth={depth},version=v2'), depth, 'v2', [50, v2])
  # a point stopped half-way (no results.json) has no final error: not a point of the figure
  _fake_run(str(tmp_path / 'a' / 'depth=110,version=v1'), 110, 'v1', [50, 45], finished=False)
  runs = plotting.load_runs([str(tmp_path / 'a'), str(tmp_path / 'b')])
  fig, data = plotting.depth_figure(runs)
  assert len(fig.axes[0].get_lines()) == 4
  assert data['version=v1 (eval)'] == [(20, pytest.approx(30)), (32, pytest.approx(25)),
                                       (56, pytest.approx(20))]
  assert data['version=v2 (train)'] == [(20, pytest.approx(62)), (32, pytest.approx(48)),
                                        (56, pytest.approx(44))]
  only_v2 = plotting.load_runs([str(tmp_path / 'a'), str(tmp_path / 'b')], ['version=v2'])
  assert [r.label for r in only_v2] == ['depth=20', 'depth=32', 'depth=56']
  _, data = plotting.depth_figure(only_v2)   # one group: its lines are named by the split
  assert sorted(data) == ['eval', 'train'] and data['eval'][0] == (20, pytest.approx(31))
  result = _script('plot.py', str(tmp_path / 'a'), str(tmp_path / 'b'), '--out',
                   str(tmp_path / 'all.png'))
  assert result.returncode == 0, result.stderr
  assert (tmp_path / 'all_vs_depth.png').stat().st_size > 10_000
  result = _script('plot.py', str(tmp_path / 'nothing'))
  assert result.returncode == 2 and 'no such directory' in result.stderr
  (tmp_path / 'a-file').write_text('')
  result = _script('plot.py', str(tmp_path / 'a'), '--out', str(tmp_path / 'a-file' / 'x.png'))
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'cannot write the figure ' in result.stderr.strip().splitlines()[-1]
  result = _script('plot.py', str(tmp_path / 'a'), '--out', str(tmp_path / 'x.svgz2'))
  assert result.returncode == 2 and result.stderr.count('\n') == 1, result.stderr[-2000:]
  assert 'matplotlib cannot write .svgz2 figures; use one of' in result.stderr
  result = _script('plot.py', str(tmp_path / 'a'), '--out', str(tmp_path / 'bare'))
  assert result.returncode == 0 and f'curves: {tmp_path / "bare.png"}' in result.stdout
  assert (tmp_path / 'bare.png').is_file()
  result = _script('sweep.py', '--config', 'cifar10', '--workdir', str(tmp_path / 'a-file'),
                   '--sweep', 'model.depth=20,32')
  assert result.returncode == 2 and 'cannot be made a folder' in result.stderr, result.stderr


def test_runs_with_the_same_compared_fields_are_told_apart_by_their_folders(tmp_path):
  for name, version in (('trained', 'v1'), ('random', 'v1'), ('other', 'v2')):
    _fake_run(str(tmp_path / name), 20, version, [50, 40])
  runs = plotting.load_runs([str(tmp_path / n) for n in ('trained', 'random', 'other')])
  assert [r.label for r in runs] == ['version=v1, trained', 'version=v1, random', 'version=v2']


def test_curves_against_wall_time_use_the_eval_records_times(tmp_path):
  _fake_run(str(tmp_path / 'run'), 20, 'v1', [50, 30, 20])
  path = tmp_path / 'run' / 'metrics.jsonl'
  records = [json.loads(line) for line in path.read_text().splitlines()]
  for r in records:
    if 'eval_top1' in r:
      r['train_time_s'] = 120.0 * r['epoch']
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  fig, data = plotting.curves_figure(plotting.load_runs([str(tmp_path / 'run')]), x='time')
  assert [label for label, _, _ in data['top1_error']] == ['run (eval)']   # train: no times
  _, xs, ys = data['top1_error'][0]
  assert xs == [2.0, 4.0, 6.0] and ys == [pytest.approx(50), pytest.approx(30),
                                          pytest.approx(20)]
  assert fig.axes[1].get_xlabel() == "the run's wall time (minutes)"
  result = _script('plot.py', str(tmp_path / 'run'), '--x', 'hours')
  assert result.returncode == 2 and "x axis 'hours': expected one of epoch, time" in result.stderr


def test_train_figures_and_tables_average_the_last_epoch_not_the_last_window(tmp_path):
  """A window also closes at every evaluation, so a run's last window can hold one step: the
  train error of the depth figure and the train loss of the table are the last epoch's means,
  each window weighted by its steps."""
  metrics = [  # 10 steps an epoch; windows of 4, 4, 2 steps, an eval, then 4, 4, 1, 1
      {'step': 4, 'epoch': 0.4, 'train_loss': 2.0, 'train_top1': 0.1},
      {'step': 8, 'epoch': 0.8, 'train_loss': 2.0, 'train_top1': 0.1},
      {'step': 10, 'epoch': 1.0, 'train_loss': 2.0, 'train_top1': 0.1},
      {'step': 10, 'epoch': 1.0, 'eval_top1': 0.2, 'eval_loss': 1.9},
      {'step': 14, 'epoch': 1.4, 'train_loss': 1.0, 'train_top1': 0.5},
      {'step': 18, 'epoch': 1.8, 'train_loss': 1.0, 'train_top1': 0.5},
      {'step': 19, 'epoch': 1.9, 'train_loss': 1.0, 'train_top1': 0.5},
      {'step': 20, 'epoch': 2.0, 'train_loss': 3.0, 'train_top1': 1.0},   # one noisy step
      {'step': 20, 'epoch': 2.0, 'eval_top1': 0.4, 'eval_loss': 1.5},
  ]
  last = sweep.last_epoch_train(metrics)
  assert last['train_loss'] == pytest.approx((9 * 1.0 + 3.0) / 10)
  assert last['train_top1'] == pytest.approx((9 * 0.5 + 1.0) / 10)
  assert sweep.last_epoch_train([{'step': 0, 'epoch': 0.0, 'eval_top1': 0.1}]) == {}
  run = tmp_path / 'depth=20'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps({'model': {'depth': 20}}))
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(m) + '\n' for m in metrics))
  (run / 'results.json').write_text(json.dumps({'eval_top1': 0.4, 'steps': 20}))
  record = plotting.load_runs([str(run)])[0]
  assert plotting.final_error(record, 'train') == pytest.approx(100 * (1 - 0.55))
  assert plotting.final_error(record, 'eval') == pytest.approx(60.0)
  row = sweep.point_row(str(run), {'model.depth': '20'})
  assert row['train_loss'] == 1.2 and row['train_error'] == 45.0


def test_a_depth_axis_over_fixed_stage_sizes_is_refused(tmp_path):
  """model.stage_sizes fixes the units whatever the depth: every point would train one network
  (and the log named it by the swept depth)."""
  from resnet_flax.models.registry import describe
  from resnet_flax.experiments.sweep import check_point_config
  from resnet_flax.errors import SweepError
  from resnet_flax.config import base_config
  config = base_config()
  config.model.stage_sizes = (1, 1, 1)
  config.model.depth = 56
  assert describe(config.model) == 'resnet20 with depth=56, stage_sizes=(1, 1, 1)'
  with pytest.raises(SweepError, match=r'--sweep model.depth with model.stage_sizes=\(1, 1, 1\)'):
    check_point_config(config, {'model.depth': '56'})
  check_point_config(config, {'model.depth': '56', 'model.stage_sizes': '(1,1,1)'})
