"""Checkpoints of a run (orbax-checkpoint): saving, resuming, fine-tuning from another run.

A run keeps its checkpoints in `WORKDIR/checkpoints/` (or `config.checkpoint_dir`), one folder
per step, managed by an `orbax.checkpoint.CheckpointManager`. Each checkpoint holds three items:

* `state`: the whole `TrainState` (step, params, batch_stats, opt_state, EMA, rng) as host
  (numpy) arrays, so it restores onto any device count and either parallelism mode: restore to
  host arrays, then `par.put_state`;
* `meta` (JSON): the step, which is also the data position (train batches are a pure function
  of (seed, step)), the open train-metric window (sums over the steps since the last log), the
  last eval metrics and the fine-tuning report, so that a resumed run continues exactly, and
  `data` (input image shape, class names) for `inference.py`;
* `config` (JSON): the config the run was trained with.

Saves are asynchronous (training goes on while orbax writes) and atomic: orbax writes into a
`<step>.orbax-checkpoint-tmp*` folder and renames it when complete, so a checkpoint half-written
when the process died is never listed. A checkpoint that is listed but cannot be read is moved
aside to `<checkpoint_dir>.skipped/` with a warning, and the previous one is used.
"""

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Optional


def _tensorflow_findable() -> bool:
  try:
    return importlib.util.find_spec('tensorflow') is not None
  except (ImportError, ValueError):
    return False


# orbax's paths (etils.epath) ask whether TensorFlow is installed; where it is not, say so once
# here, so that nothing on the training path looks for it again.
if not _tensorflow_findable():
  os.environ.setdefault('EPATH_USE_TF', 'false')

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from orbax.checkpoint import checkpoint_managers

from resnet_flax import configuration

ITEMS = ('state', 'meta', 'config')
META_VERSION = 1

# Fields that must match for a run to resume from a checkpoint (prefix match on 'model.').
# Others (the length of the run, the lr, logging, parallelism, device count) may change.
# `freeze` decides the optimizer state's structure (frozen parameters have none).
RESUME_FIELDS = ('model.', 'data.source', 'data.name', 'data.dir', 'data.train_split',
                 'data.eval_split', 'batch_size', 'seed', 'optimizer.name', 'freeze')


