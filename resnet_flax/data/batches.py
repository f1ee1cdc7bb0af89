"""Host-local batches of an in-memory dataset, for this process's share of each global batch.

Training: the order of epoch e is a permutation seeded by (seed, e), so the global batch of step
k is a pure function of (seed, k): a resumed run sees exactly the batches an uninterrupted run
would, without replaying earlier ones. Each process takes its contiguous slice of every global
batch. Each example also carries `position`, its index within the global batch, which keys its
augmentation so the random crop of an example does not depend on the device count.

Eval: the whole split, once. The last global batch is padded to full size and `mask` marks real
examples (1) and padding (0), so nothing is dropped and nothing counts twice.
"""

from typing import Iterator, Protocol

import numpy as np


class ArrayDataset(Protocol):
  """What batching needs of an in-memory split (`arrays.ArrayDataset` has it)."""
  images: np.ndarray          # uint8 (N, H, W, C)
  labels: np.ndarray          # int32 (N,)

  def __len__(self) -> int:
    ...


def _local_slice(global_size: int, process_index: int, process_count: int) -> slice:
  if global_size % process_count:
    raise ValueError(f'global batch {global_size} is not divisible by {process_count} processes')
  per = global_size // process_count
  return slice(process_index * per, (process_index + 1) * per)


class TrainBatches:
  """Step-indexed training batches: `batch(k)` is this process's share of global batch k."""

  def __init__(self, dataset: ArrayDataset, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if len(dataset) < global_batch_size:
      raise ValueError(f'the training split has {len(dataset)} examples, fewer than one batch '
                       f'of {global_batch_size}; lower batch_size')
    self.dataset = dataset
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.steps_per_epoch = len(dataset) // global_batch_size
    self._local = _local_slice(global_batch_size, process_index, process_count)
    self._epoch, self._order = -1, None

  def order(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      self._order = np.random.default_rng((self.seed, epoch)).permutation(len(self.dataset))
      self._epoch = epoch
    return self._order

  def indices(self, step: int) -> np.ndarray:
    """Dataset indices of this process's share of global batch `step`."""
    epoch, k = divmod(step, self.steps_per_epoch)
    start = k * self.global_batch_size
    return self.order(epoch)[start:start + self.global_batch_size][self._local]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    idx = self.indices(step)
    positions = np.arange(self.global_batch_size, dtype=np.int32)[self._local]
    return {'image': self.dataset.images[idx], 'label': self.dataset.labels[idx],
            'position': positions}


def eval_batches(dataset: ArrayDataset, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of every padded global eval batch, with `mask`."""
  n = len(dataset)
  local = _local_slice(global_batch_size, process_index, process_count)
  for start in range(0, n, global_batch_size):
    global_idx = np.arange(start, start + global_batch_size)[local]
    mask = (global_idx < n).astype(np.float32)
    idx = np.where(global_idx < n, global_idx, 0)
    yield {'image': dataset.images[idx], 'label': dataset.labels[idx], 'mask': mask,
           'position': (global_idx - start).astype(np.int32)}
