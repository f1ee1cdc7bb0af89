"""Image-folder trees and Grain sources the Grain and ArrayRecord tests share: `make_tree`
(PNGs and a JPEG per class, the class visible in the red channel), `source` (a Grain source of
such a tree, with crop and flip), `assert_same` (batches equal bit for bit)."""

import os

import numpy as np
from PIL import Image

from resnet_flax.data.grain.source import GrainSource

CLASSES = ('ant', 'bee', 'cat')


def make_tree(root, per_class=(9, 5), size=12, seed=0):
  """ROOT/{train,val}/<class>/: random-pixel PNGs (and a JPEG per class) of one size."""
  rng = np.random.default_rng(seed)
  for split, n in zip(('train', 'val'), per_class):
    for c, name in enumerate(CLASSES):
      os.makedirs(os.path.join(root, split, name))
      for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[..., 0] = 40 + 80 * c        # the class shows in the red channel
        ext = '.jpg' if i == 0 else '.png'
        if ext == '.jpg':                   # a JPEG of one colour keeps it
          pixels[...] = pixels[0, 0]
        Image.fromarray(pixels).save(os.path.join(root, split, name, f'{i:02d}{ext}'))
  return str(root)


def source(root, split='train', **options):
  options.setdefault('random_crop_pad', 2)
  options.setdefault('random_flip', True)
  return GrainSource.from_folder(root, split, **options)


def assert_same(a, b, keys=('image', 'label', 'position')):
  for key in keys:
    assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
    assert a[key].tobytes() == b[key].tobytes(), key
