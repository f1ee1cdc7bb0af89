"""Step-indexed training batches of a `TFDataSource`: `batch(k)` is this process's share of global
batch k. Consecutive steps read one pipeline per epoch; any other step (a resume) opens the
pipeline of its epoch at that batch."""

import numpy as np
import tensorflow as tf

from resnet_flax.data.source import local_batch
from resnet_flax.data.tf import records


class TFTrainBatches:
  """Step-indexed training batches: `batch(k)` is this process's share of global batch k."""

  def __init__(self, source, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    self.local = local_batch(global_batch_size, process_index, process_count)
    self.source = source
    self.global_batch_size = global_batch_size
    self.seed = int(seed)
    self.process_index = process_index
    self.lo, self.hi = records.share(source.num_examples, process_index, process_count)
    smallest = source.num_examples // process_count
    self.steps_per_epoch = smallest // self.local
    if self.steps_per_epoch < 1:
      raise ValueError(f'the training split has {source.num_examples} examples, fewer than one '
                       f'batch of {global_batch_size}; lower batch_size')
    self.positions = np.arange(process_index * self.local, (process_index + 1) * self.local,
                               dtype=np.int32)
    self._iterator, self._next = None, None

  def _open(self, epoch: int, k: int):
    seeds = self.source.train_seeds(self.seed, epoch, self.process_index)
    ds = self.source.train_dataset(self.lo, self.hi, self.local, seeds, skip=k * self.local,
                                   count=self.steps_per_epoch * self.local)
    self._iterator = ds.as_numpy_iterator()

  def batch(self, step: int) -> dict[str, np.ndarray]:
    epoch, k = divmod(int(step), self.steps_per_epoch)
    if self._iterator is None or step != self._next or k == 0:
      self._open(epoch, k)
    try:
      batch = next(self._iterator)
    except StopIteration:
      raise RuntimeError(f'the input pipeline of epoch {epoch} ended before step {step}') from None
    except tf.errors.OpError as e:
      self._iterator = None
      source, lo, hi, local = self.source, self.lo, self.hi, self.local
      order_seed, cache_seed, aug_key = source.train_seeds(self.seed, epoch, self.process_index)

      def replay():   # the records of the failing batch, undecoded
        return source.records_of(lo, hi, order_seed, cache_seed, k * local).take(local)
      raise source.failure(e, replay, train=True, aug_key=aug_key,
                           where=f'train step {step}') from None
    self._next = step + 1
    return {'image': batch['image'], 'label': batch['label'], 'position': self.positions.copy()}

