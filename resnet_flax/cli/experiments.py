"""`resnet-flax sweep`, `resnet-flax plot`, `resnet-flax gradient-flow` and `resnet-flax
torch-train`: research workflows over whole runs, and a run's recipe trained by the PyTorch
reference network for an accuracy comparison (see docs/REPRODUCING.md)."""

import argparse
import os
import sys

from resnet_flax.cli import common
from resnet_flax.errors import ConfigError, UserError


def sweep(argv=None) -> int:
  """Run a sweep: `resnet-flax sweep --config FILE --workdir DIR --sweep model.depth=20,32,56
  --sweep model.version=v1,v2 [--dry-run] [--config.FIELD=VALUE ...]`. One training run per
  point of the cartesian product, in `DIR/<field=value,...>/`, one after the other; finished
  points are skipped and interrupted ones resume, so rerunning the same command completes a
  sweep. `--dry-run` prints the train commands, one per line, for a cluster scheduler. Writes
  `DIR/results.csv` and `DIR/results.md`; `resnet-flax plot DIR` draws the curves."""
  from resnet_flax import configs
  from resnet_flax.experiments import sweep as sweeps
  argv = list(sys.argv if argv is None else argv)
  parser = argparse.ArgumentParser(prog='resnet-flax sweep',
                                   description=sweep.__doc__.split('\n')[0])
  parser.add_argument('--config', default=configs.DEFAULT, help='training config file or name')
  parser.add_argument('--workdir', required=True, help='sweep directory (one sub-folder a point)')
  parser.add_argument('--sweep', action='append', default=[], metavar='FIELD=V1,V2',
                      help='a swept config field and its values; repeat for more axes')
  parser.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
  args, extra = parser.parse_known_args(argv[1:])
  unknown = [a for a in extra if not a.startswith('--config.')]
  if unknown:
    parser.error(f'unexpected arguments: {" ".join(unknown)} (overrides are --config.FIELD=V)')
  error = common.unknown_override(['sweep'] + extra)
  if error:
    return common.report_error(ConfigError(error))
  if not args.sweep:
    parser.error('give at least one --sweep FIELD=V1,V2,...')
  def check(point_args):   # the point's config exactly as its training will load it
    from resnet_flax import config as config_lib
    config, _ = common.load_config(['train', *point_args])
    config_lib.validate(config)
    return config

  try:
    axes = [sweeps.parse_axis(s) for s in args.sweep]
    failed = sweeps.run_sweep(configs.path(args.config), args.workdir, axes, extra,
                              dry_run=args.dry_run, check=check)
  except UserError as e:
    return common.report_error(e)
  except KeyboardInterrupt:
    return 130
  if failed and args.dry_run:
    return common.EXIT_USER_ERROR
  return 1 if failed else 0


def plot(argv=None) -> int:
  """Plot runs: `resnet-flax plot DIR [DIR ...] [--out FILE.png] [--select FIELD=VALUE] [--x
  epoch|time]`. DIR is
  a sweep directory (one run per sub-folder) or a single run's workdir; runs of several
  directories share the figures. Writes the training curves (loss and top-1 error against
  epoch, train dashed, eval solid) to --out (default DIR/curves.png) and, when the runs differ
  in `model.depth`, the error-against-depth figure next to it (`<out>_vs_depth.png`)."""
  from resnet_flax.experiments import plotting
  argv = list(sys.argv if argv is None else argv)
  parser = argparse.ArgumentParser(prog='resnet-flax plot',
                                   description=plot.__doc__.split('\n')[0])
  parser.add_argument('dirs', nargs='+', help='sweep directories or run workdirs')
  parser.add_argument('--out', help='PNG of the curves (default: FIRST_DIR/curves.png)')
  parser.add_argument('--select', action='append', default=[], metavar='FIELD=VALUE',
                      help='keep only runs whose config has this value; repeatable')
  parser.add_argument('--title', default='', help='figure title')
  parser.add_argument('--x', default='epoch',
                      help="the curves' x axis: epoch (default) or time (the run's wall time; "
                           "eval points only)")
  args = parser.parse_args(argv[1:])
  try:
    out = plotting.figure_path(args.out or os.path.join(args.dirs[0], 'curves.png'))
    runs = plotting.load_runs(args.dirs, args.select)
    fig, _ = plotting.curves_figure(runs, args.title, args.x)
    print(f'{len(runs)} runs; curves: {plotting.save(fig, out)}')
    fig, _ = plotting.depth_figure(runs, args.title)
    if fig is not None:
      depth_out = plotting.save(fig, os.path.splitext(out)[0] + '_vs_depth.png')
      print(f'error against depth: {depth_out}')
  except UserError as e:
    return common.report_error(e)
  return 0


