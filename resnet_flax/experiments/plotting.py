"""Figures of finished or running training runs: curves against epoch and error against depth.

A run is a workdir with `metrics.jsonl` (and `config.json`); a sweep directory holds one run per
sub-folder. `load_runs` reads runs from any mix of both, labelled by the config fields that differ
between them (the swept fields, read from each run's `config.json`), so runs of two sweeps can
share a figure. `curves_figure` draws loss and top-1 error against epoch (or the run's wall
time), train dashed and eval solid, one colour per run; `depth_figure` draws the final error
against `model.depth`, one line per combination of the other differing fields (the
degradation figure when one of them is `model.residual`), from finished runs only (those with
a `results.json`: a run stopped half-way has no final error). Both return the figure and the
data behind every line.

Matplotlib is imported here only (with the Agg back end): training never needs it.
"""

import dataclasses
import os
from typing import Optional, Sequence

from resnet_flax import config as config_lib
from resnet_flax import rundir
from resnet_flax.errors import ConfigError, DependencyError, SweepError, WorkdirError, first_line
from resnet_flax.experiments.sweep import last_epoch_train


@dataclasses.dataclass
class RunRecord:
  workdir: str
  fields: dict            # flattened config ('model.depth' -> 20)
  metrics: list           # the metrics.jsonl records
  label: str = ''
  varying: dict = dataclasses.field(default_factory=dict)   # the fields that differ between runs
  results: Optional[dict] = None   # results.json: None while the run has not finished


def _read_run(workdir: str) -> Optional[RunRecord]:
  if not os.path.isfile(rundir.path(workdir, rundir.METRICS_FILE)):
    return None
  saved = rundir.read_config(workdir)
  fields = config_lib.flatten(saved) if saved else {}
  fields[rundir.FRAMEWORK_KEY] = rundir.framework_of(saved)   # a label when runs differ in it
  return RunRecord(workdir, fields, rundir.read_metrics(workdir),
                   results=rundir.read_results(workdir))


def _short(field: str) -> str:
  return field.split('.')[-1]


def load_runs(paths: Sequence[str], select: Sequence[str] = ()) -> list[RunRecord]:
  """The runs under `paths` (run or sweep directories), keeping those whose config matches
  every `select` item ('model.version=v1' or 'version=v1'), labelled by their differing fields."""
  runs = []
  for path in paths:
    if not os.path.isdir(path):
      raise SweepError(f'{path}: no such directory')
    run = _read_run(path)
    if run is not None:
      runs.append(run)
      continue
    found = [_read_run(os.path.join(path, name)) for name in sorted(os.listdir(path))
             if os.path.isdir(os.path.join(path, name))]
    found = [r for r in found if r is not None]
    if not found:
      raise SweepError(f'{path}: neither a run (metrics.jsonl) nor a sweep directory')
    runs.extend(found)
  for item in select:
    if '=' not in item:
      raise SweepError(f'--select {item!r}: expected FIELD=VALUE')
    field, value = item.split('=', 1)
    runs = [r for r in runs if any(
        (k == field or _short(k) == field) and str(v).lower() == value.lower()
        for k, v in r.fields.items())]
  if not runs:
    raise SweepError(f'no runs left in {", ".join(paths)} after --select {list(select)}')
  # fields every run has (a field added to the config later is not a difference)
  keys = sorted(set.intersection(*(set(r.fields) for r in runs)))
  ignore = {'checkpoint_dir', 'init_from'}
  varying = [k for k in keys if k not in ignore and
             len({repr(r.fields.get(k)) for r in runs}) > 1]
  # sweep-style axes first: depth, then the rest in name order
  varying.sort(key=lambda k: (k != 'model.depth', k))
  for r in runs:
    r.varying = {k: r.fields.get(k) for k in varying}
    r.label = ', '.join(f'{_short(k)}={r.fields.get(k)}' for k in varying)
  labels = [r.label for r in runs]
  for r in runs:   # runs told apart by no compared field (e.g. only init_from): their folders
    folder = os.path.basename(os.path.normpath(r.workdir))
    r.label = folder if not r.label else (
        f'{r.label}, {folder}' if labels.count(r.label) > 1 else r.label)
  return runs


X_AXES = {'epoch': ('epoch', 1.0, 'epoch'),
          'time': ('train_time_s', 1 / 60, "the run's wall time (minutes)")}


def _series(metrics: list, key: str, as_error: bool, x: str = 'epoch'):
  field, scale, _ = X_AXES[x]
  points = [(m[field] * scale, m[key]) for m in metrics
            if m.get(key) is not None and m.get(field) is not None]
  xs = [p[0] for p in points]
  ys = [100.0 * (1.0 - p[1]) if as_error else p[1] for p in points]
  return xs, ys


