"""`resnet-flax evaluate --workdir DIR [--checkpoint STEP] [--config.FIELD=VALUE ...]`: evaluate a
saved model without training.

The config is the run's (`DIR/config.json`, else the one saved in the checkpoint); overrides
apply on top, e.g. `--config.data.eval_split=train[:100]`. Prints top-1, top-5 and loss, then
writes them to `DIR/eval_STEP.json` (a folder that cannot be written gets a one-line warning).
The latest readable checkpoint unless --checkpoint names a step: an unreadable latest one is
skipped with a warning, as training skips it.
"""

import json
import os
import sys

from resnet_flax import rundir
from resnet_flax.cli import common
from resnet_flax.errors import UserError, first_line


def _argv_value(argv, name: str):
  for i, arg in enumerate(argv):
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
  return None


def _run_config(workdir: str, step: str):
  """The config dict the run in `workdir` was trained with."""
  from resnet_flax.checkpoint.pretrained import load_checkpoint
  saved = rundir.read_config(workdir)
  if saved is not None:
    return saved
  return load_checkpoint(workdir, int(step) if step else -1)[3]


def main(argv=None) -> None:
  argv = list(sys.argv if argv is None else argv)
  workdir_arg = _argv_value(argv, 'workdir')
  if not workdir_arg:
    print('error: --workdir DIR is required (a run directory holding checkpoints)',
          file=sys.stderr)
    sys.exit(common.EXIT_USER_ERROR)
  if not os.path.isdir(workdir_arg):
    print(f'error: --workdir {workdir_arg}: no such directory', file=sys.stderr)
    sys.exit(common.EXIT_USER_ERROR)
  step_arg = _argv_value(argv, 'checkpoint') or None     # '' as absent: the latest
  if step_arg is not None and not (step_arg.isdigit() or step_arg == '-1'):
    print(f'error: --checkpoint {step_arg}: give a saved step number (or -1, or leave it out, '
          f'for the latest readable checkpoint)', file=sys.stderr)
    sys.exit(common.EXIT_USER_ERROR)
  from absl import app, flags
  from resnet_flax.checkpoint import compat
  try:
    base = compat.config_from_dict(_run_config(workdir_arg, step_arg))
  except UserError as e:
    sys.exit(common.report_error(e))

  def define():
    flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints.')
    flags.DEFINE_integer('checkpoint', -1, 'Step of the checkpoint (-1: latest).')

  def run(cfg, _, args):
    if len(args) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(args[1:])}')
    from resnet_flax.train import loop
    workdir = flags.FLAGS.workdir
    try:
      step, metrics = loop.evaluate_checkpoint(cfg, workdir, flags.FLAGS.checkpoint)
    except UserError as e:
      return common.report_error(e)
    result = {'step': step, 'eval_split': cfg.data.eval_split,
              'data': {'source': cfg.data.source, 'name': cfg.data.name,
                       'dir': rundir.anchored(cfg.data.dir)}, **metrics}
    path = os.path.join(workdir, f'eval_{step}.json')
    print(f'checkpoint {step}, split {cfg.data.eval_split}: top-1 {metrics["eval_top1"]:.4f} '
          f'top-5 {metrics["eval_top5"]:.4f} loss {metrics["eval_loss"]:.4f}', flush=True)
    try:   # the metrics are out already: a folder that cannot be written only loses the file
      with open(path, 'w') as f:
        json.dump(result, f, indent=2)
      print(f'written to {path}')
    except OSError as e:
      print(f'warning: cannot write {path} ({first_line(e)}); the metrics above are not saved',
            file=sys.stderr)
    return 0

  common.run_absl(run, argv, define, base=base)
