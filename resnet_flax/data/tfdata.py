"""The tf.data back end: TFDS datasets and image-folder trees, streamed, decoded and augmented on
the host by tf.data, behind the interface of the in-memory sources (see `arrays.ArrayDataset`).

Two kinds of records feed one pipeline:

* TFDS (`TFDataSource.from_tfds`): a prepared TFDS dataset in `data_dir`, read as encoded
  JPEG/PNG bytes (`tfds.decode.SkipDecoding`), so decoding and cropping happen in one op. The
  image and label features are the first `tfds.features.Image` and the first `ClassLabel` of the
  dataset (or `image_key` / `label_key`).
* an image-folder tree (`TFDataSource.from_folder`): the file list of `folder.list_folder`
  (ROOT/<split>/<class>/*.jpg), read with `tf.io.read_file`.

Splits use the TFDS slicing syntax of one split ('train', 'train[:45000]', 'train[90%:]').

Processes: process p of n reads the contiguous share [N*p//n, N*(p+1)//n) of the N selected
examples (what `tfds.even_splits` does; TFDS then reads only the files of that share). Train:
steps_per_epoch = (N // n) // local batch on every process. Eval: every process yields
ceil(ceil(N / n) / local batch) batches, padded with `mask` 0, so each example counts once.
`position` is the index in the global batch: process p fills [p*B_local, (p+1)*B_local).

Determinism and resume: epoch e of process p reads its share in an order fixed by
(seed, e, p) -- a full permutation of the file list for folders; for TFDS a seeded file order
plus a seeded `shuffle` buffer of `shuffle_buffer` records (`reshuffle_each_iteration=False`) --
and the augmentation of the example at index i of that order uses stateless random ops keyed by
(seed, e, p, i). So `batch(k)` is a function of (seed, k). `batch` expects consecutive steps;
any other step (a resume) rebuilds the pipeline of its epoch and skips to the example before
anything is decoded (for folders the skip is a slice of the file list). Each epoch starts a
new pipeline; the shuffle buffer (TFDS, or `cache`) is filled again at that point.

`cache=True` keeps the encoded records of this process's share in memory after one read (a
warm-up pass when the pipeline is first built), and shuffles them with the buffer per epoch
(folders: the cache holds the files in a seeded random order first).

Bad data raises `DataError` (from `arrays`) naming the fix: a dataset not prepared in
`data_dir` (nothing is downloaded: the message says how to prepare it), an unknown split,
feature or dataset name. A file that cannot be decoded stops the pipeline; the failing batch is
then replayed record by record to name the file (folders) or the record id (TFDS) in the error.
With `on_bad='skip'` (folders only) every file is decoded once when the source is built, and
unreadable ones are left out of the list (counted on stderr), so batches stay exact.

Unlike the in-memory back end (whose augmentation is keyed by the position in the global
batch), the batches here depend on the process count: each process shuffles and augments its
own share.

Performance: parallel `map` (AUTOTUNE, deterministic order), `prefetch`, one intra-op thread per
element, an optional private thread pool (`threadpool_size`), JPEG crops decoded with
`decode_and_crop_jpeg`; `scripts/input_benchmark.py` measures a config's pipeline alone.

Config fields read (`load_datasets`; missing ones take these defaults): source, name, dir,
train_split, eval_split, preprocess ('none'; 'auto' picks by TFDS name), image_size (0),
random_crop_pad (0), random_flip (False), on_bad_image ('error'), image_key (''), label_key
(''), shuffle_buffer (10000), cache (False), threadpool_size (0).

TensorFlow never takes the accelerators (its GPUs are hidden) and is imported only by this
module and `tf_preprocess`; `tensorflow_datasets` only for TFDS sources.
"""

import difflib
import math
import os
import re
import sys
from typing import Any, Callable, Iterator, Optional

import numpy as np

# TensorFlow's C++ INFO lines (buffer sizes, thread pools) are noise in training logs
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
import tensorflow as tf  # noqa: E402

from resnet_flax.data import splits, tf_preprocess  # noqa: E402
from resnet_flax.data.arrays import DataError  # noqa: E402

try:  # the input pipeline runs on the CPU; the accelerators belong to JAX
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # devices already initialised, or none
  pass

