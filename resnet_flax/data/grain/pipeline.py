"""The Grain pipelines of a `GrainSource`: random-access `MapDataset`s whose element k is batch k,
a pure function of (seed, k), read by threads in this process or by worker processes
(`mp_prefetch`). See the package docstring for the order, shares and keys."""

import math
import multiprocessing
import os
import threading
import time
from typing import Iterator

import grain
import numpy as np

from resnet_flax.data.folder import default_workers as cpu_count
from resnet_flax.data.host import BadImage
from resnet_flax.data.source import local_batch
from resnet_flax.errors import DataError

HORIZON_STEPS = 2 ** 40        # a training stream's length in steps (its end is never reached)
PARENT_POLL_S = 0.5            # how often a worker checks that its parent is alive


def watch_parent(worker_index: int, worker_count: int) -> None:
  """In a worker process: exit when the process that started it is gone (killed with SIGKILL,
  it cannot stop its workers itself)."""
  del worker_index, worker_count
  # the pid of the process that started this one (not os.getppid(), which is already init's
  # when that process died while this one was starting)
  parent = multiprocessing.parent_process().pid

  def watch():
    while os.getppid() == parent:
      time.sleep(PARENT_POLL_S)
    os._exit(0)
  threading.Thread(target=watch, daemon=True, name='watch-parent').start()


def _example(records, fn, index: int, key) -> tuple[np.ndarray, int]:
  """(image, label) of a record, preprocessed by fn(data, key)."""
  data, label = records[index]
  try:
    return fn(data, key), label
  except BadImage as e:
    raise records.bad_image(index, str(e)) from None


class TrainBatch:
  """Step k -> one process's share of global batch k, {'image', 'label'}.

  Example j of the share (global position offset + j) of step k (epoch e, batch k' of it) is
  order_e[k' * global + offset + j], where order_e is epoch e's global permutation (a seeded
  `MapDataset.shuffle`, reshuffled per epoch); its augmentation key is (seed words, e, dataset
  index). The images are written into one array (no per-example elements to stack).
  """

  def __init__(self, records, fn, order_seed: int, aug_words, global_batch: int, local: int,
               offset: int, steps_per_epoch: int, shape):
    self.records, self.fn = records, fn
    self.order_seed, self.aug_words = int(order_seed), tuple(int(w) for w in aug_words)
    self.global_batch, self.local, self.offset = global_batch, local, offset
    self.steps_per_epoch, self.shape = steps_per_epoch, tuple(shape)
    self._order = None

  def __getstate__(self):
    return {**self.__dict__, '_order': None}

  def indices(self, step: int) -> tuple[int, np.ndarray]:
    """(epoch, dataset indices of the share) of global batch `step`."""
    if self._order is None:
      self._order = grain.MapDataset.range(len(self.records)).shuffle(seed=self.order_seed)
    epoch, k = divmod(int(step), self.steps_per_epoch)
    first = epoch * len(self.records) + k * self.global_batch + self.offset
    return epoch, np.array([self._order[first + j] for j in range(self.local)], np.int64)

  def __call__(self, step: int) -> dict:
    epoch, indices = self.indices(step)
    images = np.empty((self.local,) + self.shape, np.uint8)
    labels = np.empty((self.local,), np.int32)
    for j, index in enumerate(indices.tolist()):
      images[j], labels[j] = _example(self.records, self.fn, index,
                                      self.aug_words + (epoch, index))
    return {'image': images, 'label': labels}


class EvalBatch:
  """Batch b -> one process's share of padded global eval batch b, with `mask`."""

  def __init__(self, records, fn, global_batch: int, local: int, offset: int, shape):
    self.records, self.fn = records, fn
    self.global_batch, self.local, self.offset = global_batch, local, offset
    self.shape = tuple(shape)

  def __call__(self, b: int) -> dict:
    images = np.zeros((self.local,) + self.shape, np.uint8)
    labels = np.zeros((self.local,), np.int32)
    mask = np.zeros((self.local,), np.float32)
    for j in range(self.local):
      index = int(b) * self.global_batch + self.offset + j
      if index < len(self.records):
        images[j], labels[j] = _example(self.records, self.fn, index, ())
        mask[j] = 1.0
    return {'image': images, 'label': labels, 'mask': mask}


