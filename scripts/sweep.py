"""Run a sweep: `python scripts/sweep.py --config configs/X.py --workdir DIR
--sweep model.depth=20,32,56 --sweep model.version=v1,v2 [--dry-run] [--config.FIELD=VALUE ...]`.

One training run per point of the cartesian product, in `DIR/<field=value,...>/`, one after the
other; finished points are skipped and interrupted ones resume, so rerunning the same command
completes a sweep. `--dry-run` prints the train commands, one per line, for a cluster scheduler.
Writes `DIR/results.csv` and `DIR/results.md`; `scripts/plot.py DIR` draws the curves.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_flax import cli, sweep  # noqa: E402


def main(argv) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default=cli.DEFAULT_CONFIG, help='training config file')
  parser.add_argument('--workdir', required=True, help='sweep directory (one sub-folder a point)')
  parser.add_argument('--sweep', action='append', default=[], metavar='FIELD=V1,V2',
                      help='a swept config field and its values; repeat for more axes')
  parser.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
  args, extra = parser.parse_known_args(argv[1:])
  unknown = [a for a in extra if not a.startswith('--config.')]
  if unknown:
    parser.error(f'unexpected arguments: {" ".join(unknown)} (overrides are --config.FIELD=V)')
  error = cli.unknown_override(['sweep'] + extra)
  if error:
    print(error, file=sys.stderr)
    return cli.EXIT_USER_ERROR
  if not args.sweep:
    parser.error('give at least one --sweep FIELD=V1,V2,...')
  try:
    axes = [sweep.parse_axis(s) for s in args.sweep]
    failed = sweep.run_sweep(args.config, args.workdir, axes, extra, dry_run=args.dry_run)
  except sweep.SweepError as e:
    return cli.report_error(e)
  except KeyboardInterrupt:
    return 130
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
