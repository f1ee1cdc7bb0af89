"""Input pipelines: config.data -> a source -> host-local batches for this process.

`load_datasets(data_cfg, seed)` returns the (train, eval) datasets of the configured source.
In-memory sources (`digits`, `npz`, `synthetic`, and `folder`: an image-folder tree decoded
with Pillow, `folder.py`) return `ArrayDataset`s, batched by
`batches.TrainBatches` / `batches.eval_batches` and augmented in JAX (`augment.py`).
"""

import os

from resnet_flax.data.arrays import ArrayDataset, DataError
from resnet_flax.data import arrays

IN_MEMORY_SOURCES = ('digits', 'npz', 'synthetic')


def load_datasets(data_cfg, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
  source = data_cfg['source']
  if source in IN_MEMORY_SOURCES:
    return (arrays.load(data_cfg, data_cfg['train_split'], seed),
            arrays.load(data_cfg, data_cfg['eval_split'], seed))
  if source == 'folder':
    return _load_folder(data_cfg)
  raise DataError(f'data.source={source!r} is not available yet; '
                  f'available: {", ".join(IN_MEMORY_SOURCES + ("folder",))}')


def _load_folder(data_cfg) -> tuple[ArrayDataset, ArrayDataset]:
  from resnet_flax.data import folder
  root = data_cfg['dir']
  if not root:
    raise DataError('data.source=folder needs data.dir: the root of an image-folder tree '
                    'ROOT/<split>/<class>/*.jpg (e.g. --config.data.dir=~/data/cifar10-jpeg)')
  root = os.path.expanduser(root)
  on_bad, image_size = data_cfg['on_bad_image'], data_cfg['image_size']
  train_split, eval_split = data_cfg['train_split'], data_cfg['eval_split']
  # compare the class folders of both splits (a cheap listing) before decoding anything
  folder.check_same_classes(root, train_split, folder.split_classes(root, train_split),
                            eval_split, folder.split_classes(root, eval_split))
  return (folder.load_folder(root, train_split, on_bad=on_bad, image_size=image_size),
          folder.load_folder(root, eval_split, on_bad=on_bad, image_size=image_size))


__all__ = ['ArrayDataset', 'DataError', 'load_datasets']
