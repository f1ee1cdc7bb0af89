"""The data section of the config (`DATA_DEFAULTS`, the allowed values) and the interface every
source offers to the trainer (`Source`).

A source is one split. In-memory sources (`arrays.ArrayDataset`) hold uint8 images and are
augmented in JAX inside the train step; streamed sources (the tf.data back end) decode and
augment on the host. Both offer the same members, so the loop never asks which one it has.
"""

from typing import Iterator, Optional, Protocol

import numpy as np

SOURCES = ('digits', 'npz', 'synthetic', 'folder', 'tfds')
BACKENDS = ('auto', 'memory', 'tfdata')
PRESETS = ('none', 'cifar', 'mnist', 'imagenet')
ON_BAD_IMAGE = ('error', 'skip')
AUTO_AUGMENTS = ('none', 'randaugment', 'trivialaugment')

DATA_DEFAULTS = {
    'source': 'digits',        # digits | npz | synthetic | folder | tfds
    'name': '',                # TFDS dataset name
    'dir': '',                 # npz file, image-folder root, or TFDS data_dir
    'train_split': 'train',    # TFDS slicing syntax: 'train', 'train[:45000]', 'train[:10%]'
    'eval_split': 'test',
    'backend': 'auto',         # memory (JAX augmentation) | tfdata | auto (tfds: tfdata)
    'preprocess': 'none',      # none | cifar | mnist | imagenet (tf.data back end)
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
    'on_bad_image': 'error',   # folder source: error | skip (unreadable images are skipped
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
