"""A sweep point's folder: its record (`POINT_FILE`: the point, the train arguments it ran
with, its exit code and wall time), its status, and the checks before it runs again: the same
train arguments (`check_same_args`) and a config that computes the same (`check_same_recipe`),
so that one sweep table never mixes two recipes.
"""

import json
import os
import shlex
from typing import Optional, Sequence

from resnet_flax import rundir
from resnet_flax.checkpoint import compat
from resnet_flax.errors import SweepError

POINT_FILE = 'sweep_point.json'   # the point's overrides and the wall time spent on it


def point_status(workdir: str) -> str:
  """'finished' (results.json), 'failed' (its last training exited with an error),
  'interrupted' (has checkpoints or metrics) or 'pending'."""
  if os.path.isfile(rundir.path(workdir, rundir.RESULTS_FILE)):
    return 'finished'
  if read_point_file(workdir).get('exit_code') not in (None, 0):
    return 'failed'
  if os.path.isdir(rundir.path(workdir, rundir.CHECKPOINTS)) or os.path.isfile(
      rundir.path(workdir, rundir.METRICS_FILE)):
    return 'interrupted'
  return 'pending'


def recorded_args(workdir: str) -> Optional[list[str]]:
  """The train arguments a point last ran with (None: never run by a sweep)."""
  record = read_point_file(workdir)
  if 'args' in record:
    return list(record['args'])
  if 'command' in record:      # records written before 'args': the arguments from --config on
    words = shlex.split(record['command'])
    return words[words.index('--config'):] if '--config' in words else None
  return None


def _same_paths(args: Sequence[str]) -> list[str]:
  """The arguments with the --config and --workdir paths resolved (one folder, one spelling)."""
  out = list(args)
  for i, arg in enumerate(out[:-1]):
    if arg in ('--config', '--workdir') and os.path.exists(out[i + 1]):
      out[i + 1] = os.path.realpath(out[i + 1])
  return sorted(out)


def check_same_args(workdir: str, point_args: Sequence[str]) -> None:
  """SweepError when the point in `workdir` ran with other train arguments than `point_args`."""
  then = recorded_args(workdir)
  if then is None or _same_paths(then) == _same_paths(point_args):
    return
  only_then = [a for a in then if a not in point_args]
  only_now = [a for a in point_args if a not in then]
  raise SweepError(
      f'{workdir} was run with other arguments ({" ".join(only_then) or "-"} then, '
      f'{" ".join(only_now) or "-"} now): run the sweep with the arguments it was run with, '
      f'or use another --workdir for the new ones')


def read_point_file(workdir: str) -> dict:
  try:
    with open(os.path.join(workdir, POINT_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def write_point_file(workdir: str, record: dict) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise SweepError(f'{workdir}: cannot be made a folder ({e.strerror})') from None
  rundir.write_atomic(os.path.join(workdir, POINT_FILE), json.dumps(record, indent=2))


def record_failure(workdir: str, point: dict[str, str], error: str) -> None:
  """Marks a point failed without running it (its config does not validate)."""
  record = read_point_file(workdir)
  record.update({'point': point, 'exit_code': 2, 'error': error})
  write_point_file(workdir, record)


def check_same_recipe(workdir: str, config) -> None:
  """SweepError when the point in `workdir` was trained with a config that computes something
  else than `config` (the config file was edited since): one table, one recipe."""
  saved = rundir.read_config(workdir)
  differences = compat.recipe_differences(saved, config) if saved is not None else []
  if differences:
    raise SweepError(
        f'{workdir} was trained with another config ({", ".join(differences[:4])}'
        f'{" ..." if len(differences) > 4 else ""}; the config file or the arguments changed '
        f'since): restore them, or use another --workdir for the new recipe')
