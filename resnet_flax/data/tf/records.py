"""Records of the tf.data back end: (encoded bytes or path, label, key) in a deterministic order,
for an image-folder split (`FolderRecords`) or a prepared TFDS split (`TFDSRecords`); the seed
streams and per-process shares the pipelines are built from."""

from typing import Optional

import numpy as np
import tensorflow as tf

# the seed mixing, shared with the Grain back end
from resnet_flax.data.source import seed_words

ORDER, AUGMENT, CACHE_ORDER = 0, 1, 2     # seed streams


def seed_int(*parts: int) -> int:
  hi, lo = seed_words(*parts)
  return (hi << 31) | lo


def share(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """The contiguous share [lo, hi) of n examples that process `process_index` reads."""
  return n * process_index // process_count, n * (process_index + 1) // process_count


def numbered(ds: tf.data.Dataset, count: int) -> tf.data.Dataset:
  """(index, element) pairs, like `enumerate`."""
  return tf.data.Dataset.zip((tf.data.Dataset.range(count), ds))


class FolderRecords:
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


class TFDSRecords:
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
    return numbered(ds, hi - lo).skip(skip)

  @staticmethod
  def load(record: dict) -> dict:
    return record
