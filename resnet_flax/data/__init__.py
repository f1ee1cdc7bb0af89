"""Input pipelines: config.data -> a source -> host-local batches for this process.

`load_datasets(data_cfg, seed)` returns the (train, eval) sources of the configured data.
In-memory sources (`digits`, `npz`, `synthetic`, and `folder`: an image-folder tree decoded
with Pillow, `folder.py`) return `ArrayDataset`s, batched by `batches.TrainBatches` /
`batches.eval_batches` and augmented in JAX (`augment.py`). The tf.data back end (`tfdata.py`,
`tf_preprocess.py`; `tfds`, or `folder` with `data.backend=tfdata`) returns sources with the
same interface that augment on the host; only it imports TensorFlow.
"""

import os

from resnet_flax.data.arrays import ArrayDataset, DataError
from resnet_flax.data import arrays

IN_MEMORY_SOURCES = ('digits', 'npz', 'synthetic')


def load_datasets(data_cfg, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
  source = data_cfg['source']
  backend = data_cfg['backend']
  if source == 'tfds' and backend == 'memory':
    raise DataError("data.source=tfds is read by tf.data: set data.backend='auto' or 'tfdata'")
  if backend == 'tfdata' and source not in ('tfds', 'folder'):
    raise DataError(f"data.backend=tfdata reads the 'tfds' and 'folder' sources, not {source!r}; "
                    "use data.backend='auto' or 'memory'")
  if source == 'tfds' or backend == 'tfdata':
    from resnet_flax.data import tfdata   # imports TensorFlow, only for these back ends
    return tfdata.load_datasets(data_cfg, seed)
  if source in IN_MEMORY_SOURCES:
    return (arrays.load(data_cfg, data_cfg['train_split'], seed),
            arrays.load(data_cfg, data_cfg['eval_split'], seed))
  if source == 'folder':
    return _load_folder(data_cfg)
  raise DataError(f'data.source={source!r} is unknown; available: '
                  f'{", ".join(IN_MEMORY_SOURCES + ("folder", "tfds"))}')


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