def gradient_flow(argv=None) -> None:
  """Gradient flow of plain against residual networks: `resnet-flax gradient-flow --models
  plain56,resnet56 [--steps K] [--out PREFIX] [--config FILE] [--config.FIELD=V ...]`. Per
  main-path layer (stem, each unit's convolutions, classifier): the norm of the loss gradient
  with respect to its kernel and the RMS of its output, at initialisation and after K training
  steps of the config (default: the offline quick start), on one batch. Writes PREFIX.csv and
  PREFIX.png and prints the early-to-late gradient ratio of each model."""
  from absl import app, flags

  def define():
    flags.DEFINE_list('models', ['plain56', 'resnet56'], 'Registry names to compare.')
    flags.DEFINE_integer('steps', 100, 'Training steps between the two measurements.')
    flags.DEFINE_string('out', 'gradient_flow', 'Output prefix: PREFIX.csv and PREFIX.png.')

  def run(config, _, args):
    if len(args) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(args[1:])}')
    from resnet_flax.experiments import gradient_flow as flow
    from resnet_flax.experiments import plotting
    from resnet_flax.models import NAMES
    models, steps, out = flags.FLAGS.models, flags.FLAGS.steps, flags.FLAGS.out
    unknown = [m for m in models if m not in NAMES]
    if unknown:
      print(f'config error: --models: unknown model {unknown[0]!r}; e.g. plain20, resnet20, '
            f'plain56, resnet56, plain18, resnet18', file=sys.stderr)
      return common.EXIT_USER_ERROR
    if steps < 0:
      print(f'config error: --steps={steps} must not be negative', file=sys.stderr)
      return common.EXIT_USER_ERROR
    try:
      rows = flow.diagnose(config, models, steps)
    except UserError as e:
      return common.report_error(e)
    csv_path = flow.write_csv(rows, out + '.csv')
    fig, _ = flow.figure(rows)
    print(f'per-layer numbers: {csv_path}; figure: {plotting.save(fig, out + ".png")}')
    return 0

  common.run_absl(run, argv, define)


def torch_train(argv=None) -> int:
  """A config's CIFAR recipe trained by the PyTorch reference network on the same data,
  batches and schedule, for an accuracy comparison: `resnet-flax torch-train --config FILE
  --workdir DIR [--threads T] [--config.FIELD=VALUE ...]` (see
  resnet_flax/tools/torch_train.py)."""
  argv = list(sys.argv if argv is None else argv)
  parser = argparse.ArgumentParser(prog='resnet-flax torch-train',
                                   description=torch_train.__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='a new run folder')
  parser.add_argument('--threads', type=int, default=0,
                      help="torch's threads (default: the cores this process may use)")
  # --config FILE and its --config.FIELD=VALUE overrides are load_config's
  args = parser.parse_args(common.split_config_args(argv)[1])
  try:
    config, _ = common.load_config(argv)
    from resnet_flax.tools import torch_train as tool
    from resnet_flax.train.loop import NonFiniteLossError
    try:
      tool.train(config, args.workdir, threads=args.threads)
    except NonFiniteLossError as e:   # as `resnet-flax train` reports it
      print(f'stopped: {e}', file=sys.stderr)
      return 1
  except UserError as e:
    return common.report_error(e)
  return 0