DEFAULT_SHUFFLE_BUFFER = 10_000
ON_BAD = ('error', 'skip')
_ORDER, _AUGMENT, _CACHE_ORDER = 0, 1, 2     # seed streams


def _seed_words(*parts: int) -> tuple[int, int]:
  """Two 31-bit words from a tuple of non-negative ints (numpy's SeedSequence mixing)."""
  words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2)
  return int(words[0] >> 1), int(words[1] >> 1)


def _seed_int(*parts: int) -> int:
  hi, lo = _seed_words(*parts)
  return (hi << 31) | lo


def _share(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  return n * process_index // process_count, n * (process_index + 1) // process_count


def _local_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process {process_index} of {process_count} does not exist')
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global batch {global_batch_size} is not divisible by {process_count} '
                     f'processes')
  return global_batch_size // process_count


def _numbered(ds: tf.data.Dataset, count: int) -> tf.data.Dataset:
  """(index, element) pairs, like `enumerate`."""
  return tf.data.Dataset.zip((tf.data.Dataset.range(count), ds))


def _first_line(error: Exception) -> str:
  """The readable part of an error message (TensorFlow's op and node decorations dropped)."""
  text = getattr(error, 'message', None) or str(error)
  text = re.sub(r'\{\{[^}]*\}\}\s*', '', text)
  text = re.sub(r'\s*\[(Op|\[)[^\]]*\].*$', '', text, flags=re.S).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _warn(message: str) -> None:
  print(f'tf.data source: {message}', file=sys.stderr, flush=True)


# --- records: (encoded bytes or path, label, key) in a deterministic order --------------------

class _FolderRecords:
  """The files of an image-folder split; `data` is a path until `load` reads it."""

  def __init__(self, paths, labels, class_names, description: str):
    self.paths = np.asarray(paths, dtype=object)
    self.labels = np.asarray(labels, np.int32)
    self.num_classes = len(class_names)
    self.class_names = list(class_names)
    self.description = description
    self.is_folder = True

  def __len__(self):
    return len(self.paths)

  def order(self, lo: int, hi: int, order_seed: Optional[int]) -> np.ndarray:
    """Indices (into the file list) of the share [lo, hi) in the order of `order_seed`."""
    if order_seed is None:
      return np.arange(lo, hi)
    return lo + np.random.default_rng(order_seed).permutation(hi - lo)

  def stream(self, lo: int, hi: int, *, order_seed: Optional[int] = None,
             shuffle_buffer: int = 0, skip: int = 0) -> tf.data.Dataset:
    """(index in this order, record) of the share, from `skip` on; nothing is read yet."""
    del shuffle_buffer   # the permutation of the file list is a full shuffle
    idx = self.order(lo, hi, order_seed)[skip:]
    paths = tf.constant(self.paths[idx].tolist(), tf.string)
    return tf.data.Dataset.from_tensor_slices((
        np.arange(skip, hi - lo, dtype=np.int64),
        {'data': paths, 'label': self.labels[idx], 'key': paths}))

  @staticmethod
  def load(record: dict) -> dict:
    return {**record, 'data': tf.io.read_file(record['data'])}


class _TFDSRecords:
  """The examples [first, first + count) of one split of a prepared TFDS dataset."""

  def __init__(self, builder, split: str, first: int, count: int, image_key: str,
               label_key: str, description: str):
    self.builder, self.split, self.first, self.count = builder, split, first, count
    self.image_key, self.label_key = image_key, label_key
    label = builder.info.features[label_key]
    self.num_classes = int(label.num_classes)
    self.class_names = list(label.names)
    self.description = description
    self.is_folder = False

  def __len__(self):
    return self.count

  def stream(self, lo: int, hi: int, *, order_seed: Optional[int] = None,
             shuffle_buffer: int = 0, skip: int = 0) -> tf.data.Dataset:
    import tensorflow_datasets as tfds
    spec = f'{self.split}[{self.first + lo}:{self.first + hi}]'
    read_config = tfds.ReadConfig(
        shuffle_seed=order_seed, shuffle_reshuffle_each_iteration=False, try_autocache=False,
        skip_prefetch=True, add_tfds_id=True)
    ds = self.builder.as_dataset(split=spec, shuffle_files=order_seed is not None,
                                 decoders={self.image_key: tfds.decode.SkipDecoding()},
                                 read_config=read_config)
    image_key, label_key = self.image_key, self.label_key

    def record(ex):
      return {'data': ex[image_key], 'label': tf.cast(ex[label_key], tf.int32),
              'key': ex['tfds_id'] if 'tfds_id' in ex else tf.constant('')}
    ds = ds.take(hi - lo).map(record)
    if order_seed is not None and shuffle_buffer > 1:
      ds = ds.shuffle(min(shuffle_buffer, hi - lo), seed=order_seed,
                      reshuffle_each_iteration=False)
    return _numbered(ds, hi - lo).skip(skip)

  @staticmethod
  def load(record: dict) -> dict:
    return record


