"""`TFDataSource`: one split streamed by tf.data (see the package docstring), its pipelines and
its errors, and `load_datasets` for a config's `data` section."""

import math
import os
import sys
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from resnet_flax.data import augment, folder, splits
from resnet_flax.data.source import DATA_DEFAULTS, StreamedSource, local_batch, seed_words
from resnet_flax.data.tf import preprocess as host_preprocess
from resnet_flax.data.tf import records as tf_records
from resnet_flax.data.tf import native_stderr_quiet, tf_message, tfds
from resnet_flax.data.tf.batches import TFTrainBatches
from resnet_flax.errors import DataError


def _warn(message: str) -> None:
  print(f'tf.data source: {message}', file=sys.stderr, flush=True)


class TFDataSource(StreamedSource):
  """A split streamed by tf.data; the interface of every source (`data.source.Source`).

  Build one with `from_tfds` or `from_folder` (or `load_datasets` from a config). Images come
  out uint8 (S, S, 3) at the final size, augmented on the host (`augmented_on_host`). The
  options are the `data` fields of the same names, checked by the config's validation.
  """

  def __init__(self, records, *, preprocess: str = 'none', image_size: int = 0,
               stored_shape: Optional[tuple] = None,
               shuffle_buffer: int = DATA_DEFAULTS['shuffle_buffer'],
               cache: bool = False, threadpool_size: int = 0, random_crop_pad: int = 0,
               random_flip: bool = False,
               eval_crop_fraction: float = DATA_DEFAULTS['eval_crop_fraction']):
    self.records = records
    image_size = int(image_size or 0)
    self.preprocess = preprocess
    self.eval_crop_fraction = float(eval_crop_fraction)
    if not image_size and preprocess != 'imagenet' and stored_shape is None:
      stored_shape = self._first_image_shape()
    stored = stored_shape[0] if stored_shape else None
    if stored_shape and preprocess in ('cifar', 'none') and not image_size and \
        stored_shape[0] != stored_shape[1]:
      raise DataError(f'{records.description}: the first image is {stored_shape[1]}x'
                      f'{stored_shape[0]}, not square; set data.image_size to resize the images '
                      f'to squares')
    self.size = augment.host_output_size(preprocess, image_size, stored)
    self._strict = preprocess == 'none' and not image_size
    self.shuffle_buffer = int(shuffle_buffer)
    self.cache = bool(cache)
    self.threadpool_size = int(threadpool_size or 0)
    self.random_crop_pad, self.random_flip = int(random_crop_pad), bool(random_flip)
    self._cached = {}

  def _preprocess_fn(self, train: bool) -> Callable:
    return host_preprocess.make(self.preprocess, size=self.size, train=train,
                                strict_size=self._strict, random_crop_pad=self.random_crop_pad,
                                random_flip=self.random_flip,
                                crop_fraction=self.eval_crop_fraction)

  # -- construction --------------------------------------------------------------------------

  @classmethod
  def from_tfds(cls, name: str, split: str, *, data_dir: str = '', image_key: str = '',
                label_key: str = '', builder=None, **options) -> 'TFDataSource':
    """The examples of `split` of the prepared TFDS dataset `name` in `data_dir`."""
    builder = builder or tfds.open_builder(name, data_dir)
    try:
      split_name, _, _ = splits.parse_split(split)
    except ValueError as e:
      raise DataError(f'{name}: {e}') from None
    image_key, label_key = tfds.feature_keys(builder, image_key, label_key)
    total = tfds.split_size(builder, split_name, image_key)
    index = splits.select_examples(split, total, name)
    records = tf_records.TFDSRecords(builder, split_name, index.start, len(index), image_key,
                                     label_key, f'{name} {split!r}')
    feature_shape = tuple(builder.info.features[image_key].shape)
    stored = ((feature_shape[0], feature_shape[1], 3)
              if len(feature_shape) == 3 and None not in feature_shape[:2] else None)
    return cls(records, stored_shape=stored, **options)

  @classmethod
  def from_folder(cls, root: str, split: str, *, on_bad: str = 'error',
                  **options) -> 'TFDataSource':
    """The files of `split` of the image-folder tree at `root` (see `folder.list_folder`)."""
    folder.check_on_bad(on_bad)
    paths, labels, class_names = folder.list_folder(root, split, on_bad=on_bad)
    description = f'{root} {split!r}'
    if on_bad == 'skip':
      paths, labels = drop_unreadable(paths, labels, description)
    records = tf_records.FolderRecords(paths, labels, class_names, description)
    return cls(records, **options)

  def _first_image_shape(self) -> tuple:
    try:
      _, record = next(iter(self.records.stream(0, 1)))
    except tf.errors.OpError as e:
      raise DataError(f'{self.records.description}: reading the first record failed '
                      f'({tf_message(e)})') from None
    try:
      image = host_preprocess.decode(self.records.load(record)['data'])
    except tf.errors.OpError as e:
      raise self.decode_error(record['key'].numpy().decode(errors='replace'), e) from None
    return tuple(int(d) for d in image.shape)

  # -- the interface ---------------------------------------------------------------------------

  def train_batches(self, global_batch_size: int, seed: int, process_index: int = 0,
                    process_count: int = 1) -> 'TFTrainBatches':
    return TFTrainBatches(self, global_batch_size, seed, process_index, process_count)

  def eval_batches(self, global_batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the split, in order, as padded batches with `mask`."""
    local = local_batch(global_batch_size, process_index, process_count)
    lo, hi = tf_records.share(self.num_examples, process_index, process_count)
    num_batches = math.ceil(math.ceil(self.num_examples / process_count) / local)
    fn = self._preprocess_fn(False)
    load = (lambda r: r) if self.cache else self.records.load
    zero_key = tf.zeros([2], tf.int64)

    def parse(index, record):
      del index
      record = load(record)
      return {'image': fn(record['data'], zero_key), 'label': record['label'],
              'mask': tf.constant(1.0, tf.float32)}
    padding = tf.data.Dataset.from_tensors(
        {'image': tf.zeros(self.image_shape, tf.uint8), 'label': tf.constant(0, tf.int32),
         'mask': tf.constant(0.0, tf.float32)}).repeat(num_batches * local - (hi - lo))
    if hi > lo:
      ds = self.records_of(lo, hi, order_seed=None, cache_seed=None)
      ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.concatenate(padding)
    else:   # more processes than examples: this process only pads
      ds = padding
    ds = ds.batch(local, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(self._options())
    positions = np.arange(process_index * local, (process_index + 1) * local, dtype=np.int32)
    iterator = ds.as_numpy_iterator()
    for j in range(num_batches):
      try:
        batch = next(iterator)
      except tf.errors.OpError as e:
        def replay(start=j * local):   # the records of the failing batch, undecoded
          return self.records_of(lo, hi, None, None, start).take(local)
        raise self.failure(e, replay, train=False, aug_key=None,
                           where=f'eval batch {j}') from None
      yield {'image': batch['image'], 'label': batch['label'], 'mask': batch['mask'],
             'position': positions.copy()}

  # -- pipelines -------------------------------------------------------------------------------

  def _options(self) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    if self.threadpool_size:
      options.threading.private_threadpool_size = self.threadpool_size
    return options

  def records_of(self, lo: int, hi: int, order_seed: Optional[int], cache_seed: Optional[int],
                 skip: int = 0) -> tf.data.Dataset:
    """(index, record) of the share [lo, hi) in the order of `order_seed`, from `skip` on.

    With `cache`, the records (already loaded) come from memory in the cached order
    (`cache_seed`), shuffled by a buffer seeded with `order_seed`.
    """
    if not self.cache:
      return self.records.stream(lo, hi, order_seed=order_seed,
                                 shuffle_buffer=self.shuffle_buffer, skip=skip)
    ds = self._cache(lo, hi, cache_seed)
    if order_seed is not None and self.shuffle_buffer > 1:
      ds = ds.shuffle(min(self.shuffle_buffer, hi - lo), seed=order_seed,
                      reshuffle_each_iteration=False)
    return tf_records.numbered(ds, hi - lo).skip(skip)

  def _cache(self, lo: int, hi: int, cache_seed: Optional[int]) -> tf.data.Dataset:
    key = (lo, hi, cache_seed)
    if key not in self._cached:
      records = self.records
      ds = records.stream(lo, hi, order_seed=cache_seed).map(
          lambda i, r: records.load(r), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.cache()
      try:   # one full pass fills the in-memory cache that every later pipeline reads
        for _ in ds.batch(1024).prefetch(2).with_options(self._options()):
          pass
      except tf.errors.OpError as e:
        raise DataError(f'{records.description}: reading the records failed '
                        f'({tf_message(e)})') from None
      self._cached[key] = ds
    return self._cached[key]

  def train_seeds(self, seed: int, epoch: int, process_index: int):
    """(order seed, cache order seed or None, augmentation key) of one epoch of a process."""
    order_seed = tf_records.seed_int(seed, epoch, process_index, tf_records.ORDER)
    cache_seed = (tf_records.seed_int(seed, process_index, tf_records.CACHE_ORDER)
                  if self.records.is_folder else None)
    aug_key = tf.constant(seed_words(seed, epoch, process_index, tf_records.AUGMENT),
                          tf.int64)
    return order_seed, cache_seed, aug_key

  def train_dataset(self, lo: int, hi: int, local: int, seeds, skip: int,
                    count: int) -> tf.data.Dataset:
    """Batches of `local` augmented examples of the share [lo, hi), from example `skip` of
    `count`, in the order and with the augmentation of `seeds` (`train_seeds`)."""
    order_seed, cache_seed, aug_key = seeds
    ds = self.records_of(lo, hi, order_seed, cache_seed, skip).take(count - skip)
    fn = self._preprocess_fn(True)
    load = (lambda r: r) if self.cache else self.records.load

    def parse(index, record):
      record = load(record)
      key = tf.random.experimental.stateless_fold_in(aug_key, index)
      return {'image': fn(record['data'], key), 'label': record['label']}
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(self._options())

  # -- errors ----------------------------------------------------------------------------------

  def decode_error(self, key: str, error: Exception) -> DataError:
    what = tf_message(error)
    if self.records.is_folder:
      if host_preprocess.SIZE_MISMATCH in what:
        return DataError(f'{key}: {_size_of(key)}, but the images of this split are '
                         f'{self.size}x{self.size}; the images of a folder source must all have '
                         f'one size, or set data.image_size (e.g. data.image_size={self.size}) '
                         f'to resize every image')
      return DataError(f'{key}: cannot be decoded as an image ({what}); delete or replace the '
                       f'file, or set data.on_bad_image=skip to leave out unreadable files')
    where = f', record {key}' if key else ''
    if host_preprocess.SIZE_MISMATCH in what:
      return DataError(f'{self.records.description}{where}: {what}; images of different sizes '
                       f'need data.image_size (e.g. data.image_size={self.size})')
    return DataError(f'{self.records.description}{where}: cannot be decoded ({what}); the '
                     f'prepared data may be damaged: prepare the dataset again (tfds build)')

  def failure(self, error: Exception, replay: Callable, *, train: bool, aug_key,
              where: str) -> DataError:
    """A DataError naming the record of `replay()` (the failing batch) that fails to decode."""
    fn = self._preprocess_fn(train)
    load = (lambda r: r) if self.cache else self.records.load
    with native_stderr_quiet():   # the bad record's decoding complains on fd 2 as well
      return self._failed_record(error, replay, fn, load, aug_key, where)

  def _failed_record(self, error, replay, fn, load, aug_key, where) -> DataError:
    try:
      for index, record in replay():
        key = record['key'].numpy().decode(errors='replace')
        try:
          seed = (tf.random.experimental.stateless_fold_in(aug_key, index)
                  if aug_key is not None else tf.zeros([2], tf.int64))
          fn(load(record)['data'], seed)
        except tf.errors.OpError as e:
          return self.decode_error(key, e)
    except tf.errors.OpError as e:   # the records themselves cannot be read
      return DataError(f'{self.records.description}: {where}: {tf_message(e)}')
    return DataError(f'{self.records.description}: {where}: the input pipeline failed '
                     f'({tf_message(error)})')


def _size_of(path: str) -> str:
  try:
    image = host_preprocess.decode(tf.io.read_file(path))
    return f'is {int(image.shape[1])}x{int(image.shape[0])}'
  except tf.errors.OpError:
    return 'has another size'


def drop_unreadable(paths: list[str], labels, description: str):
  """Decodes every file once (in parallel) and leaves out those that cannot be decoded."""
  if not len(paths):
    return paths, labels
  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64),
                                           tf.constant(list(paths), tf.string)))
  ds = ds.map(lambda i, p: (i, tf.shape(host_preprocess.decode(tf.io.read_file(p)))[0]),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  good = np.zeros(len(paths), bool)
  with native_stderr_quiet():   # libjpeg's complaints about the files being left out
    for index, _ in ds.ignore_errors().batch(4096).as_numpy_iterator():
      good[index] = True
  if good.all():
    return paths, labels
  bad = np.flatnonzero(~good)
  if good.sum() == 0:
    raise DataError(f'{description}: none of the {len(paths)} files can be decoded '
                    f'(first: {paths[bad[0]]})')
  _warn(f'{description}: skipped {len(bad)} unreadable file{"s" if len(bad) > 1 else ""} '
        f'(first: {paths[bad[0]]})')
  return [p for p, ok in zip(paths, good) if ok], np.asarray(labels)[good]


OPTION_FIELDS = ('preprocess', 'image_size', 'shuffle_buffer', 'cache', 'threadpool_size',
                 'random_crop_pad', 'random_flip', 'eval_crop_fraction')


def load_datasets(data_cfg) -> tuple[TFDataSource, TFDataSource]:
  """(train, eval) tf.data sources of a config's `data` section (every field present, see
  `data.load_datasets`) with data.source 'tfds' or 'folder'. The order and augmentation are
  seeded in `train_batches`."""
  source = data_cfg['source']
  options = {k: data_cfg[k] for k in OPTION_FIELDS}
  # the eval source emits evaluation's size (data.eval_image_size, e.g. 224 for 160 px training)
  eval_options = {**options, 'image_size': data_cfg['eval_image_size'] or options['image_size']}
  train_split, eval_split = data_cfg['train_split'], data_cfg['eval_split']
  if source == 'tfds':
    name, data_dir = data_cfg['name'], os.path.expanduser(data_cfg['dir'])
    builder = tfds.open_builder(name, data_dir)
    keys = {'image_key': data_cfg['image_key'], 'label_key': data_cfg['label_key']}
    return (TFDataSource.from_tfds(name, train_split, builder=builder, **keys, **options),
            TFDataSource.from_tfds(name, eval_split, builder=builder, **keys, **eval_options))
  if source == 'folder':
    root = folder.checked_root(data_cfg)
    on_bad = data_cfg['on_bad_image']
    return (TFDataSource.from_folder(root, train_split, on_bad=on_bad, **options),
            TFDataSource.from_folder(root, eval_split, on_bad=on_bad, **eval_options))
  raise DataError(f'data.source={source!r} has no tf.data back end (tfds and folder have)')
