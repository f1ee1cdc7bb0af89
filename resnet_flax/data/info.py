"""What inference needs of the training data: `DataInfo`, saved in every checkpoint's meta.

The image shape the device preprocessing received in evaluation, whether a host back end
(tf.data, Grain) preprocessed the images, the class count and names. A run records it from its
training and evaluation sources (`of_source`); checkpoints saved before the meta recorded it
fall back to what the data config says (`derive`: the folder source's class folders and first
image, digits, synthetic, npz), or fail with a one-line error. `check_classes` refuses data
whose class names are not the ones a checkpoint was trained on (its labels would not match).
"""

import dataclasses
import os
from typing import Optional

import numpy as np
from PIL import Image

from resnet_flax.data import augment, folder
from resnet_flax.data.arrays import DIGITS_SHAPE
from resnet_flax.data.source import Source
from resnet_flax.errors import CheckpointError, DataError


@dataclasses.dataclass
class DataInfo:
  """The data facts of a run (the checkpoint meta's 'data' entry)."""
  image_shape: tuple           # (H, W, C) uint8 images as the device preprocessing received
                               # them in evaluation (what prediction prepares images to)
  host_preprocess: bool        # True: a host back end (tf.data, Grain) resized / cropped them
  class_names: Optional[list] = None
  num_classes: Optional[int] = None

  def to_meta(self) -> dict:
    return {'image_shape': [int(d) for d in self.image_shape],
            'host_preprocess': bool(self.host_preprocess),
            'num_classes': None if self.num_classes is None else int(self.num_classes),
            'class_names': list(self.class_names) if self.class_names else None}


def of_source(train: Source, evaluation: Optional[Source] = None) -> DataInfo:
  """The facts of a run's sources: the image shape evaluation received (`evaluation`'s when
  given: a host back end emits `data.eval_image_size` there), the rest from `train`."""
  shape = (evaluation or train).image_shape
  return DataInfo(tuple(int(d) for d in shape), bool(train.augmented_on_host),
                  list(train.class_names) if train.class_names else None,
                  int(train.num_classes))


def check_classes(meta: Optional[dict], class_names, where: str) -> None:
  """DataError when a checkpoint's meta records class names and `class_names` (those of the data
  at `where`) differ: label i would mean another class than the model learnt."""
  saved = ((meta or {}).get('data') or {}).get('class_names')
  if not saved or not class_names or list(saved) == list(class_names):
    return
  saved, now = list(saved), list(class_names)
  first = next((i for i, (a, b) in enumerate(zip(saved, now)) if a != b), min(len(saved), len(now)))
  differ = (f'class {first} is {saved[first]!r} in the checkpoint and {now[first]!r} there'
            if first < min(len(saved), len(now)) else
            f'the checkpoint has {len(saved)} classes, the data {len(now)}')
  raise DataError(f'{where}: its classes are not those the checkpoint was trained on ({differ}); '
                  f'labels would not match: evaluate on data with the training classes '
                  f'(data.dir, data.eval_split)')


def from_meta(meta: Optional[dict], data_cfg, num_classes: Optional[int] = None) -> DataInfo:
  """The data facts of a checkpoint: its meta's 'data' entry, else derived from the config
  (for a model of `num_classes` classes when given)."""
  saved = (meta or {}).get('data')
  if saved:
    names = saved.get('class_names')
    classes = saved.get('num_classes')
    return DataInfo(tuple(int(d) for d in saved['image_shape']), bool(saved['host_preprocess']),
                    list(names) if names else None, None if classes is None else int(classes))
  return derive(data_cfg, num_classes)


def derive(data_cfg, num_classes: Optional[int] = None) -> DataInfo:
  """DataInfo from the data config alone (checkpoints saved before meta['data'] existed). Class
  names read from a folder whose class count is not the model's `num_classes` are not the
  model's classes: none are given then."""
  source, preset, size = data_cfg.source, data_cfg.preprocess, int(data_cfg.image_size or 0)
  host = source in ('tfds', 'arrayrecord') or data_cfg.backend in ('tfdata', 'grain')
  names, stored = None, None
  root = os.path.expanduser(data_cfg.dir or '')
  if source == 'folder' and os.path.isdir(root):
    names = folder.split_classes(root, data_cfg.train_split)
    if size and not host:
      stored = (size, size, 3)
    elif not size:               # the size of the first image (reads its header only)
      paths = folder.list_folder(root, data_cfg.train_split, on_bad='skip')[0]
      if paths:
        with Image.open(paths[0]) as first:
          stored = (first.size[1], first.size[0], 3)
  elif source == 'digits':
    names, stored = [str(i) for i in range(10)], DIGITS_SHAPE
  elif source == 'synthetic':
    stored = (size or augment.IMAGENET_SIZE, size or augment.IMAGENET_SIZE,
              int(data_cfg.channels or 3))
  elif source == 'npz' and os.path.isfile(root):
    with np.load(root) as f:
      shape = f['x_train'].shape[1:]
    stored = tuple(shape) + ((1,) if len(shape) == 2 else ())
  if names and num_classes and len(names) != num_classes:
    names = None
  classes = len(names) if names else None
  if host:
    if size or preset == 'imagenet' or stored:
      side = augment.host_output_size(preset, int(data_cfg.get('eval_image_size', 0) or size),
                                      stored and stored[0])
      return DataInfo((side, side, 3), True, names, classes)
  elif stored:
    return DataInfo(tuple(stored), False, names, classes)
  raise CheckpointError(
      f'this checkpoint was saved before checkpoints recorded their input shape, and the data '
      f'config (data.source={source!r}, data.dir={data_cfg.dir!r}) does not give it; make the '
      f'training data reachable at data.dir, or re-save the checkpoint with the current trainer')
