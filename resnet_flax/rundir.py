"""The run folder: the one place that names its files and reads or writes them.

A run's workdir holds `config.json` (the config it was started with), `metrics.jsonl` (one JSON
object per log or eval event, always with `step` and `epoch`), `results.json` (written last, when
the run is complete), TensorBoard files, and the checkpoints folder (`checkpoints/`, or
`config.checkpoint_dir`). The trainer writes these; sweeps, plots, evaluation and inference
read them through the functions here.
"""

import datetime
import fcntl
import json
import math
import os
import socket
from typing import Any, Optional

from resnet_flax.errors import CheckpointError, WorkdirError, first_line

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
CHECKPOINTS = 'checkpoints'
TENSORBOARD = 'tensorboard'
LOCK_FILE = '.lock'           # held by the one run that owns the folder
FRAMEWORK_KEY = 'framework'  # config.json: the framework of a run not ours (tools.torch_train)
ERRORS_FILE = 'errors.log'    # full tracebacks of background failures (checkpoint writes)
OWNER_FILE = '.workdir.json'  # in a checkpoints folder: the run folder it belongs to


def path(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def checkpoint_dir(config, workdir: str) -> str:
  """The checkpoints folder of a run: `config.checkpoint_dir`, else WORKDIR/checkpoints."""
  return _absolute(config.checkpoint_dir or os.path.join(workdir, CHECKPOINTS))


def _absolute(folder: str) -> str:
  return os.path.abspath(os.path.expanduser(folder))


def anchored(folder: Optional[str]) -> Optional[str]:
  """A relative path as the absolute one it names from the current directory; '' and None,
  absolute paths and paths from the home folder (`~/...`, the same on every machine) as they
  are."""
  if not folder or folder.startswith('~') or os.path.isabs(folder):
    return folder
  return os.path.abspath(folder)


def resolve_checkpoint_path(where: str, step: int = -1) -> tuple[str, Optional[int]]:
  """(checkpoints folder, step or None for the latest) for a run workdir, a checkpoints folder
  or one step's folder."""
  where = _absolute(where)
  if not os.path.isdir(where):
    raise CheckpointError(f'{where}: no such folder (expected a run workdir, its checkpoints '
                          f'folder or a checkpoint folder)')
  name = os.path.basename(where.rstrip('/'))
  if name.isdigit() and os.path.isdir(os.path.join(where, 'state')):
    return os.path.dirname(where), int(name)
  saved = read_config(where)
  if saved and saved.get('checkpoint_dir'):      # a run that kept its checkpoints elsewhere
    return checkpoint_dir_of(saved, where), (step if step >= 0 else None)
  if os.path.isdir(os.path.join(where, CHECKPOINTS)):
    return os.path.join(where, CHECKPOINTS), (step if step >= 0 else None)
  return where, (step if step >= 0 else None)


def _read_json(workdir: str, name: str) -> Optional[dict]:
  file_path = path(workdir, name)
  if not os.path.isfile(file_path):
    return None
  try:
    with open(file_path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f'{file_path} cannot be read ({first_line(e)}): restore it from a copy, '
                       f'or remove it (a run without {RESULTS_FILE} counts as unfinished; '
                       f'without {CONFIG_FILE} it takes the one saved in its checkpoints)') from None


def write_atomic(file_path: str, text: str) -> None:
  """Replaces a run-folder file with `text` at once (a kill or a full disk mid-write leaves the
  old file whole); a write that fails is a WorkdirError naming the file."""
  tmp = file_path + '.tmp'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, file_path)
  except OSError as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise WorkdirError(f'cannot write {file_path} ({first_line(e)}): free space or fix the '
                       f'permissions of the folder; the file is as it was') from None


def read_config(workdir: str) -> Optional[dict]:
  """The run's config.json as a dict, or None when there is none."""
  return _read_json(workdir, CONFIG_FILE)


def write_config(workdir: str, config, *, framework: str = '') -> None:
  """config.json; `framework` names another framework that trained the run (the PyTorch
  reference: 'torch'), kept under FRAMEWORK_KEY beside the config's fields. A relative
  `checkpoint_dir` or `data.dir` is saved as the folder it names now (`anchored`), so that
  evaluation finds the run's checkpoints and data from any directory."""
  fields = json.loads(config.to_json())
  fields['checkpoint_dir'] = anchored(fields.get('checkpoint_dir'))
  if isinstance(fields.get('data'), dict):
    fields['data']['dir'] = anchored(fields['data'].get('dir'))
  if framework:
    fields[FRAMEWORK_KEY] = framework
  write_atomic(path(workdir, CONFIG_FILE), json.dumps(fields, indent=2))


def framework_of(saved_config: Optional[dict]) -> str:
  """The framework that trained a run, from its config.json ('jax' for our trainer's)."""
  return (saved_config or {}).get(FRAMEWORK_KEY, 'jax')


def read_metrics(workdir: str) -> list[dict]:
  """The events of metrics.jsonl (a line cut short by a kill is skipped)."""
  metrics_path = path(workdir, METRICS_FILE)
  records = []
  if os.path.isfile(metrics_path):
    with open(metrics_path) as f:
      for line in f:
        line = line.strip()
        if line:
          try:
            records.append(json.loads(line))
          except ValueError:
            pass   # a line cut by a kill: the rest of the file is still good
  return records


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops the events after `last_step` from metrics.jsonl (a resumed run writes them again)."""
  metrics_path = path(workdir, METRICS_FILE)
  if not os.path.isfile(metrics_path):
    return
  kept = [json.dumps(r) + '\n' for r in read_metrics(workdir)
          if isinstance(r.get('step'), int) and r['step'] <= last_step]
  write_atomic(metrics_path, ''.join(kept))


def _json_safe(value: Any) -> Any:
  """NaN and infinities as None (strict JSON has no NaN), recursively."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def write_results(workdir: str, results: dict) -> str:
  """Writes results.json (strict JSON: a non-finite number is null) atomically."""
  results_path = path(workdir, RESULTS_FILE)
  write_atomic(results_path, json.dumps(_json_safe(results), indent=2, allow_nan=False))
  return results_path