# --- the source ---------------------------------------------------------------------------

class TFDataSource:
  """A split streamed by tf.data; the interface of `arrays.ArrayDataset`.

  Build one with `from_tfds` or `from_folder` (or `load_datasets` from a config). Images come
  out uint8 (S, S, 3) at the final size, augmented on the host (`augmented_on_host`).
  """
  augmented_on_host = True

  def __init__(self, records, *, preprocess: str = 'none', image_size: int = 0,
               stored_shape: Optional[tuple] = None, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
               cache: bool = False, threadpool_size: int = 0, random_crop_pad: int = 0,
               random_flip: bool = False,
               eval_crop_fraction: float = tf_preprocess.CENTER_CROP_FRACTION):
    self._records = records
    if preprocess not in tf_preprocess.PRESETS:
      raise DataError(f'data.preprocess={preprocess!r}: allowed: auto, '
                      f'{", ".join(tf_preprocess.PRESETS)}')
    image_size = int(image_size or 0)
    if image_size < 0:
      raise DataError(f'data.image_size={image_size}: must be 0 or positive')
    if shuffle_buffer < 0:
      raise DataError(f'data.shuffle_buffer={shuffle_buffer}: must be >= 0')
    self.preprocess = preprocess
    if random_crop_pad < 0:
      raise DataError(f'data.random_crop_pad={random_crop_pad}: must be >= 0')
    if not 0.0 < eval_crop_fraction <= 1.0:
      raise DataError(f'data.eval_crop_fraction={eval_crop_fraction}: must be in (0, 1]')
    self.eval_crop_fraction = float(eval_crop_fraction)
    if not image_size and preprocess != 'imagenet' and stored_shape is None:
      stored_shape = self._first_image_shape()
    stored = stored_shape[0] if stored_shape else None
    if stored_shape and preprocess in ('cifar', 'none') and not image_size and \
        stored_shape[0] != stored_shape[1]:
      raise DataError(f'{records.description}: the first image is {stored_shape[1]}x'
                      f'{stored_shape[0]}, not square; set data.image_size to resize the images '
                      f'to squares')
    self.size = tf_preprocess.output_size(preprocess, image_size, stored)
    self._strict = preprocess == 'none' and not image_size
    self.shuffle_buffer = int(shuffle_buffer)
    self.cache = bool(cache)
    self.threadpool_size = int(threadpool_size or 0)
    self.random_crop_pad, self.random_flip = int(random_crop_pad), bool(random_flip)
    self._cached = {}

  def _preprocess_fn(self, train: bool) -> Callable:
    return tf_preprocess.make(self.preprocess, size=self.size, train=train,
                              strict_size=self._strict, random_crop_pad=self.random_crop_pad,
                              random_flip=self.random_flip,
                              crop_fraction=self.eval_crop_fraction)

  # -- construction --------------------------------------------------------------------------

  @classmethod
  def from_tfds(cls, name: str, split: str, *, data_dir: str = '', image_key: str = '',
                label_key: str = '', builder=None, **options) -> 'TFDataSource':
    """The examples of `split` of the prepared TFDS dataset `name` in `data_dir`."""
    builder = builder or open_builder(name, data_dir)
    try:
      split_name, _, _ = splits.parse_split(split)
    except ValueError as e:
      raise DataError(f'{name}: {e}') from None
    image_key, label_key = _feature_keys(builder, image_key, label_key)
    total = _split_size(builder, split_name, image_key)
    try:
      _, index = splits.select(split, total)
    except ValueError as e:
      raise DataError(f'{name}: {e}; check data.train_split / data.eval_split') from None
    records = _TFDSRecords(builder, split_name, index.start, len(index), image_key, label_key,
                           f'{name} {split!r}')
    feature_shape = tuple(builder.info.features[image_key].shape)
    stored = ((feature_shape[0], feature_shape[1], 3)
              if len(feature_shape) == 3 and None not in feature_shape[:2] else None)
    return cls(records, stored_shape=stored, **_preset_option(options, name))

  @classmethod
  def from_folder(cls, root: str, split: str, *, on_bad: str = 'error',
                  **options) -> 'TFDataSource':
    """The files of `split` of the image-folder tree at `root` (see `folder.list_folder`)."""
    from resnet_flax.data import folder
    if on_bad not in ON_BAD:
      raise DataError(f'on_bad={on_bad!r}: allowed: {", ".join(map(repr, ON_BAD))} '
                      f'(config.data.on_bad_image)')
    paths, labels, class_names = folder.list_folder(root, split, on_bad=on_bad)
    description = f'{root} {split!r}'
    if on_bad == 'skip':
      paths, labels = _drop_unreadable(paths, labels, description)
    records = _FolderRecords(paths, labels, class_names, description)
    return cls(records, **_preset_option(options, ''))

  def _first_image_shape(self) -> tuple:
    try:
      _, record = next(iter(self._records.stream(0, 1)))
    except tf.errors.OpError as e:
      raise DataError(f'{self._records.description}: reading the first record failed '
                      f'({_first_line(e)})') from None
    try:
      image = tf_preprocess.decode(self._records.load(record)['data'])
    except tf.errors.OpError as e:
      raise self._decode_error(record['key'].numpy().decode(errors='replace'), e) from None
    return tuple(int(d) for d in image.shape)

  # -- the interface ---------------------------------------------------------------------------

  @property
  def num_examples(self) -> int:
    return len(self._records)

  def __len__(self):
    return len(self._records)

  @property
  def num_classes(self) -> int:
    return self._records.num_classes

  @property
  def class_names(self) -> list[str]:
    return self._records.class_names

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.size, self.size, 3)

  def train_batches(self, global_batch_size: int, seed: int, process_index: int = 0,
                    process_count: int = 1) -> 'TFTrainBatches':
    return TFTrainBatches(self, global_batch_size, seed, process_index, process_count)

  def eval_batches(self, global_batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the split, in order, as padded batches with `mask`."""
    local = _local_batch(global_batch_size, process_index, process_count)
    lo, hi = _share(self.num_examples, process_index, process_count)
    num_batches = math.ceil(math.ceil(self.num_examples / process_count) / local)
    fn = self._preprocess_fn(False)
    load = (lambda r: r) if self.cache else self._records.load
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
      ds = self._records_of(lo, hi, order_seed=None, cache_seed=None)
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
          return self._records_of(lo, hi, None, None, start).take(local)
        raise self._failure(e, replay, train=False, aug_key=None,
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

  def _records_of(self, lo: int, hi: int, order_seed: Optional[int], cache_seed: Optional[int],
                  skip: int = 0) -> tf.data.Dataset:
    """(index, record) of the share [lo, hi) in the order of `order_seed`, from `skip` on.

    With `cache`, the records (already loaded) come from memory in the cached order
    (`cache_seed`), shuffled by a buffer seeded with `order_seed`.
    """
    if not self.cache:
      return self._records.stream(lo, hi, order_seed=order_seed,
                                  shuffle_buffer=self.shuffle_buffer, skip=skip)
    ds = self._cache(lo, hi, cache_seed)
    if order_seed is not None and self.shuffle_buffer > 1:
      ds = ds.shuffle(min(self.shuffle_buffer, hi - lo), seed=order_seed,
                      reshuffle_each_iteration=False)
    return _numbered(ds, hi - lo).skip(skip)

  def _cache(self, lo: int, hi: int, cache_seed: Optional[int]) -> tf.data.Dataset:
    key = (lo, hi, cache_seed)
    if key not in self._cached:
      records = self._records
      ds = records.stream(lo, hi, order_seed=cache_seed).map(
          lambda i, r: records.load(r), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.cache()
      try:   # one full pass fills the in-memory cache that every later pipeline reads
        for _ in ds.batch(1024).prefetch(2).with_options(self._options()):
          pass
      except tf.errors.OpError as e:
        raise DataError(f'{records.description}: reading the records failed '
                        f'({_first_line(e)})') from None
      self._cached[key] = ds
    return self._cached[key]

  def _train_dataset(self, lo: int, hi: int, local: int, seed: int, epoch: int,
                     process_index: int, skip: int, count: int) -> tf.data.Dataset:
    order_seed = _seed_int(seed, epoch, process_index, _ORDER)
    cache_seed = (_seed_int(seed, process_index, _CACHE_ORDER)
                  if self._records.is_folder else None)
    ds = self._records_of(lo, hi, order_seed, cache_seed, skip).take(count - skip)
    fn = self._preprocess_fn(True)
    aug_key = tf.constant(_seed_words(seed, epoch, process_index, _AUGMENT), tf.int64)
    load = (lambda r: r) if self.cache else self._records.load

    def parse(index, record):
      record = load(record)
      key = tf.random.experimental.stateless_fold_in(aug_key, index)
      return {'image': fn(record['data'], key), 'label': record['label']}
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(self._options())

  # -- errors ----------------------------------------------------------------------------------

  def _decode_error(self, key: str, error: Exception) -> DataError:
    what = _first_line(error)
    if self._records.is_folder:
      if 'is not' in what and 'like the first one' in what:
        return DataError(f'{key}: {_size_of(key)}, but the images of this split are '
                         f'{self.size}x{self.size}; the images of a folder source must all have '
                         f'one size, or set data.image_size (e.g. data.image_size={self.size}) '
                         f'to resize every image')
      return DataError(f'{key}: cannot be decoded as an image ({what}); delete or replace the '
                       f'file, or set data.on_bad_image=skip to leave out unreadable files')
    where = f', record {key}' if key else ''
    if 'is not' in what and 'like the first one' in what:
      return DataError(f'{self._records.description}{where}: {what}; images of different sizes '
                       f'need data.image_size (e.g. data.image_size={self.size})')
    return DataError(f'{self._records.description}{where}: cannot be decoded ({what}); the '
                     f'prepared data may be damaged: prepare the dataset again (tfds build)')

  def _failure(self, error: Exception, replay: Callable, *, train: bool, aug_key,
               where: str) -> DataError:
    """A DataError naming the record of `replay()` (the failing batch) that fails to decode."""
    fn = self._preprocess_fn(train)
    load = (lambda r: r) if self.cache else self._records.load
    try:
      for index, record in replay():
        key = record['key'].numpy().decode(errors='replace')
        try:
          seed = (tf.random.experimental.stateless_fold_in(aug_key, index)
                  if aug_key is not None else tf.zeros([2], tf.int64))
          fn(load(record)['data'], seed)
        except tf.errors.OpError as e:
          return self._decode_error(key, e)
    except tf.errors.OpError as e:   # the records themselves cannot be read
      return DataError(f'{self._records.description}: {where}: {_first_line(e)}')
    return DataError(f'{self._records.description}: {where}: the input pipeline failed '
                     f'({_first_line(error)})')


def _size_of(path: str) -> str:
  try:
    image = tf_preprocess.decode(tf.io.read_file(path))
    return f'is {int(image.shape[1])}x{int(image.shape[0])}'
  except tf.errors.OpError:
    return 'has another size'


class TFTrainBatches:
  """Step-indexed training batches: `batch(k)` is this process's share of global batch k."""

  def __init__(self, source: TFDataSource, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    self.local = _local_batch(global_batch_size, process_index, process_count)
    self.source = source
    self.global_batch_size = global_batch_size
    self.seed = int(seed)
    self.process_index = process_index
    self.lo, self.hi = _share(source.num_examples, process_index, process_count)
    smallest = source.num_examples // process_count
    self.steps_per_epoch = smallest // self.local
    if self.steps_per_epoch < 1:
      raise ValueError(f'the training split has {source.num_examples} examples, fewer than one '
                       f'batch of {global_batch_size}; lower batch_size')
    self.positions = np.arange(process_index * self.local, (process_index + 1) * self.local,
                               dtype=np.int32)
    self._iterator, self._next = None, None

  def _open(self, epoch: int, k: int):
    ds = self.source._train_dataset(self.lo, self.hi, self.local, self.seed, epoch,
                                    self.process_index, skip=k * self.local,
                                    count=self.steps_per_epoch * self.local)
    self._iterator = ds.as_numpy_iterator()

  def batch(self, step: int) -> dict[str, np.ndarray]:
    epoch, k = divmod(int(step), self.steps_per_epoch)
    if self._iterator is None or step != self._next or k == 0:
      self._open(epoch, k)
    try:
      batch = next(self._iterator)
    except StopIteration:
      raise RuntimeError(f'the input pipeline of epoch {epoch} ended before step {step}') from None
    except tf.errors.OpError as e:
      self._iterator = None
      source, lo, hi, local = self.source, self.lo, self.hi, self.local
      order_seed = _seed_int(self.seed, epoch, self.process_index, _ORDER)
      cache_seed = (_seed_int(self.seed, self.process_index, _CACHE_ORDER)
                    if source._records.is_folder else None)
      aug_key = tf.constant(_seed_words(self.seed, epoch, self.process_index, _AUGMENT),
                            tf.int64)

      def replay():   # the records of the failing batch, undecoded
        return source._records_of(lo, hi, order_seed, cache_seed, k * local).take(local)
      raise source._failure(e, replay, train=True, aug_key=aug_key,
                            where=f'train step {step}') from None
    self._next = step + 1
    return {'image': batch['image'], 'label': batch['label'], 'position': self.positions.copy()}


# --- TFDS helpers ---------------------------------------------------------------------------

def open_builder(name: str, data_dir: str = ''):
  """The TFDS builder of `name` reading from `data_dir` (default: TFDS's own)."""
  import tensorflow_datasets as tfds
  if not name:
    raise DataError('data.source=tfds needs data.name: a TFDS dataset name (e.g. cifar10, '
                    'imagenet2012)')
  try:
    return tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    try:   # the datasets that ship with TFDS (the community list would need the network)
      known = tfds.list_builders(with_community_datasets=False)
    except Exception:  # noqa: BLE001 -- a suggestion is optional
      known = []
    close = difflib.get_close_matches(name.split(':')[0].split('/')[0], known, n=3)
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    raise DataError(f'data.name={name!r}: TFDS has no such dataset{hint}') from None


def _feature_keys(builder, image_key: str, label_key: str) -> tuple[str, str]:
  import tensorflow_datasets as tfds
  features = builder.info.features
  items = list(features.items())
  images = [k for k, f in items if isinstance(f, tfds.features.Image)]
  labels = [k for k, f in items if isinstance(f, tfds.features.ClassLabel)]
  name = builder.name
  for key, found, kind, field in ((image_key, images, 'Image', 'image_key'),
                                  (label_key, labels, 'ClassLabel', 'label_key')):
    if key and key not in found:
      raise DataError(f'data.{field}={key!r}: {name} has no {kind} feature of that name; its '
                      f'{kind} features: {", ".join(found) or "none"} (all features: '
                      f'{", ".join(k for k, _ in items)})')
    if not found:
      raise DataError(f'{name} has no {kind} feature (features: '
                      f'{", ".join(k for k, _ in items)}); the tf.data source needs images with '
                      f'class labels')
  return image_key or images[0], label_key or labels[0]


def _split_size(builder, split: str, image_key: str) -> int:
  """The number of examples of the split `split`; DataError when it or the data is missing."""
  import tensorflow_datasets as tfds
  known = builder.info.splits
  if len(known):
    if split not in known:
      raise DataError(f'{builder.name} has no split {split!r}; its splits: '
                      f'{", ".join(sorted(known.keys()))} (data.train_split / data.eval_split)')
    return int(known[split].num_examples)
  # no split metadata: the dataset is not prepared (or its metadata is mocked): ask the reader
  try:
    ds = builder.as_dataset(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
  except AssertionError:
    raise _not_prepared(builder) from None
  except (KeyError, ValueError) as e:
    raise DataError(f'{builder.name}: split {split!r}: {_first_line(e)}') from None
  n = int(ds.cardinality())
  if n < 0:
    n = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
  if n == 0:
    raise DataError(f'{builder.name}: split {split!r} has no examples')
  return n


def _not_prepared(builder) -> DataError:
  name, root = builder.name, builder.data_dir_root
  manual = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if manual:
    how = (f'download its files by hand into a manual folder M ({" ".join(manual.split())}) '
           f'and run `tfds build {name} --data_dir={root} --manual_dir=M` (default M: '
           f'{root}/downloads/manual)')
  else:
    how = (f'run `tfds build {name} --data_dir={root}` on a machine with internet access and '
           f'copy {root}/{name} here')
  return DataError(f'TFDS dataset {name!r} is not prepared in data_dir {root} (nothing is '
                   f'downloaded during training); to prepare it, {how}; then set data.dir to '
                   f'that data_dir')


# --- folder helpers -------------------------------------------------------------------------

def _drop_unreadable(paths: list[str], labels, description: str):
  """Decodes every file once (in parallel) and leaves out those that cannot be decoded."""
  if not len(paths):
    return paths, labels
  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64),
                                           tf.constant(list(paths), tf.string)))
  ds = ds.map(lambda i, p: (i, tf.shape(tf_preprocess.decode(tf.io.read_file(p)))[0]),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  good = np.zeros(len(paths), bool)
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


def _preset_option(options: dict, name: str) -> dict:
  options = dict(options)
  preset = options.get('preprocess', 'none') or 'none'
  options['preprocess'] = tf_preprocess.auto_preset(name) if preset == 'auto' else preset
  return options


# --- from a config --------------------------------------------------------------------------

def _get(data_cfg, key: str, default: Any) -> Any:
  try:
    value = data_cfg[key]
  except (KeyError, AttributeError):
    return default
  return default if value is None else value


def source_options(data_cfg) -> dict:
  """The TFDataSource options of a config's `data` fields."""
  return {'preprocess': _get(data_cfg, 'preprocess', 'none'),
          'image_size': int(_get(data_cfg, 'image_size', 0) or 0),
          'shuffle_buffer': int(_get(data_cfg, 'shuffle_buffer', DEFAULT_SHUFFLE_BUFFER)),
          'cache': bool(_get(data_cfg, 'cache', False)),
          'threadpool_size': int(_get(data_cfg, 'threadpool_size', 0) or 0),
          'random_crop_pad': int(_get(data_cfg, 'random_crop_pad', 0) or 0),
          'random_flip': bool(_get(data_cfg, 'random_flip', False)),
          'eval_crop_fraction': float(_get(data_cfg, 'eval_crop_fraction',
                                           tf_preprocess.CENTER_CROP_FRACTION))}


def load_datasets(data_cfg, seed: int = 0) -> tuple[TFDataSource, TFDataSource]:
  """(train, eval) tf.data sources of a config with data.source 'tfds' or 'folder'."""
  del seed   # the order and augmentation are seeded in train_batches
  source = data_cfg['source']
  options = source_options(data_cfg)
  train_split, eval_split = data_cfg['train_split'], data_cfg['eval_split']
  if source == 'tfds':
    name, data_dir = data_cfg['name'], os.path.expanduser(_get(data_cfg, 'dir', ''))
    builder = open_builder(name, data_dir)
    keys = {'image_key': _get(data_cfg, 'image_key', ''),
            'label_key': _get(data_cfg, 'label_key', '')}
    return (TFDataSource.from_tfds(name, train_split, builder=builder, **keys, **options),
            TFDataSource.from_tfds(name, eval_split, builder=builder, **keys, **options))
  if source == 'folder':
    from resnet_flax.data import folder
    root = _get(data_cfg, 'dir', '')
    if not root:
      raise DataError('data.source=folder needs data.dir: the root of an image-folder tree '
                      'ROOT/<split>/<class>/*.jpg (e.g. --config.data.dir=~/data/cifar10-jpeg)')
    root = os.path.expanduser(root)
    folder.check_same_classes(root, train_split, folder.split_classes(root, train_split),
                              eval_split, folder.split_classes(root, eval_split))
    on_bad = _get(data_cfg, 'on_bad_image', 'error')
    return (TFDataSource.from_folder(root, train_split, on_bad=on_bad, **options),
            TFDataSource.from_folder(root, eval_split, on_bad=on_bad, **options))
  raise DataError(f'data.source={source!r} has no tf.data back end (tfds and folder have)')