def pyplot():
  """matplotlib.pyplot on the Agg back end (files only, no display needed)."""
  try:
    import matplotlib
  except ImportError:
    raise DependencyError('matplotlib is not importable: pip install -r requirements.txt '
                          '(plots need it; training does not)') from None
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def curves_figure(runs: Sequence[RunRecord], title: str = '', x: str = 'epoch'):
  """(figure, data): loss and top-1 error % against `x`, 'epoch' or 'time' (the run's wall time
  in minutes, which only the eval records carry: `train_time_s`); data[panel] = [(label, xs,
  ys)]."""
  if x not in X_AXES:
    raise SweepError(f'x axis {x!r}: expected one of {", ".join(X_AXES)}')
  plt = pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  data = {'loss': [], 'top1_error': []}
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for i, run in enumerate(runs):
    color = colors[i % len(colors)]
    for ax, panel, key_base, as_error in ((axes[0], 'loss', 'loss', False),
                                          (axes[1], 'top1_error', 'top1', True)):
      for split, style in (('train', '--'), ('eval', '-')):
        xs, ys = _series(run.metrics, f'{split}_{key_base}', as_error, x)
        if xs:
          label = f'{run.label} ({split})'
          ax.plot(xs, ys, style, color=color, label=label, marker='o' if split == 'eval' else None,
                  markersize=3)
          data[panel].append((label, xs, ys))
  axes[0].set_ylabel('loss (train: as optimised; eval: cross-entropy)')
  axes[1].set_ylabel('top-1 error (%)')
  for ax in axes:
    ax.set_xlabel(X_AXES[x][2])
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, loc='upper right')
  fig.suptitle(title or 'train (dashed) and eval (solid)')
  fig.tight_layout()
  return fig, data


def final_error(run: RunRecord, split: str = 'eval') -> Optional[float]:
  """A finished run's final top-1 error %: its results' evaluation, or for 'train' the mean
  over the last epoch of training windows (`sweep.last_epoch_train`); None for a run that has
  not finished."""
  if run.results is None:
    return None
  if split == 'eval' and run.results.get('eval_top1') is not None:
    return 100.0 * (1.0 - run.results['eval_top1'])
  if split == 'train':
    top1 = last_epoch_train(run.metrics).get('train_top1')
    return None if top1 is None else 100.0 * (1.0 - top1)
  values = [m[f'{split}_top1'] for m in run.metrics if m.get(f'{split}_top1') is not None]
  return 100.0 * (1.0 - values[-1]) if values else None


def depth_figure(runs: Sequence[RunRecord], title: str = ''):
  """(figure, data) of the final eval (solid) and last epoch's train (dashed) top-1 error
  against model.depth, one line per combination of the other differing fields; None when
  fewer than two depths were run."""
  depths = {r.fields.get('model.depth') for r in runs}
  if len(depths) < 2 or None in depths:
    return None, {}
  plt = pyplot()
  groups: dict = {}
  for run in runs:
    key = ', '.join(f'{_short(k)}={v}' for k, v in run.varying.items() if k != 'model.depth')
    groups.setdefault(key, []).append(run)
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  data = {}
  for i, (key, members) in enumerate(sorted(groups.items())):
    members = sorted(members, key=lambda r: r.fields['model.depth'])
    for split, style in (('eval', '-'), ('train', '--')):
      points = [(r.fields['model.depth'], final_error(r, split)) for r in members]
      points = [p for p in points if p[1] is not None]
      if points:
        label = f'{key} ({split})' if key else split   # one group: the split alone
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker='o',
                color=colors[i % len(colors)], label=label)
        data[label] = points
  ax.set_xlabel('depth (layers)')
  ax.set_ylabel('final top-1 error (%)')
  ax.set_xticks(sorted(depths))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title or 'error against depth: eval (solid), train, last epoch (dashed)')
  fig.tight_layout()
  return fig, data


def figure_path(path: str) -> str:
  """`path` as a figure file: '.png' added to a name without an extension; ConfigError for an
  extension matplotlib cannot write."""
  ext = os.path.splitext(path)[1].lstrip('.').lower()
  if not ext:
    return path + '.png'
  pyplot()   # matplotlib is there (else one line)
  from matplotlib.backend_bases import FigureCanvasBase
  formats = FigureCanvasBase.get_supported_filetypes()
  if ext not in formats:
    raise ConfigError(f'--out {path}: matplotlib cannot write .{ext} figures; use one of '
                      f'{", ".join("." + f for f in sorted(formats))}')
  return path


def save(fig, path: str) -> str:
  """Writes `fig` to `path` (checked by `figure_path` first); returns the path."""
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
  except OSError as e:
    raise WorkdirError(f'cannot write the figure {path} ({first_line(e)}): pass another --out, '
                       f'or free space or fix the permissions of its folder') from None
  finally:
    pyplot().close(fig)
  return path