def iterate(ds: grain.MapDataset, workers: int, worker_buffer_size: int) -> Iterator:
  """An iterator over a MapDataset of batches: read by `workers` processes (each reading one
  batch at a time), or with 0 by threads of this process (one per CPU core; Pillow releases
  the GIL while it decodes and resizes)."""
  from absl import flags
  if not flags.FLAGS.is_parsed():   # Grain reads its options from absl flags (defaults here)
    flags.FLAGS.mark_as_parsed()
  workers = cpu_count() if workers < 0 else int(workers)
  threads = 1 if workers else cpu_count()
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                            prefetch_buffer_size=threads + 1))
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, int(worker_buffer_size))),
        worker_init_fn=watch_parent)
  return iter(ds)


def close(iterator) -> None:
  if iterator is not None and hasattr(iterator, 'close'):
    iterator.close()


def pull(iterator, where: str) -> dict:
  """The next batch; a DataError of a worker comes back as one line."""
  try:
    return next(iterator)
  except DataError as e:
    close(iterator)
    raise DataError(str(e)) from None
  except StopIteration:
    raise RuntimeError(f'the input pipeline ended before {where}') from None


class GrainTrainBatches:
  """Step-indexed training batches: `batch(k)` is this process's share of global batch k.

  Consecutive steps read one stream; any other step (a resume) opens the stream at that step.
  """

  def __init__(self, source, global_batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    self.local = local_batch(global_batch_size, process_index, process_count)
    self.source = source
    self.global_batch_size = global_batch_size
    n = source.num_examples
    self.steps_per_epoch = n // global_batch_size
    if self.steps_per_epoch < 1:
      raise ValueError(f'the training split has {n} examples, fewer than one batch of '
                       f'{global_batch_size}; lower batch_size')
    order_seed, aug_words = source.train_seeds(seed)
    self.make_batch = TrainBatch(source.records, source.preprocess_fn(True), order_seed,
                                 aug_words, global_batch_size, self.local,
                                 process_index * self.local, self.steps_per_epoch,
                                 source.image_shape)
    self.positions = np.arange(process_index * self.local, (process_index + 1) * self.local,
                               dtype=np.int32)
    self._iterator, self._next = None, None

  def indices(self, step: int) -> np.ndarray:
    """Dataset indices of this process's share of global batch `step` (nothing is read)."""
    return self.make_batch.indices(step)[1]

  def _open(self, step: int) -> None:
    self.close()
    ds = grain.MapDataset.range(step, HORIZON_STEPS).map(self.make_batch)
    self._iterator = iterate(ds, self.source.worker_count, self.source.worker_buffer_size)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    step = int(step)
    if self._iterator is None or step != self._next:
      self._open(step)
    self._next = None
    batch = pull(self._iterator, f'step {step}')
    self._next = step + 1
    return {'image': batch['image'], 'label': batch['label'], 'position': self.positions.copy()}

  def close(self) -> None:
    close(self._iterator)
    self._iterator = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # noqa: BLE001 - interpreter shutdown
      pass


def eval_batches(source, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of every padded global eval batch, with `mask`."""
  local = local_batch(global_batch_size, process_index, process_count)
  num_batches = math.ceil(source.num_examples / global_batch_size)
  make_batch = EvalBatch(source.records, source.preprocess_fn(False), global_batch_size, local,
                         process_index * local, source.image_shape)
  ds = grain.MapDataset.range(num_batches).map(make_batch)
  positions = np.arange(process_index * local, (process_index + 1) * local, dtype=np.int32)
  iterator = iterate(ds, source.worker_count, source.worker_buffer_size)
  try:
    for j in range(num_batches):
      batch = pull(iterator, f'eval batch {j}')
      yield {'image': batch['image'], 'label': batch['label'], 'mask': batch['mask'],
             'position': positions.copy()}
  finally:
    close(iterator)