class _QuietOrbax(logging.Filter):
  """Keeps orbax's per-save INFO lines out of the run's output (warnings still show)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if f'{os.sep}orbax{os.sep}' not in record.pathname:
      return True
    return record.levelno >= logging.WARNING and 'read only' not in str(record.msg).replace(
        '_', ' ')


logging.getLogger('absl').addFilter(_QuietOrbax())


class CheckpointError(configuration.ConfigError):
  """A checkpoint folder that cannot be written or read; the message says which and what to do.

  A subclass of ConfigError so that the command line reports it in one line (exit code 2).
  """


def checkpoint_dir(config, workdir: str) -> str:
  return os.path.abspath(os.path.expanduser(config.checkpoint_dir or
                                            os.path.join(workdir, 'checkpoints')))


def config_to_dict(config) -> dict:
  return json.loads(config.to_json())


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'


def _write_error(path: str, error: BaseException) -> CheckpointError:
  return CheckpointError(
      f'cannot write checkpoints to {path} ({_first_line(error)}); point --workdir or '
      f'--config.checkpoint_dir at a writable folder with free space (checkpoints saved '
      f'before are untouched)')


class Checkpoints:
  """The checkpoints of one run: save (asynchronously), list, restore with fall-back."""

  def __init__(self, directory: str, *, keep: int = 3, best_metric: str = 'eval_top1',
               best_mode: str = 'max', read_only: bool = False, log: Callable = print):
    self.directory = directory
    self.best_metric = best_metric
    self.log = log
    worst = -float('inf') if best_mode == 'max' else float('inf')

    def metric(metrics) -> float:
      value = (metrics or {}).get(best_metric)
      return worst if value is None or not np.isfinite(value) else float(value)

    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=metric, reverse=best_mode == 'min', n=1,
                                  keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy, best_fn=metric, best_mode=best_mode,
        cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only,
        enable_async_checkpointing=True)
    try:
      if not read_only:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f'.write-test-{os.getpid()}')
        with open(probe, 'w') as f:
          f.write('ok')
        os.remove(probe)
      self.manager = ocp.CheckpointManager(directory, options=options, item_names=ITEMS)
    except OSError as e:
      raise _write_error(directory, e) from None

  # -- listing
  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  # -- saving
  def save(self, step: int, host_state, *, meta: dict, config, metrics: Optional[dict]) -> None:
    """Starts an asynchronous save of `host_state` (numpy arrays) at `step`."""
    meta = {'version': META_VERSION, 'step': int(step), 'data_position': int(step), **meta}
    try:
      self.manager.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta),
          config=ocp.args.JsonSave(config_to_dict(config))),
          metrics={k: float(v) for k, v in (metrics or {}).items()}, force=True)
    except Exception as e:  # noqa: BLE001 - any failure to write is reported in one line
      raise _write_error(self.directory, e) from None

  def wait(self) -> None:
    """Blocks until the pending save is on disk (raises CheckpointError if it failed)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise _write_error(self.directory, e) from None

  def close(self) -> None:
    try:
      self.manager.close()
    except Exception as e:  # noqa: BLE001
      raise _write_error(self.directory, e) from None

  def delete_all(self) -> None:
    for step in self.steps():
      self.manager.delete(step)
    self.manager.reload()

  # -- reading
  def read_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def restore(self, step: int, template=None):
    """(host state, meta, config dict) of `step`; with `template` (a host state of the right
    structure) the state comes back as that structure, else as nested dicts."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore()))
    state = restored['state']
    state = jax.tree.map(np.asarray, state)
    return state, dict(restored['meta']), dict(restored['config'])

  def set_aside(self, step: int, why: str) -> None:
    """Moves an unreadable checkpoint out of the way (kept for inspection), with a warning."""
    aside = f'{self.directory}.skipped'
    target = os.path.join(aside, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    self.manager.reload()
    self.log(f'warning: checkpoint {step} in {self.directory} cannot be read ({why}); '
             f'skipped (moved to {target}), using the previous one')

  def restore_latest(self, template, check_config: Optional[Callable[[dict], None]] = None):
    """The newest readable checkpoint as (step, host state, meta, config dict), or None.

    `check_config(saved_config_dict)` may raise to refuse a checkpoint (e.g. an incompatible
    config): that error propagates. A checkpoint that cannot be read is set aside with a
    warning and the previous one is tried.
    """
    for step in reversed(self.steps()):
      try:
        saved_config = self.read_config(step)
      except Exception as e:  # noqa: BLE001 - unreadable: try the previous one
        self.set_aside(step, _first_line(e))
        continue
      if check_config is not None:
        check_config(saved_config)
      try:
        state, meta, saved_config = self.restore(step, template)
      except Exception as e:  # noqa: BLE001
        self.set_aside(step, _first_line(e))
        continue
      return step, state, meta, saved_config
    return None


def open_run_checkpoints(config, workdir: str, log: Callable = print) -> Checkpoints:
  return Checkpoints(checkpoint_dir(config, workdir), keep=config.keep_checkpoints,
                     best_metric=config.best_metric, best_mode=config.best_mode, log=log)


def _flat(tree, prefix='') -> dict:
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(_flat(value, name + '/'))
    else:
      out[name] = value
  return out


def incompatible_fields(saved: dict, config) -> list[str]:
  """'field (saved -> now)' for each field that must match to resume and does not.

  A field the saved config lacks (saved before the field existed) counts as its default."""
  defaults = configuration.flatten(config_to_dict(configuration.base_config()))
  a = {**defaults, **configuration.flatten(saved)}
  b = configuration.flatten(config_to_dict(config))
  diffs = []
  for field in sorted(set(a) | set(b)):
    if not any(field == f or (f.endswith('.') and field.startswith(f)) for f in RESUME_FIELDS):
      continue
    if a.get(field) != b.get(field):
      diffs.append(f'{field} ({a.get(field)!r} -> {b.get(field)!r})')
  if (float(a.get('ema_decay', 0.0)) > 0) != (float(b.get('ema_decay', 0.0)) > 0):
    diffs.append(f'ema_decay ({a.get("ema_decay")!r} -> {b.get("ema_decay")!r}: EMA on/off)')
  return diffs


def changed_fields(saved: dict, config) -> list[str]:
  """Every field that differs between a saved config and `config` (for the resume line)."""
  a, b = configuration.flatten(saved), configuration.flatten(config_to_dict(config))
  return [f for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]


def config_from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A config (base_config() updated with a saved JSON dict; fields it lacks keep defaults,
  fields the code no longer knows are dropped)."""
  c = configuration.base_config()

  def convert(value, ref):
    if isinstance(value, list):
      return tuple(value)
    if isinstance(ref, float) and isinstance(value, int) and not isinstance(value, bool):
      return float(value)
    return value

  def update(node, values, is_model=False):
    for key, value in values.items():
      if is_model:
        node[key] = tuple(value) if isinstance(value, list) else value
      elif key not in node:
        continue
      elif isinstance(node[key], ml_collections.ConfigDict):
        if key == 'model':
          node[key] = ml_collections.ConfigDict()
          update(node[key], value, is_model=True)
        else:
          update(node[key], value)
      else:
        node[key] = convert(value, node[key])

  update(c, saved)
  return c


