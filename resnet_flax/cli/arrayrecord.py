"""`resnet-flax make-arrayrecord`: an image-folder tree or a prepared TFDS dataset -> sharded
ArrayRecord files of encoded images and labels, with a metadata file (class names, counts),
read by `--config.data.source=arrayrecord --config.data.dir=DEST` (the Grain back end).

  resnet-flax make-arrayrecord --in ROOT --out DEST [--splits train,val] [--shards N]
  resnet-flax make-arrayrecord --from tfds --name cifar10 [--data-dir D] --out DEST \\
      --splits train,test

The images are checked (decoded once) and written as they are, not re-encoded. A destination
that already holds shards is refused unless `--overwrite`.
"""

import argparse
import sys
import time

from resnet_flax.cli import common
from resnet_flax.errors import ConfigError, UserError


class Progress:
  """A progress bar on stderr (a terminal: redrawn in place; otherwise a line per 10%)."""

  def __init__(self, stream=sys.stderr):
    self.stream, self.tty = stream, stream.isatty()
    self.start, self.shown = time.perf_counter(), {}

  def __call__(self, split: str, done: int, total: int) -> None:
    tenth = 10 * done // max(total, 1)
    if not self.tty and self.shown.get(split) == tenth:
      return
    self.shown[split] = tenth
    rate = done / max(time.perf_counter() - self.start, 1e-9)
    width = 30
    bar = '#' * (width * done // max(total, 1))
    line = f'{split}: [{bar:<{width}}] {done:,}/{total:,} images ({rate:,.0f}/s)'
    if self.tty:
      self.stream.write('\r' + line + ('\n' if done >= total else ''))
    else:
      self.stream.write(line + '\n')
    self.stream.flush()
    if done >= total:
      self.start = time.perf_counter()


def make_arrayrecord(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='resnet-flax make-arrayrecord',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--from', dest='source', default='folder', choices=['folder', 'tfds'],
                      help='what to convert (default: an image-folder tree)')
  parser.add_argument('--in', dest='root', help='folder: the tree ROOT/<split>/<class>/*.jpg')
  parser.add_argument('--name', help='tfds: the dataset name')
  parser.add_argument('--data-dir', default='', help="tfds: its data_dir (default: TFDS's)")
  parser.add_argument('--out', required=True, help='the destination folder')
  parser.add_argument('--splits', default='', help='comma-separated splits (default: folder: '
                      'every split folder; tfds: every split)')
  parser.add_argument('--shards', type=int, default=0,
                      help='shards per split (default: one per 10,000 images)')
  parser.add_argument('--on-bad-image', default='error', choices=['error', 'skip'],
                      help='an image that cannot be decoded stops the conversion, or is left '
                           'out and counted')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace the shards and metadata already in --out')
  args = parser.parse_args((sys.argv if argv is None else argv)[1:])
  from resnet_flax.data import arrayrecord_writer as writer
  if args.shards < 0:
    return common.report_error(ConfigError(f'--shards {args.shards}: give a positive number of '
                                           f'shards per split, or 0 (one per 10,000 images)'))
  options = dict(shards=args.shards, on_bad=args.on_bad_image, overwrite=args.overwrite,
                 progress=Progress())
  try:
    if args.source == 'folder':
      if not args.root:
        parser.error('--in ROOT is needed to convert a folder')
      meta = writer.from_folder(args.root, args.out, _splits(args, writer), **options)
    else:
      if not args.name:
        parser.error('--name is needed to convert a TFDS dataset')
      meta = writer.from_tfds(args.name, args.data_dir, args.out, _splits(args, writer),
                              **options)
  except UserError as e:
    return common.report_error(e)
  for split, entry in meta['splits'].items():
    skipped = f", {entry['skipped']} skipped (first: {entry['first_skipped']})" \
        if entry['skipped'] else ''
    print(f"{split}: {entry['num_examples']:,} images in {len(entry['shards'])} shards"
          f"{skipped}")
  print(f"{len(meta['class_names'])} classes; train on it with --config.data.source="
        f"arrayrecord --config.data.dir={args.out}")
  return 0


def _splits(args, writer) -> list:
  if args.splits:
    return [s.strip() for s in args.splits.split(',') if s.strip()]
  return writer.default_splits(args.source, args.root or '', args.name or '', args.data_dir)
