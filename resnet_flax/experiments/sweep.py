"""Sweeps: the cartesian product of config overrides, one training run per point.

`--sweep model.depth=20,32,56 --sweep model.version=v1,v2` expands to six points in the order
given (the last axis varies fastest). Each point trains in its own sub-workdir named after its
overrides (`depth=20,version=v1`; the full field path where the last parts would clash), through
`scripts/train.py` in a subprocess, so a crashed point does not take the sweep down and every
point starts from a clean JAX. A point is finished when its `results.json` exists (the trainer
writes it last); an interrupted point resumes from its checkpoints when the sweep runs again.
A point's folder (`sweep_point`) records the train arguments it ran with: a sweep run again with
other arguments for a point already run (another `--config.num_epochs`, another config file),
or with a config that computes something else than the point's `config.json` (the file was
edited), is refused before anything runs, so that one table never mixes two recipes. Points
share no checkpoint folder (a `checkpoint_dir` that is not swept is refused), and a depth axis
needs the stage sizes to follow the depth.

`collect` reads every point's `results.json` and `metrics.jsonl` into rows; `write_tables`
writes `results.csv` and `results.md` in the sweep directory.
"""

import csv
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

from resnet_flax import config as config_lib
from resnet_flax import rundir
from resnet_flax.experiments.sweep_point import (check_same_args, check_same_recipe,
                                                  point_status, read_point_file,
                                                  record_failure, write_point_file)
from resnet_flax.errors import SweepError, UserError

TRAIN_COMMAND = ('-m', 'resnet_flax', 'train')   # after the interpreter: the train command


def parse_axis(text: str) -> tuple[str, list[str]]:
  """'model.depth=20,32' -> ('model.depth', ['20', '32']); checks the field exists."""
  if '=' not in text:
    raise SweepError(f'--sweep {text!r}: expected FIELD=V1,V2,... (e.g. model.depth=20,32,56)')
  field, values = text.split('=', 1)
  field = field.strip()
  if field.startswith('config.'):
    field = field[len('config.'):]
  node = config_lib.base_config()
  for part in field.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      raise SweepError(f'--sweep {text!r}: config has no field {field!r}')
    node = node[part]
  items = [v.strip() for v in values.split(',')]
  if not items or any(not v for v in items):
    raise SweepError(f'--sweep {text!r}: empty value in the list {values!r}')
  if len(set(items)) != len(items):
    raise SweepError(f'--sweep {text!r}: a value is repeated')
  return field, items


def expand(axes: Sequence[tuple[str, list[str]]]) -> list[dict[str, str]]:
  """The cartesian product of the axes, as {field: value} dicts in axis order."""
  fields = [f for f, _ in axes]
  if len(set(fields)) != len(fields):
    raise SweepError(f'a field is swept twice: {", ".join(fields)}')
  return [dict(zip(fields, combo)) for combo in itertools.product(*(v for _, v in axes))]


def _short_names(fields: Sequence[str]) -> dict[str, str]:
  """Each field's last path part, or the full path where last parts clash."""
  last = [f.rsplit('.', 1)[-1] for f in fields]
  return {f: (s if last.count(s) == 1 else f) for f, s in zip(fields, last)}


def point_name(point: dict[str, str]) -> str:
  """The sub-workdir name of a point: 'depth=20,version=v1'."""
  short = _short_names(list(point))
  parts = []
  for field, value in point.items():
    safe = re.sub(r'[^A-Za-z0-9._+\-]', '_', value)
    parts.append(f'{short[field]}={safe}')
  return ','.join(parts)


def train_args(config_path: str, workdir: str, point: dict[str, str],
               extra: Sequence[str] = ()) -> list[str]:
  """The train command's arguments of a point; `extra` overrides come after the point's own (so
  `--config.X` passed to the sweep applies to every point, but cannot undo a swept field)."""
  swept = {f'--config.{f}' for f in point}
  for arg in extra:
    if arg.split('=', 1)[0] in swept:
      raise SweepError(f'{arg}: this field is swept; remove it or drop the --sweep axis')
  return (['--config', config_path, '--workdir', workdir]
          + [f'--config.{f}={v}' for f, v in point.items()] + list(extra))


def train_command(config_path: str, workdir: str, point: dict[str, str],
                  extra: Sequence[str] = (), python: str = sys.executable) -> list[str]:
  """The whole command line of a point's training."""
  return [python, *TRAIN_COMMAND, *train_args(config_path, workdir, point, extra)]


def _relay(stream, last_line: list) -> None:
  """Copies the child's stderr to ours, keeping its last non-empty line (the one-line error)."""
  for line in iter(stream.readline, ''):
    sys.stderr.write(line)
    sys.stderr.flush()
    if line.strip():
      last_line[:] = [line.strip()]
  stream.close()