def resolve_checkpoint_path(path: str, step: int = -1) -> tuple[str, Optional[int]]:
  """(checkpoints folder, step or None for the latest) for a run workdir, a checkpoints folder
  or one step's folder."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise CheckpointError(f'{path}: no such folder (expected a run workdir, its checkpoints '
                          f'folder or a checkpoint folder)')
  name = os.path.basename(path.rstrip('/'))
  if name.isdigit() and os.path.isdir(os.path.join(path, 'state')):
    return os.path.dirname(path), int(name)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    run_config = os.path.join(path, 'config.json')
    directory = os.path.join(path, 'checkpoints')
    if os.path.isfile(run_config):
      with open(run_config) as f:
        directory = json.load(f).get('checkpoint_dir') or directory
    return directory, (step if step >= 0 else None)
  return path, (step if step >= 0 else None)


def load_checkpoint(path: str, step: int = -1, template=None):
  """(step, host state, meta, config dict) of a saved checkpoint (the latest unless `step` or
  the path names one); read-only."""
  directory, step_or_none = resolve_checkpoint_path(path, step)
  store = Checkpoints(directory, read_only=True)
  steps = store.steps()
  if not steps:
    raise CheckpointError(f'{directory}: holds no complete checkpoint')
  chosen = steps[-1] if step_or_none is None else step_or_none
  if chosen not in steps:
    raise CheckpointError(f'{directory}: no checkpoint at step {chosen}; saved steps: '
                          f'{", ".join(map(str, steps))}')
  state, meta, config = store.restore(chosen, template)
  store.manager.close()
  return chosen, state, meta, config


@dataclasses.dataclass
class InitReport:
  """What `init_from` did with each array of params and batch_stats."""
  source: str
  step: int
  loaded: list = dataclasses.field(default_factory=list)          # names
  reinitialised: list = dataclasses.field(default_factory=list)   # 'name: saved -> new shape'
  new: list = dataclasses.field(default_factory=list)             # names absent in the source
  dropped: list = dataclasses.field(default_factory=list)         # names absent in the model
  loaded_values: int = 0

  def lines(self) -> list[str]:
    out = [f'init_from {self.source} (step {self.step}): loaded {len(self.loaded)} arrays '
           f'({self.loaded_values:,} values) of params and batch_stats']
    if self.reinitialised:
      out.append('  re-initialised (shape mismatch): ' + ', '.join(self.reinitialised))
    if self.new:
      out.append('  newly initialised (not in the checkpoint): ' + ', '.join(self.new))
    if self.dropped:
      out.append('  dropped (not in this model): ' + ', '.join(self.dropped))
    return out

  def to_dict(self) -> dict:
    return {'source': self.source, 'step': self.step, 'loaded': len(self.loaded),
            'reinitialised': self.reinitialised, 'new': self.new, 'dropped': self.dropped}


def merge_pretrained(target: dict, source: dict, report: InitReport, collection: str) -> dict:
  """`target` (nested dict of arrays) with every array of `source` whose name and shape match."""
  flat_target, flat_source = _flat(target), _flat(source or {})
  merged = {}
  for name, value in flat_target.items():
    full = f'{collection}/{name}'
    if name not in flat_source:
      report.new.append(full)
      merged[name] = value
    elif np.shape(flat_source[name]) != np.shape(value):
      report.reinitialised.append(
          f'{full} {tuple(np.shape(flat_source[name]))} -> {tuple(np.shape(value))}')
      merged[name] = value
    else:
      report.loaded.append(full)
      report.loaded_values += int(np.size(value))
      merged[name] = np.asarray(flat_source[name], dtype=np.asarray(value).dtype)
  report.dropped.extend(f'{collection}/{n}' for n in flat_source if n not in flat_target)

  def rebuild(tree, prefix=''):
    return {k: rebuild(v, f'{prefix}{k}/') if isinstance(v, dict) else merged[f'{prefix}{k}']
            for k, v in tree.items()}
  return rebuild(target)


def load_pretrained(path: str, step: int, params: Any, batch_stats: Any):
  """(params, batch_stats, InitReport): `params` / `batch_stats` (host nested dicts) with the
  arrays of a saved checkpoint whose names and shapes match."""
  chosen, saved, _, _ = load_checkpoint(path, step)
  report = InitReport(source=path, step=chosen)
  new_params = merge_pretrained(_to_dict(params), saved.get('params'), report, 'params')
  new_stats = merge_pretrained(_to_dict(batch_stats), saved.get('batch_stats'), report,
                               'batch_stats')
  if not report.loaded:
    raise CheckpointError(f'init_from {path}: no array of the checkpoint matches this model '
                          f'by name and shape; is it a checkpoint of a model of this family?')
  return new_params, new_stats, report


def _to_dict(tree) -> dict:
  if hasattr(tree, 'items'):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree
