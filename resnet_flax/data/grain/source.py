"""`GrainSource`: one split read by Grain (see the package docstring), its records, and
`load_datasets` for a config's `data` section."""

import concurrent.futures
import os
import sys
from typing import Iterator

import numpy as np

from resnet_flax.data import arrayrecord, augment, folder, host
from resnet_flax.data.grain import pipeline
from resnet_flax.data.source import DATA_DEFAULTS, StreamedSource, seed_words
from resnet_flax.errors import DataError

ORDER, AUGMENT = 0, 1        # seed streams


def _warn(message: str) -> None:
  print(f'grain source: {message}', file=sys.stderr, flush=True)


class FolderRecords:
  """The files of an image-folder split: (encoded bytes, label) by index."""

  def __init__(self, paths, labels, class_names, description: str):
    self.paths = list(paths)
    self.labels = np.asarray(labels, np.int32)
    self.class_names = list(class_names)
    self.num_classes = len(class_names)
    self.description = description

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    path = self.paths[index]
    try:
      with open(path, 'rb') as f:
        return f.read(), int(self.labels[index])
    except OSError as e:
      raise DataError(f'{path}: cannot be read ({e.strerror or e}); the folder changed after '
                      f'it was listed') from None

  def bad_image(self, index: int, detail: str) -> DataError:
    path = self.paths[index]
    if host.SIZE_MISMATCH in detail:
      return DataError(f'{path}: {detail}; the images of a folder source must all have one '
                       f'size, or set data.image_size to resize every image')
    return DataError(f'{path}: cannot be decoded as an image ({detail}); delete or replace the '
                     f'file, or set data.on_bad_image=skip to leave out unreadable files')

  def drop(self, bad: np.ndarray) -> None:
    keep = np.ones(len(self.paths), bool)
    keep[bad] = False
    self.paths = [p for p, ok in zip(self.paths, keep) if ok]
    self.labels = self.labels[keep]


def _readable(records, index: int) -> bool:
  try:
    host.decode(records[index][0])
    return True
  except host.BadImage:
    return False


def drop_unreadable(records) -> None:
  """Decodes every record once (threads: Pillow releases the GIL) and leaves out those that
  cannot be decoded, with one line on stderr; DataError when none can."""
  n = len(records)
  with concurrent.futures.ThreadPoolExecutor(folder.default_workers()) as pool:
    good = np.fromiter(pool.map(lambda i: _readable(records, i), range(n), chunksize=64),
                       bool, n)
  if good.all():
    return
  bad = np.flatnonzero(~good)
  first = records.bad_image(int(bad[0]), 'unreadable')
  if not good.any():
    raise DataError(f'{records.description}: none of the {n} images can be decoded '
                    f'(first: {str(first).split(": cannot")[0]})')
  _warn(f'{records.description}: skipped {len(bad)} unreadable image'
        f'{"s" if len(bad) > 1 else ""} (first: {str(first).split(": cannot")[0]})')
  records.drop(bad)


class GrainSource(StreamedSource):
  """A split read by Grain; the interface of every source (`data.source.Source`).

  Build one with `from_folder` or `from_arrayrecord` (or `load_datasets` from a config).
  Images come out uint8 (S, S, 3) at the final size, augmented on the host
  (`augmented_on_host`). The options are the `data` fields of the same names.
  """

  def __init__(self, records, *, preprocess: str = 'none', image_size: int = 0,
               random_crop_pad: int = 0, random_flip: bool = False,
               eval_crop_fraction: float = DATA_DEFAULTS['eval_crop_fraction'],
               worker_count: int = 0,
               worker_buffer_size: int = DATA_DEFAULTS['worker_buffer_size'],
               image_library: str = DATA_DEFAULTS['image_library']):
    self.records = records
    self.preprocess = preprocess
    image_size = int(image_size or 0)
    stored = None
    if not image_size and preprocess != 'imagenet':
      first = self._first_image_shape()
      if preprocess in ('cifar', 'none') and first[0] != first[1]:
        raise DataError(f'{records.description}: the first image is {first[1]}x{first[0]}, '
                        f'not square; set data.image_size to resize the images to squares')
      stored = first[0]
    self.size = augment.host_output_size(preprocess, image_size, stored)
    self.strict = preprocess == 'none' and not image_size
    self.random_crop_pad, self.random_flip = int(random_crop_pad), bool(random_flip)
    self.eval_crop_fraction = float(eval_crop_fraction)
    self.worker_count, self.worker_buffer_size = int(worker_count), int(worker_buffer_size)
    self.image_library = image_library

  @classmethod
  def from_folder(cls, root: str, split: str, *, on_bad: str = 'error',
                  **options) -> 'GrainSource':
    """The files of `split` of the image-folder tree at `root` (see `folder.list_folder`)."""
    paths, labels, class_names = folder.list_folder(root, split, on_bad=on_bad)
    records = FolderRecords(paths, labels, class_names, f'{root} {split!r}')
    if on_bad == 'skip':
      drop_unreadable(records)
    return cls(records, **options)

  @classmethod
  def from_arrayrecord(cls, dest: str, split: str, *, on_bad: str = 'error',
                       **options) -> 'GrainSource':
    """The records of `split` of a folder written by `resnet-flax make-arrayrecord`."""
    folder.check_on_bad(on_bad)
    records = arrayrecord.ArrayRecordRecords(dest, split)
    if on_bad == 'skip':
      drop_unreadable(records)
    return cls(records, **options)

  def _first_image_shape(self) -> tuple:
    data, _ = self.records[0]
    try:
      return host.decode(data).shape
    except host.BadImage as e:
      raise self.records.bad_image(0, str(e)) from None

  def preprocess_fn(self, train: bool):
    return host.make(self.preprocess, size=self.size, train=train, strict_size=self.strict,
                     random_crop_pad=self.random_crop_pad, random_flip=self.random_flip,
                     crop_fraction=self.eval_crop_fraction, library=self.image_library)

  def train_seeds(self, seed: int) -> tuple[int, tuple[int, int]]:
    """(the order's shuffle seed (32 bits), the augmentation's seed words) of a run seed."""
    hi, lo = seed_words(seed, ORDER)
    return (hi ^ lo) & 0xFFFFFFFF, seed_words(seed, AUGMENT)

  # -- the interface ---------------------------------------------------------------------------

  def train_batches(self, global_batch_size: int, seed: int, process_index: int = 0,
                    process_count: int = 1) -> pipeline.GrainTrainBatches:
    return pipeline.GrainTrainBatches(self, global_batch_size, seed, process_index,
                                      process_count)

  def eval_batches(self, global_batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    return pipeline.eval_batches(self, global_batch_size, process_index, process_count)


OPTION_FIELDS = ('preprocess', 'image_size', 'random_crop_pad', 'random_flip',
                 'eval_crop_fraction', 'worker_count', 'worker_buffer_size', 'image_library')


def load_datasets(data_cfg) -> tuple[GrainSource, GrainSource]:
  """(train, eval) Grain sources of a config's `data` section (every field present, see
  `data.load_datasets`) with data.source 'folder' or 'arrayrecord'."""
  source = data_cfg['source']
  options = {k: data_cfg[k] for k in OPTION_FIELDS}
  on_bad = data_cfg['on_bad_image']
  # the eval source emits evaluation's size (data.eval_image_size, e.g. 224 for 160 px training)
  eval_options = {**options, 'image_size': data_cfg['eval_image_size'] or options['image_size']}
  splits = ((data_cfg['train_split'], options), (data_cfg['eval_split'], eval_options))
  if source == 'folder':
    root = folder.checked_root(data_cfg)
    return tuple(GrainSource.from_folder(root, s, on_bad=on_bad, **o) for s, o in splits)
  if source == 'arrayrecord':
    dest = os.path.expanduser(data_cfg['dir'])
    return tuple(GrainSource.from_arrayrecord(dest, s, on_bad=on_bad, **o) for s, o in splits)
  raise DataError(f'data.source={source!r} has no Grain back end (folder and arrayrecord '
                  f'have)')
