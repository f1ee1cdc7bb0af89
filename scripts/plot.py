"""Plot runs: `python scripts/plot.py DIR [DIR ...] [--out FILE.png] [--select FIELD=VALUE]`.

DIR is a sweep directory (one run per sub-folder) or a single run's workdir; runs of several
directories share the figures. Writes the training curves (loss and top-1 error against epoch,
train dashed, eval solid) to --out (default DIR/curves.png) and, when the runs differ in
`model.depth`, the error-against-depth figure next to it (`<out>_vs_depth.png`).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_flax import cli, plotting, sweep  # noqa: E402


def main(argv) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('dirs', nargs='+', help='sweep directories or run workdirs')
  parser.add_argument('--out', help='PNG of the curves (default: FIRST_DIR/curves.png)')
  parser.add_argument('--select', action='append', default=[], metavar='FIELD=VALUE',
                      help='keep only runs whose config has this value; repeatable')
  parser.add_argument('--title', default='', help='figure title')
  args = parser.parse_args(argv[1:])
  try:
    runs = plotting.load_runs(args.dirs, args.select)
  except sweep.SweepError as e:
    return cli.report_error(e)
  out = args.out or os.path.join(args.dirs[0], 'curves.png')
  fig, _ = plotting.curves_figure(runs, args.title)
  print(f'{len(runs)} runs; curves: {plotting.save(fig, out)}')
  fig, _ = plotting.depth_figure(runs, args.title)
  if fig is not None:
    print(f'error against depth: {plotting.save(fig, os.path.splitext(out)[0] + "_vs_depth.png")}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