def run_point(command: list[str], workdir: str, point: dict[str, str], *,
              log=print) -> int:
  """Runs one point's training in a subprocess; returns its exit code. SIGINT/SIGTERM to the
  sweep are passed on as SIGTERM, so the point saves a checkpoint and can be resumed."""
  record = read_point_file(workdir)
  record.update({'point': point, 'command': shlex.join(command),
                 'args': list(command[1 + len(TRAIN_COMMAND):])})
  record.pop('error', None)
  write_point_file(workdir, record)
  start = time.time()
  # in a session of its own: a Ctrl-C in the terminal reaches the sweep only, which passes it on
  # as SIGTERM (the point checkpoints), not the child as well (a KeyboardInterrupt mid-step)
  child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, bufsize=1,
                           start_new_session=True)
  last_line = []
  relay = threading.Thread(target=_relay, args=(child.stderr, last_line), daemon=True)
  relay.start()
  forwarded = {}

  def forward(signum, frame):
    forwarded['signal'] = signum
    child.send_signal(signal.SIGTERM)

  # the child runs in a session of its own: what would have reached it reaches it from here
  old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
  try:
    code = child.wait()
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
  relay.join(timeout=10)
  record['wall_time_s'] = round(record.get('wall_time_s', 0.0) + time.time() - start, 1)
  record['exit_code'] = code
  if code != 0:
    record['error'] = last_line[-1] if last_line else f'exit code {code}'
  write_point_file(workdir, record)
  if forwarded:
    log(f'sweep: stopped by signal {forwarded["signal"]}; run the same command to resume')
    raise KeyboardInterrupt
  return code


def last_epoch_train(metrics: list) -> dict:
  """{'train_loss', 'train_top1'}: the means over the run's last epoch of logged training
  windows, each weighted by its steps ({} without any). The last window alone can be a few
  steps (a window also closes at every evaluation), too few to stand for the network."""
  trains = [m for m in metrics if m.get('train_loss') is not None and m.get('step')]
  if not trains:
    return {}
  last_epoch = trains[-1]['epoch']
  previous, weight, sums = 0, 0, {'train_loss': 0.0, 'train_top1': 0.0}
  for m in trains:
    steps, previous = m['step'] - previous, m['step']
    if m['epoch'] > last_epoch - 1 and steps > 0:
      weight += steps
      for key in sums:
        sums[key] += steps * m.get(key, float('nan'))
  return {key: value / weight for key, value in sums.items()}


def _error(top1) -> Optional[float]:
  return None if top1 is None else round(100.0 * (1.0 - top1), 2)


def point_row(workdir: str, point: dict[str, str]) -> dict:
  """One table row: the swept fields, then the run's numbers (errors in percent)."""
  row = dict(point)
  status = point_status(workdir)
  results = (rundir.read_results(workdir) or {}) if status == 'finished' else {}
  record = read_point_file(workdir)
  metrics = rundir.read_metrics(workdir)
  evals = [m for m in metrics if m.get('eval_top1') is not None]
  trains = [m for m in metrics if m.get('train_loss') is not None]
  best = max(evals, key=lambda m: m['eval_top1']) if evals else None
  last = last_epoch_train(metrics)
  row.update({
      'status': status,
      'params': results.get('num_params'),
      'top1_error': _error(results.get('eval_top1')),
      'top5_error': _error(results.get('eval_top5')),
      'best_top1_error': _error(best['eval_top1']) if best else None,
      'best_step': best['step'] if best else None,
      'train_loss': round(last['train_loss'], 4) if last else None,
      'train_error': _error(last.get('train_top1')),
      'steps': results.get('steps', trains[-1]['step'] if trains else None),
      'wall_time_s': record.get('wall_time_s'),
      'images_per_sec': (round(results['images_per_sec'], 1)
                         if results.get('images_per_sec') else None),
      'error': record.get('error') if status == 'failed' else None,
  })
  return row


def collect(sweep_dir: str, points: Optional[list[dict]] = None) -> list[dict]:
  """Rows for the given points, or for every sub-workdir with a point file (sorted by name)."""
  if points is None:
    points = []
    for name in sorted(os.listdir(sweep_dir)):
      record = read_point_file(os.path.join(sweep_dir, name))
      if record.get('point'):
        points.append(record['point'])
  return [point_row(os.path.join(sweep_dir, point_name(p)), p) for p in points]


COLUMN_TITLES = {
    'status': 'status', 'params': 'params', 'top1_error': 'top-1 err %',
    'top5_error': 'top-5 err %', 'best_top1_error': 'best top-1 err %', 'best_step': 'best at step',
    'train_loss': 'train loss (last epoch)', 'train_error': 'train err % (last epoch)',
    'steps': 'steps', 'wall_time_s': 'wall s',
    'images_per_sec': 'images/s', 'error': 'error',
}


