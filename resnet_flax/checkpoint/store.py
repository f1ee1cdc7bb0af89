"""The checkpoint store of a run (orbax-checkpoint): save asynchronously, list, restore with
fall-back. It is the one module that knows the checkpoint layout.

A run keeps its checkpoints in one folder (`rundir.checkpoint_dir`), one sub-folder per step,
managed by an `orbax.checkpoint.CheckpointManager`. Each checkpoint holds three items:

* `state`: the whole `TrainState` (step, params, batch_stats, opt_state, EMA, rng) as host
  (numpy) arrays, so it restores onto any device count and either parallelism mode: restore to
  host arrays, then `par.put_state`;
* `meta` (JSON): the step, which is also the data position (train batches are a pure function
  of (seed, step)), the open train-metric window (sums over the steps since the last log), the
  last eval metrics and the fine-tuning report, so that a resumed run continues exactly, and
  `data` (`data.info.DataInfo`) for inference; the loop's own entries are written and read
  by `train.loop_state`;
* `config` (JSON): the config the run was trained with.

Saves are asynchronous (training goes on while orbax writes) and atomic: orbax writes into a
`<step>.orbax-checkpoint-tmp*` folder and renames it when complete, so a checkpoint half-written
when the process died is never listed. A checkpoint that is listed but cannot be read is moved
aside to `<checkpoint_dir>.skipped/` with a warning (left in place when the store is read-only:
evaluation, prediction), and the previous one is used. A readable checkpoint whose train state
has another structure than the one to restore into (the config changed a field that shapes the
optimizer state, say) is not unreadable: it stays in place and the restore stops with
`StateMismatch`.
"""

import importlib.util
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from typing import Callable, Optional


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
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from etils import epath  # noqa: E402
from orbax.checkpoint import checkpoint_managers  # noqa: E402

from resnet_flax.checkpoint.compat import config_to_dict  # noqa: E402
from resnet_flax.errors import CheckpointError, first_line  # noqa: E402

ITEMS = ('state', 'meta', 'config')
META_VERSION = 1


class StateMismatch(CheckpointError):
  """A readable checkpoint whose train state is not the structure the run restores into."""

  def __init__(self, step: int, directory: str, difference: str, saved_config: dict):
    self.where = (f'checkpoint {step} in {directory} holds a train state of another structure '
                  f'than this config builds ({difference})')
    super().__init__(f'{self.where}: use the config it was saved with (drop the overrides that '
                     f'change the model, the optimizer or the EMA)')
    self.saved_config = saved_config


def leaf_shapes(tree) -> dict:
  """{path as a tuple of names: shape} of the arrays of a state, or of its saved metadata."""
  def name(key):
    for attr in ('name', 'key', 'idx'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {tuple(name(k) for k in path): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def structure_difference(saved: dict, wanted: dict) -> str:
  """'' when two `leaf_shapes` agree, else what differs (a few paths of each kind)."""
  def listed(paths):
    paths = sorted(paths)
    names = ', '.join('/'.join(p) for p in paths[:3])
    return names + (f' and {len(paths) - 3} more' if len(paths) > 3 else '')
  parts = []
  if set(saved) - set(wanted):
    parts.append(f'saved, not built now: {listed(set(saved) - set(wanted))}')
  if set(wanted) - set(saved):
    parts.append(f'built now, not saved: {listed(set(wanted) - set(saved))}')
  reshaped = [p for p in set(saved) & set(wanted) if saved[p] != wanted[p]]
  if reshaped:
    parts.append(f'other shapes: {listed(reshaped)}')
  return '; '.join(parts)


_BACKGROUND = (f'{os.sep}orbax{os.sep}', f'{os.sep}asyncio{os.sep}', f'{os.sep}etils{os.sep}')


class _QuietOrbax(logging.Filter):
  """Keeps orbax's per-save INFO lines out of the run's output; with a `target` file, its
  warnings and errors (tracebacks of failed background writes, often hundreds of lines) go to
  that file instead of the terminal (the run reports the failure in one line)."""
  target: Optional[str] = None

  def filter(self, record: logging.LogRecord) -> bool:
    if not any(part in record.pathname for part in _BACKGROUND):
      return True
    if record.levelno < logging.WARNING or 'read only' in str(record.msg).replace('_', ' '):
      return False
    if self.target is None:
      return True
    _append(self.target, logging.Formatter('%(asctime)s %(levelname)s %(pathname)s:%(lineno)d '
                                           '%(message)s').format(record))
    return False


_QUIET = _QuietOrbax()
for _name in ('absl', 'asyncio'):
  logging.getLogger(_name).addFilter(_QUIET)


def _append(path: str, text: str) -> None:
  try:
    with open(path, 'a') as f:
      f.write(text.rstrip('\n') + '\n')
  except OSError:   # the disk that failed the checkpoint may fail this too: nothing to add
    pass


def divert_background_errors(path: str) -> None:
  """From now on, the tracebacks of orbax's background threads (a failed asynchronous write,
  its event loop shutting down) are appended to `path` instead of flooding the terminal."""
  _QUIET.target = path

  def thread_hook(args):
    _append(path, ''.join(traceback.format_exception(args.exc_type, args.exc_value,
                                                     args.exc_traceback)))

  def unraisable_hook(unraisable):
    _append(path, f'{unraisable.err_msg or "Exception ignored"}: {unraisable.object!r}\n' +
            ''.join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                               unraisable.exc_traceback)))

  threading.excepthook = thread_hook
  sys.unraisablehook = unraisable_hook