def read_results(workdir: str) -> Optional[dict]:
  """The run's results.json as a dict, or None before the run completed."""
  return _read_json(workdir, RESULTS_FILE)


def remove_results(workdir: str) -> None:
  results_path = path(workdir, RESULTS_FILE)
  if os.path.isfile(results_path):
    os.remove(results_path)


def _holds_checkpoints(folder: str) -> bool:
  try:
    return any(n.isdigit() and os.path.isdir(os.path.join(folder, n)) for n in os.listdir(folder))
  except OSError:
    return False


def claim_checkpoint_dir(workdir: str, directory: str, *, explicit: bool, restart: bool) -> None:
  """Makes `directory` (`explicit`: named by `config.checkpoint_dir`) the checkpoints folder of
  the run in `workdir`, recording the run in it (OWNER_FILE). WorkdirError for a folder that
  holds another run's checkpoints (a folder named explicitly by a run folder that still exists;
  the default folder inside a run folder belongs to whichever run folder holds it, so a copied
  or moved run keeps its own), and, unless `restart`, for a workdir whose run keeps checkpoints
  in another folder (its config.json) that holds some: training here would start over."""
  workdir = _absolute(workdir)
  same = lambda a, b: os.path.realpath(a) == os.path.realpath(b)  # noqa: E731
  saved = read_config(workdir)
  if saved is not None and not restart:
    before = checkpoint_dir_of(saved, workdir)
    if not same(before, directory) and _holds_checkpoints(before):
      named = saved.get('checkpoint_dir') or f"'' (the default, WORKDIR/{CHECKPOINTS})"
      raise WorkdirError(
          f'{workdir}: its run keeps its checkpoints in {before} (config.json), not in '
          f'{directory}: resume with --config.checkpoint_dir={named}, or pass '
          f'--config.on_existing_run=restart to start over in {directory}')
  owner_path = os.path.join(directory, OWNER_FILE)
  try:
    with open(owner_path) as f:
      owner = json.load(f)
  except (OSError, ValueError):
    owner = {}
  other = owner.get('workdir')
  if other and not same(other, workdir):
    inside = same(directory, os.path.join(workdir, CHECKPOINTS))
    if (owner.get('explicit') and os.path.isdir(other)) or (not owner.get('explicit')
                                                            and not inside):
      raise WorkdirError(
          f'{directory} holds the checkpoints of the run in {other}: give this run its own '
          f'--config.checkpoint_dir (or none: WORKDIR/{CHECKPOINTS}); if this run folder is a '
          f'copy of that one meant to use them, remove {owner_path}')
  if other != workdir or bool(owner.get('explicit')) != explicit:
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError:
      return   # the checkpoint store names the unwritable folder
    write_atomic(owner_path, json.dumps({'workdir': workdir, 'explicit': explicit}))


def checkpoint_dir_of(saved_config: dict, workdir: str) -> str:
  """The checkpoints folder a run's saved config names (relative: as of the current folder)."""
  named = saved_config.get('checkpoint_dir')
  return _absolute(named) if named else os.path.join(_absolute(workdir), CHECKPOINTS)


class WorkdirLock:
  """Exclusive ownership of a run folder: an OS file lock (`flock`) on WORKDIR/.lock, held while
  a run trains. The OS releases it when the process ends, however it ends, so a SIGKILLed run
  never leaves a stale lock. The file records the holder (host, pid, start time) for the
  message a second run gets. Creating it is also the first check that the workdir is usable.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._fd: Optional[int] = None

  def acquire(self) -> 'WorkdirLock':
    workdir = self.workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise WorkdirError(f'--workdir {workdir} is a file, not a folder; give a folder (it is '
                         f'created when missing)')
    lock_path = path(workdir, LOCK_FILE)
    try:
      os.makedirs(workdir, exist_ok=True)
      fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f'--workdir {workdir} cannot be written ({first_line(e)}); point '
                         f'--workdir at a writable folder') from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _holder(fd)
      os.close(fd)
      raise WorkdirError(f'{workdir} is in use by another run ({holder}); a folder holds one '
                         f'run at a time: wait for that run to end or stop it, or use another '
                         f'--workdir') from None
    record = {'host': socket.gethostname(), 'pid': os.getpid(),
              'started': datetime.datetime.now().isoformat(timespec='seconds')}
    try:
      os.ftruncate(fd, 0)
      os.write(fd, json.dumps(record).encode())
    except OSError as e:
      os.close(fd)
      raise WorkdirError(f'--workdir {workdir} cannot be written ({first_line(e)}); point '
                         f'--workdir at a writable folder with free space') from None
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _holder(fd: int) -> str:
  """'host H, pid P, started T' of the lock file's record (as far as it was written)."""
  try:
    record = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
  except (OSError, ValueError):
    record = {}
  if not record:
    return 'holder not recorded yet'
  return (f'host {record.get("host", "?")}, pid {record.get("pid", "?")}, started '
          f'{record.get("started", "?")}')