def _cell(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
    return f'{value:,}'
  return str(value)


def write_tables(sweep_dir: str, rows: list[dict]) -> tuple[str, str]:
  """Writes results.csv (raw values) and results.md (a Markdown table); returns both paths."""
  if not rows:
    raise SweepError(f'{sweep_dir}: no sweep points found')
  columns = list(rows[0])
  csv_path = os.path.join(sweep_dir, 'results.csv')
  with open(csv_path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  md_path = os.path.join(sweep_dir, 'results.md')
  titles = [COLUMN_TITLES.get(c, c) for c in columns]
  lines = ['| ' + ' | '.join(titles) + ' |', '|' + '|'.join('---' for _ in columns) + '|']
  lines += ['| ' + ' | '.join(_cell(r[c]) for c in columns) + ' |' for r in rows]
  with open(md_path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return csv_path, md_path


def check_point_config(config, point: dict[str, str]) -> None:
  """SweepError for a point config whose checkpoint_dir every point would share (not swept), or
  whose model.stage_sizes makes a model.depth axis train one network at every point."""
  if (tuple(config.model.stage_sizes or ()) and 'model.depth' in point
      and 'model.stage_sizes' not in point):
    raise SweepError(f'--sweep model.depth with model.stage_sizes='
                     f'{tuple(config.model.stage_sizes)}: the units are those stage sizes at '
                     f'every depth; drop stage_sizes (--config.model.stage_sizes=()) or sweep it')
  if config.checkpoint_dir and 'checkpoint_dir' not in point:
    raise SweepError(f'checkpoint_dir={config.checkpoint_dir!r}: every point of the sweep would '
                     f'share that folder; drop it (--config.checkpoint_dir= , or leave it out '
                     f'of the config file): each point keeps its checkpoints in its own folder')


def run_sweep(config_path: str, sweep_dir: str, axes: Sequence[tuple[str, list[str]]],
              extra: Sequence[str] = (), *, dry_run: bool = False, log=print,
              python: str = sys.executable,
              check: Optional[Callable[[list[str]], Any]] = None) -> int:
  """Runs every unfinished point in order and writes the tables; returns the number of points
  that failed (0 when all finished). `check(train_args)`, when given, loads and validates a
  point's config before anything runs and returns it, or raises a UserError for one that cannot
  work: such a point is recorded as failed with that line, and the others run; a config whose
  checkpoint folder every point would share, or one that computes something else than a point
  already trained, stops the sweep (`check_point_config`, `check_same_recipe`).
  `dry_run` checks every point, prints one command per line, runs nothing, and returns the
  number of points that do not check."""
  if not os.path.isfile(config_path):
    raise SweepError(f'--config {config_path}: no such file')
  points = expand(axes)
  workdirs = [os.path.join(sweep_dir, point_name(p)) for p in points]
  args = [train_args(config_path, w, p, extra) for p, w in zip(points, workdirs)]
  problems, configs = {}, {}
  for point, workdir, point_args in zip(points, workdirs, args):
    try:
      config = check(point_args) if check is not None else None
    except UserError as e:
      problems[point_name(point)] = f'{e.kind}: {e}'
      continue
    if config is not None:
      check_point_config(config, point)
      configs[workdir] = config
  for workdir, point_args in zip(workdirs, args):
    check_same_args(workdir, point_args)
  for workdir, config in configs.items():
    check_same_recipe(workdir, config)
  if dry_run:
    for point, point_args in zip(points, args):
      log(shlex.join([python, *TRAIN_COMMAND, *point_args]))
    for name, problem in problems.items():
      log(f'sweep: point {name} cannot run: {problem}')
    return len(problems)
  try:
    os.makedirs(sweep_dir, exist_ok=True)
  except OSError as e:
    raise SweepError(f'--workdir {sweep_dir}: cannot be made a folder ({e.strerror}); pass a '
                     f'folder path') from None
  failed = 0
  for i, (point, workdir, point_args) in enumerate(zip(points, workdirs, args)):
    name = point_name(point)
    if name in problems:
      failed += 1
      record_failure(workdir, point, problems[name])
      log(f'sweep: [{i + 1}/{len(points)}] {name}: not run: {problems[name]}')
      continue
    status = point_status(workdir)
    if status == 'finished':
      log(f'sweep: [{i + 1}/{len(points)}] {name}: finished, skipped')
      continue
    log(f'sweep: [{i + 1}/{len(points)}] {name}: '
        f'{"starting" if status == "pending" else "resuming"}')
    code = run_point([python, *TRAIN_COMMAND, *point_args], workdir, point, log=log)
    if code != 0:
      failed += 1
      log(f'sweep: {name} failed (exit code {code}); see {workdir}')
    write_tables(sweep_dir, collect(sweep_dir, points))
  _, md_path = write_tables(sweep_dir, collect(sweep_dir, points))
  log(f'sweep: {len(points) - failed} of {len(points)} points finished; table in {md_path}')
  return failed
