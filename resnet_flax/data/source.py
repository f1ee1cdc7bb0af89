"""The data section of the config (`DATA_DEFAULTS`, the allowed values) and the interface every
source offers to the trainer (`Source`).

A source is one split. In-memory sources (`arrays.ArrayDataset`) hold uint8 images and are
augmented in JAX inside the train step; streamed sources (the tf.data and Grain back ends)
decode and augment on the host. All offer the same members, so the loop never asks which one it
has.
"""

from typing import Iterator, Optional, Protocol

import numpy as np

from resnet_flax.errors import DataError

SOURCES = ('digits', 'npz', 'synthetic', 'folder', 'tfds', 'arrayrecord')
BACKENDS = ('auto', 'memory', 'tfdata', 'grain')
PRESETS = ('none', 'cifar', 'mnist', 'imagenet')
ON_BAD_IMAGE = ('error', 'skip')
IMAGE_LIBRARIES = ('pillow', 'opencv')
AUTO_AUGMENTS = ('none', 'randaugment', 'trivialaugment')

DATA_DEFAULTS = {
    'source': 'digits',        # digits | npz | synthetic | folder | tfds | arrayrecord
    'name': '',                # TFDS dataset name
    'dir': '',                 # npz file, image-folder root, TFDS data_dir, or the folder of
                               # make-arrayrecord's shards (arrayrecord)
    'train_split': 'train',    # TFDS slicing syntax: 'train', 'train[:45000]', 'train[:10%]'
    'eval_split': 'test',
    'backend': 'auto',         # memory (JAX augmentation) | tfdata | grain | auto (tfds:
                               # tfdata, arrayrecord: grain, others: memory)
    'preprocess': 'none',      # none | cifar | mnist | imagenet (host back ends: tfdata, grain)
    'image_size': 0,           # 0: the source's own size
    'eval_image_size': 0,      # evaluation's side S when it differs from training's (e.g. 160
                               # px train / 224 test); 0: image_size
    'eval_crop_fraction': 0.875,  # imagenet preset eval: shorter side -> S / this, center
                               # crop S (0.875: 256 -> 224; torchvision's V2 weights: 224 / 232)
    'channels': 0,             # 0: the source's own channel count
    'random_crop_pad': 0,      # pad by this many pixels and random-crop back (4: CIFAR)
    'random_flip': False,      # random horizontal flip
    'auto_augment': 'none',    # none | randaugment | trivialaugment (per example, in training,
                               # on the device for every back end; see data/policies.py)
    'randaugment_num_ops': 2,  # RandAugment: ops per image (timm's n)
    'randaugment_magnitude': 9.0,      # on timm's 0..10 scale (its m)
    'randaugment_magnitude_std': 0.0,  # Gaussian noise on the magnitude per op (its mstd)
    'random_erasing': 0.0,     # probability of erasing a random box with noise (timm's reprob)
    'mean': (0.0,),            # per-channel normalisation, on the 0..255 scale
    'std': (255.0,),
    'synthetic_train_size': 1024,
    'synthetic_eval_size': 256,
    'synthetic_num_classes': 1000,
    'image_key': '',           # tfds: the image feature ('': the first Image feature)
    'label_key': '',           # tfds: the label feature ('': the first ClassLabel feature)
    'shuffle_buffer': 10_000,  # tf.data: shuffle buffer in records (tfds, and cache=True)
    'cache': False,            # tf.data: keep this process's encoded records in host RAM
    'threadpool_size': 0,      # tf.data: private thread pool size (0: TF's shared pool)
    'worker_count': 0,         # grain: worker processes that decode and augment (0: in this
                               # process, on threads; -1: one per CPU core)
    'worker_buffer_size': 2,   # grain: batches each worker keeps ready
    'image_library': 'pillow',  # grain: decoding and resizing by pillow | opencv (faster;
                               # needs opencv-python-headless)
    'on_bad_image': 'error',   # folder, arrayrecord: error | skip (unreadable images are skipped
                               # and counted; an empty class folder keeps its label)
}


class TrainBatches(Protocol):
  """Step-indexed training batches of one process: `batch(k)` is its share of global batch k,
  {'image', 'label', 'position'} (position: the example's index in the global batch)."""
  steps_per_epoch: int

  def batch(self, step: int) -> dict[str, np.ndarray]:
    ...


class Source(Protocol):
  """One split of a dataset, as the trainer sees it."""
  augmented_on_host: bool     # True: images arrive augmented and at their final size

  @property
  def num_examples(self) -> int:
    ...

  @property
  def num_classes(self) -> int:
    ...

  @property
  def class_names(self) -> Optional[list[str]]:
    ...

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the uint8 images this source emits."""
    ...

  def train_batches(self, global_batch_size: int, seed: int, process_index: int = 0,
                    process_count: int = 1) -> TrainBatches:
    ...

  def eval_batches(self, global_batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of every padded global batch, with 'mask' (1 real, 0 padding)."""
    ...


def local_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
  """This process's share of a global batch (streamed back ends); ValueError when uneven."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process {process_index} of {process_count} does not exist')
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global batch {global_batch_size} is not divisible by {process_count} '
                     f'processes')
  return global_batch_size // process_count


def check_labels(batch: dict, num_classes: int, where: str) -> None:
  """DataError for a host batch (a streamed source's) with a label outside [0, num_classes):
  the loss would ignore it, or score it as wrong, without a word. (In-memory sources check
  their labels when they load: the loop calls this for streamed batches only.)"""
  labels = batch.get('label')
  if not isinstance(labels, np.ndarray) or not labels.size:
    return
  if 'mask' in batch:
    labels = labels[np.asarray(batch['mask']) > 0]
  outside = labels[(labels < 0) | (labels >= num_classes)] if labels.size else labels
  if outside.size:
    raise DataError(f'{where}: label {int(outside[0])} is outside [0, {num_classes}) (-1 marks '
                    f'an unlabelled example in TFDS splits such as imagenet2012 test): train and '
                    f'evaluate on a labelled split, with model.num_classes covering its labels')


def seed_words(*parts: int) -> tuple[int, int]:
  """Two 31-bit words from a tuple of non-negative ints (numpy's SeedSequence mixing)."""
  words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2)
  return int(words[0] >> 1), int(words[1] >> 1)


class StreamedSource:
  """The members of `Source` that a streamed source (tf.data, Grain) derives from its
  `records` (len, num_classes, class_names) and its output side `size`."""
  augmented_on_host = True
  records = None
  size = 0

  @property
  def num_examples(self) -> int:
    return len(self.records)

  def __len__(self):
    return len(self.records)

  @property
  def num_classes(self) -> int:
    return self.records.num_classes

  @property
  def class_names(self) -> list[str]:
    return self.records.class_names

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.size, self.size, 3)
