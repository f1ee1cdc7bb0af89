"""`resnet-flax train`: train and evaluate as a config says (`--config FILE_OR_NAME --workdir DIR
[--config.FIELD=VALUE ...]`; with no --config, the offline quick start)."""

import json
import sys

from resnet_flax.cli import common
from resnet_flax.errors import UserError


def train_main(config, workdir: str, config_path: str) -> int:
  """Joins the cluster (if configured), trains, prints the results; returns the exit code."""
  from resnet_flax import rundir
  from resnet_flax.train import distributed, loop
  try:
    distributed.maybe_initialize(config.distributed)
    workdir = workdir or common.default_workdir(config_path)
    results = loop.train_and_evaluate(config, workdir)
  except UserError as e:
    return common.report_error(e)
  except loop.NonFiniteLossError as e:
    print(f'stopped: {e}', file=sys.stderr)
    return common.EXIT_USER_ERROR
  if distributed.process_index() != 0:
    return 0   # process 0 reports the results
  shown = {k: results[k] for k in ('eval_top1', 'eval_top5', 'eval_loss', 'steps',
                                   'train_time_s', 'images_per_sec') if k in results}
  print(f'results ({rundir.path(workdir, rundir.RESULTS_FILE)}): {json.dumps(shown)}')
  return 0


def main(argv=None) -> None:
  from absl import app, flags

  def define():
    flags.DEFINE_string('workdir', None, 'Run directory (default: a new one under runs/).')

  def run(config, config_file, args):
    if len(args) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(args[1:])}')
    return train_main(config, flags.FLAGS.workdir, config_file)

  common.run_absl(run, argv, define)
