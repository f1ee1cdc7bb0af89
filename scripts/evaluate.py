"""Evaluate a saved model without training: `python scripts/evaluate.py --workdir DIR
[--checkpoint STEP] [--config.FIELD=VALUE ...]`.

The config is the run's (`DIR/config.json`, else the one saved in the checkpoint); overrides
apply on top, e.g. `--config.data.eval_split=train[:100]`. Prints top-1, top-5 and loss and
writes them to `DIR/eval_STEP.json`. The latest checkpoint unless --checkpoint names a step.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from resnet_flax import checkpointing, cli, configuration  # noqa: E402
from resnet_flax.data import DataError  # noqa: E402


def _argv_value(argv, name: str):
  for i, arg in enumerate(argv):
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
  return None


def _run_config(workdir: str):
  """The config dict the run in `workdir` was trained with."""
  path = os.path.join(workdir, 'config.json')
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  step = _argv_value(sys.argv, 'checkpoint')
  _, _, _, saved = checkpointing.load_checkpoint(workdir, int(step) if step else -1)
  return saved


def _startup_error() -> str:
  """The one-line error for a missing or unreadable workdir or an unknown override."""
  workdir = _argv_value(sys.argv, 'workdir')
  if not workdir:
    return 'error: --workdir DIR is required (a run directory holding checkpoints)'
  if not os.path.isdir(workdir):
    return f'error: --workdir {workdir}: no such directory'
  return cli.unknown_override(sys.argv) or ''


if __name__ == '__main__':
  _error = _startup_error()
  if _error:
    print(_error, file=sys.stderr)
    sys.exit(cli.EXIT_USER_ERROR)
  try:
    _CONFIG = config_flags.DEFINE_config_dict(
        'config', checkpointing.config_from_dict(_run_config(_argv_value(sys.argv, 'workdir'))),
        'The run config (overridable with --config.FIELD=VALUE).')
  except configuration.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(cli.EXIT_USER_ERROR)

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints.')
_CHECKPOINT = flags.DEFINE_integer('checkpoint', -1, 'Step of the checkpoint (-1: latest).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from resnet_flax import trainer
  config = _CONFIG.value
  workdir = _WORKDIR.value
  try:
    step, metrics = trainer.evaluate_checkpoint(config, workdir, _CHECKPOINT.value)
  except (configuration.ConfigError, DataError) as e:
    return cli.report_error(e)
  result = {'step': step, 'eval_split': config.data.eval_split, **metrics}
  path = os.path.join(workdir, f'eval_{step}.json')
  with open(path, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'checkpoint {step}, split {config.data.eval_split}: top-1 {metrics["eval_top1"]:.4f} '
        f'top-5 {metrics["eval_top5"]:.4f} loss {metrics["eval_loss"]:.4f} ({path})')
  return 0


if __name__ == '__main__':
  app.run(main)
