"""In-memory sources: datasets that fit in host RAM as uint8 arrays (NHWC) with int32 labels.

Sources: `digits` (scikit-learn's bundled 8x8 handwritten digits, the offline default), `npz`
(Keras layout `x_train`, `y_train`, `x_test`, `y_test`, e.g. MNIST) and `synthetic` (random
images and labels of any shape, for benchmarks). No TensorFlow is needed.
"""

import dataclasses
import os
import sys
from typing import Optional

import numpy as np

from resnet_flax.data import batches, splits
from resnet_flax.errors import DataError

DIGITS_TEST_FRACTION = 0.25   # fixed held-out split of the 1,797 digits (seeded permutation)
DIGITS_SPLIT_SEED = 0
DIGITS_SHAPE = (8, 8, 1)


@dataclasses.dataclass
class ArrayDataset:
  """A split held in host memory; augmented on the accelerator (`augment.py`).

  It offers the interface of every source (`source.Source`).
  """
  images: np.ndarray          # uint8, (N, H, W, C)
  labels: np.ndarray          # int32, (N,)
  num_classes: int
  class_names: Optional[list[str]] = None
  augmented_on_host = False   # augmentation runs in JAX, inside the train step

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise DataError(f'images must be uint8 (N, H, W, C); got {self.images.dtype} '
                      f'{self.images.shape}')
    if len(self.images) != len(self.labels):
      raise DataError(f'{len(self.images)} images but {len(self.labels)} labels')
    outside = self.first_label_outside(self.num_classes)
    if outside is not None:
      raise DataError(f'label {outside[1]} of example {outside[0]} is outside '
                      f'[0, {self.num_classes}); check the data or data.synthetic_num_classes')

  def __len__(self):
    return len(self.labels)

  def first_label_outside(self, num_classes: int) -> Optional[tuple[int, int]]:
    """(index, label) of the first example whose label is not in [0, num_classes), or None."""
    bad = np.flatnonzero((self.labels < 0) | (self.labels >= num_classes))
    return (int(bad[0]), int(self.labels[bad[0]])) if len(bad) else None

  @property
  def num_examples(self) -> int:
    return len(self.labels)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def train_batches(self, global_batch_size: int, seed: int, process_index: int = 0,
                    process_count: int = 1) -> batches.TrainBatches:
    return batches.TrainBatches(self, global_batch_size, seed, process_index, process_count)

  def eval_batches(self, global_batch_size: int, process_index: int = 0,
                   process_count: int = 1):
    return batches.eval_batches(self, global_batch_size, process_index, process_count)

  def subset(self, index: range) -> 'ArrayDataset':
    sl = slice(index.start, index.stop)
    return ArrayDataset(self.images[sl], self.labels[sl], self.num_classes, self.class_names)


def _digits(split: str) -> ArrayDataset:
  from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing is downloaded
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int32)
  order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
  n_test = int(round(len(labels) * DIGITS_TEST_FRACTION))
  parts = {'test': order[:n_test], 'train': np.sort(order[n_test:])}
  if split not in parts:
    raise DataError(f"digits has splits 'train' and 'test', not {split!r}")
  idx = np.sort(parts[split])
  return ArrayDataset(images[idx], labels[idx], 10, [str(i) for i in range(10)])


