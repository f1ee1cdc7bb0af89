"""What the command-line scripts share: run directories, cluster start-up, and turning the
errors a user can fix (config, data, non-finite loss) into one clear line and an exit code.
"""

import datetime
import difflib
import json
import os
import sys
from typing import Optional

from resnet_flax import configuration, distributed
from resnet_flax.data import DataError

EXIT_USER_ERROR = 2


def default_workdir(config_path: str, root: str = 'runs') -> str:
  name = os.path.splitext(os.path.basename(config_path or 'default'))[0]
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  return os.path.join(root, f'{name}-{stamp}')


def unknown_override(argv) -> Optional[str]:
  """The error line for the first `--config.FIELD=...` naming no field of the config schema.

  Every config file starts from `configuration.base_config()`, so its fields are the schema.
  Checked before the flags are defined, where ml_collections would raise a raw KeyError.
  """
  schema = configuration.base_config()
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0].split('.')
    node, done = schema, []
    for part in path:
      if not hasattr(node, 'keys') or part not in node:
        known = sorted(node.keys()) if hasattr(node, 'keys') else []
        close = difflib.get_close_matches(part, known, n=1)
        hint = f'; did you mean {".".join(done + close)}?' if close else ''
        where = 'config.' + '.'.join(done) if done else 'config'
        return (f'config error: --config.{".".join(path)}: {where} has no field {part!r}{hint} '
                f'(known: {", ".join(known)})')
      node, done = node[part], done + [part]
  return None


DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'configs', 'default.py')


def define_config_flag(argv):
  """The scripts' `--config FILE` flag (default configs/default.py) with `--config.FIELD=V`
  overrides. An override naming no field exits first with one line (see `unknown_override`)."""
  from ml_collections import config_flags
  error = unknown_override(argv)
  if error:
    print(error, file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  return config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, 'Training config file.',
                                         lock_config=True)


def add_checkpoint_args(parser) -> None:
  """The saved model an inference script reads: --workdir DIR or --checkpoint PATH, --step N."""
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument('--workdir', help='run directory holding checkpoints/')
  where.add_argument('--checkpoint', help="a checkpoints folder or one step's folder")
  parser.add_argument('--step', type=int, default=-1, help='checkpoint step (-1: the latest)')


def report_error(error: Exception) -> int:
  kind = {configuration.ConfigError: 'config error', DataError: 'data error'}.get(
      type(error), 'error')
  print(f'{kind}: {error}', file=sys.stderr)
  return EXIT_USER_ERROR


def train_main(config, workdir: str, config_path: str) -> int:
  """Entry of scripts/train.py: returns the process exit code."""
  from resnet_flax import trainer  # after distributed start-up: importing it is cheap anyway
  try:
    distributed.maybe_initialize(config.distributed)
    workdir = workdir or default_workdir(config_path)
    results = trainer.train_and_evaluate(config, workdir)
  except (configuration.ConfigError, DataError) as e:
    return report_error(e)
  except trainer.NonFiniteLossError as e:
    print(f'stopped: {e}', file=sys.stderr)
    return 1
  if distributed.process_index() != 0:
    return 0   # process 0 reports the results
  shown = {k: results[k] for k in ('eval_top1', 'eval_top5', 'eval_loss', 'steps',
                                   'train_time_s', 'images_per_sec') if k in results}
  print(f'results ({os.path.join(workdir, "results.json")}): {json.dumps(shown)}')
  return 0
