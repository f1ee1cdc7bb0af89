"""Input pipelines: config.data -> a source -> host-local batches for this process.

`load_datasets(data_cfg, seed)` returns the (train, eval) datasets of the configured source.
In-memory sources (`digits`, `npz`, `synthetic`) return `ArrayDataset`s, batched by
`batches.TrainBatches` / `batches.eval_batches` and augmented in JAX (`augment.py`).
"""

from resnet_flax.data.arrays import ArrayDataset, DataError
from resnet_flax.data import arrays

IN_MEMORY_SOURCES = ('digits', 'npz', 'synthetic')


def load_datasets(data_cfg, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
  source = data_cfg['source']
  if source in IN_MEMORY_SOURCES:
    return (arrays.load(data_cfg, data_cfg['train_split'], seed),
            arrays.load(data_cfg, data_cfg['eval_split'], seed))
  raise DataError(f'data.source={source!r} is not available yet; '
                  f'available: {", ".join(IN_MEMORY_SOURCES)}')


__all__ = ['ArrayDataset', 'DataError', 'load_datasets']