def _npz_labels(ys: np.ndarray, path: str, key: str) -> np.ndarray:
  """Integer class labels of an npz label array: integers, integral floats, or one-hot rows
  (recognised, with a note); anything else is a DataError naming the first bad example."""
  if ys.ndim == 2 and ys.shape[1] > 1:
    one_hot = np.all((ys == 0) | (ys == 1), axis=1) & (ys.sum(axis=1) == 1)
    if not one_hot.all():
      bad = int(np.flatnonzero(~one_hot)[0])
      raise DataError(f'{path}: {key} is 2-D ({ys.shape[0]} x {ys.shape[1]}) but row {bad} is '
                      f'not one-hot ({ys[bad][:10].tolist()}); give one integer label per '
                      f'example, or one-hot rows')
    print(f'npz source: {path}: {key} holds one-hot rows ({ys.shape[0]} x {ys.shape[1]}); '
          f'using the index of each row\'s 1 as its label', file=sys.stderr, flush=True)
    return np.argmax(ys, axis=1).astype(np.int64)
  ys = ys.reshape(-1)
  if not (np.issubdtype(ys.dtype, np.integer) or np.issubdtype(ys.dtype, np.bool_)):
    if not np.issubdtype(ys.dtype, np.floating):
      raise DataError(f'{path}: {key} is {ys.dtype}; expected integer class labels')
    fractional = ~np.isfinite(ys) | (ys != np.round(ys))
    if fractional.any():
      bad = int(np.flatnonzero(fractional)[0])
      raise DataError(f'{path}: {key}[{bad}] = {ys[bad]} is not a class index; labels must be '
                      f'whole numbers 0..C-1 (one per example, or one-hot rows)')
  ys = ys.astype(np.int64)
  if len(ys) and ys.min() < 0:
    bad = int(np.flatnonzero(ys < 0)[0])
    raise DataError(f'{path}: {key}[{bad}] = {int(ys[bad])} is a negative label')
  return ys


def _npz(path: str, split: str) -> ArrayDataset:
  if not path:
    raise DataError('data.source=npz needs data.dir: the path of an .npz file with x_train, '
                    'y_train, x_test, y_test')
  if not os.path.isfile(path):
    raise DataError(f'data.dir={path!r}: no such .npz file')
  try:
    archive = np.load(path)
    if not hasattr(archive, 'files'):
      raise ValueError('a single array, not an .npz archive of x_train, y_train, x_test, '
                       'y_test')
    with archive as f:
      xs = f[f'x_{split}']
      labels = {k: _npz_labels(f[k], path, k) for k in f.files if k.startswith('y_')}
  except KeyError:
    raise DataError(f'{path}: has no arrays x_{split}/y_{split} for split {split!r}') from None
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: cannot be read as .npz ({e})') from None
  if f'y_{split}' not in labels:
    raise DataError(f'{path}: has no arrays x_{split}/y_{split} for split {split!r}')
  ys = labels[f'y_{split}']
  # the class count is taken over every split, so a split missing a class still agrees
  num_classes = max((int(y.max()) + 1 for y in labels.values() if y.size), default=0)
  if xs.ndim == 3:
    xs = xs[..., None]
  if xs.dtype != np.uint8:
    raise DataError(f'{path}: x_{split} is {xs.dtype}; expected uint8 images (0..255)')
  if len(xs) != len(ys):
    raise DataError(f'{path}: x_{split} holds {len(xs)} images but y_{split} {len(ys)} labels')
  return ArrayDataset(xs, ys.astype(np.int32), num_classes)


def _synthetic(data_cfg, split: str, seed: int) -> ArrayDataset:
  n = data_cfg['synthetic_train_size'] if split == 'train' else data_cfg['synthetic_eval_size']
  size = data_cfg['image_size'] or 224
  channels = data_cfg['channels'] or 3
  num_classes = data_cfg['synthetic_num_classes']
  rng = np.random.default_rng((seed, 0 if split == 'train' else 1))
  images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
  labels = rng.integers(0, num_classes, (n,), dtype=np.int32)
  return ArrayDataset(images, labels, num_classes)


def load(data_cfg, split_spec: str, seed: int = 0) -> ArrayDataset:
  """The examples of `split_spec` (TFDS slicing syntax) of an in-memory source."""
  name, _, _ = splits.parse_split(split_spec)
  source = data_cfg['source']
  if source == 'digits':
    full = _digits(name)
  elif source == 'npz':
    full = _npz(data_cfg['dir'], name)
  elif source == 'synthetic':
    full = _synthetic(data_cfg, name, seed)
  else:
    raise DataError(f'data.source={source!r} is not an in-memory source')
  return full.subset(splits.select_examples(split_spec, len(full), f'data.source={source}'))