def _write_error(path: str, error: BaseException, step: Optional[int] = None) -> CheckpointError:
  what = f'checkpoint {step}' if step is not None else 'checkpoints'
  details = f'; full traceback in {_QUIET.target}' if _QUIET.target else ''
  return CheckpointError(
      f'cannot write {what} to {path} ({first_line(error)}); point --workdir or '
      f'--config.checkpoint_dir at a writable folder with free space (checkpoints saved '
      f'before are untouched{details})')


class Checkpoints:
  """The checkpoints of one run: save (asynchronously), list, restore with fall-back."""

  def __init__(self, directory: str, *, keep: int = 3, best_metric: str = 'eval_top1',
               best_mode: str = 'max', read_only: bool = False, log: Callable = print):
    self.directory = directory
    self.read_only = read_only
    self._saving: Optional[int] = None   # the step of the latest save started
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
    """The latest complete checkpoint, read from the folder itself: the manager lists a step as
    soon as its save starts, also one whose write then failed; a folder named by its step exists
    only once orbax has written it whole and renamed it."""
    try:
      names = os.listdir(self.directory)
    except OSError:
      return None
    steps = [int(n) for n in names
             if n.isdigit() and os.path.isdir(os.path.join(self.directory, n))]
    return max(steps) if steps else None

  # -- saving
  def save(self, step: int, host_state, *, meta: dict, config, metrics: Optional[dict]) -> None:
    """Starts an asynchronous save of `host_state` (numpy arrays) at `step`, after the previous
    save ended (a failure of that one is reported as its own)."""
    self.wait()
    meta = {'version': META_VERSION, 'step': int(step), 'data_position': int(step), **meta}
    try:
      self.manager.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta),
          config=ocp.args.JsonSave(config_to_dict(config))),
          metrics={k: float(v) for k, v in (metrics or {}).items()}, force=True)
    except Exception as e:  # noqa: BLE001 - any failure to write is reported in one line
      raise _write_error(self.directory, e, step) from None
    self._saving = int(step)

  def check(self) -> None:
    """Raises CheckpointError when an asynchronous save that has ended failed (cheap, without
    waiting for a save in progress)."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise _write_error(self.directory, e, self._saving) from None

  def wait(self) -> None:
    """Blocks until the pending save is on disk (raises CheckpointError if it failed)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise _write_error(self.directory, e, self._saving) from None

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

  def saved_shapes(self, step: int) -> dict:
    """`leaf_shapes` of the train state saved at `step`, from its metadata (no array is read)."""
    handler = ocp.StandardCheckpointHandler()
    try:
      metadata = handler.metadata(epath.Path(os.path.join(self.directory, str(step), 'state')))
    finally:
      handler.close()
    return leaf_shapes(metadata.tree)

  def restore(self, step: int, template=None):
    """(host state, meta, config dict) of `step`; with `template` (a host state of the right
    structure) the state comes back as that structure, else as nested dicts."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore()))
    state = restored['state']
    state = jax.tree.map(np.asarray, state)
    return state, dict(restored['meta']), dict(restored['config'])

  def skip_unreadable(self, step: int, why: str) -> None:
    """Leaves an unreadable checkpoint out, with a warning. A writable store moves it aside
    (kept for inspection, so that the next save does not trip on it); a read-only one (an
    evaluation, a prediction) leaves the files alone."""
    where = ''
    if not self.read_only:
      aside = f'{self.directory}.skipped'
      target = os.path.join(aside, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
      if jax.process_index() == 0:
        os.makedirs(aside, exist_ok=True)
        shutil.move(os.path.join(self.directory, str(step)), target)
      self.manager.reload()
      where = f' (moved to {target})'
    self.log(f'warning: checkpoint {step} in {self.directory} cannot be read ({why}); '
             f'skipped{where}, using the previous one')

  def restore_latest(self, template, check_config: Optional[Callable[[dict], None]] = None):
    """The newest readable checkpoint as (step, host state, meta, config dict), or None.

    `template` is the host state to restore into, or a function of the saved config dict that
    returns it (a checkpoint of another layout restores into its own). `check_config(saved
    config dict)` may raise to refuse a checkpoint (e.g. an incompatible config), and so may
    `template`: those errors propagate, as does `StateMismatch` for a checkpoint whose state
    has another structure than the template. A checkpoint that cannot be read is skipped with
    a warning (`skip_unreadable`) and the previous one is tried.
    """
    for step in reversed(self.steps()):
      try:
        saved_config = self.read_config(step)
        saved = self.saved_shapes(step)
      except Exception as e:  # noqa: BLE001 - unreadable: try the previous one
        self.skip_unreadable(step, first_line(e))
        continue
      if check_config is not None:
        check_config(saved_config)
      target = template(saved_config) if callable(template) else template
      difference = structure_difference(saved, leaf_shapes(target)) if target is not None else ''
      if difference:
        raise StateMismatch(step, self.directory, difference, saved_config)
      try:
        state, meta, saved_config = self.restore(step, target)
      except Exception as e:  # noqa: BLE001
        self.skip_unreadable(step, first_line(e))
        continue
      return step, state, meta, saved_config
    return None
