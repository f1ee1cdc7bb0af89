"""Input-pipeline throughput of a config's data, without any model (`measure(config, batches=,
warmup=, split=)`; the command is `resnet-flax input-benchmark`).

Builds the config's train (or eval) source exactly as training does and pulls `--warmup`
untimed batches, then `--batches` timed ones (`train_batches(batch_size, seed).batch(step)` for
consecutive steps, crossing epoch boundaries as training would; or the eval batches, cycled).
Reports images/s (wall clock), images/s per CPU core (cores = the CPUs this process may run on,
or `data.threadpool_size` when set and smaller), and images per CPU-second (process CPU time,
all threads, during the timed batches: the figure to trust on a machine shared with other
work), plus the time to import the back end, build the sources and get the first batch.
Nothing is put on an accelerator.

The tf.data back end is used for data.source=tfds and for data.backend=tfdata; other configs
go through `resnet_flax.data.load_datasets` (the in-memory back end: then only the host-side
gathering of batches is measured, as the augmentation runs on the device).
"""

import os
import time


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _uses_tfdata(data_cfg) -> bool:
  backend = data_cfg.get('backend', 'auto')
  return data_cfg['source'] == 'tfds' or backend == 'tfdata'


def _loader(data_cfg):
  """load_datasets, after importing the config's back end (TensorFlow for tf.data: the caller
  times the import)."""
  if _uses_tfdata(data_cfg):
    from resnet_flax.data.tf import source  # noqa: F401
  from resnet_flax import data
  return data.load_datasets


def _batches(config, source, split: str):
  """An endless iterator of host batches of the chosen pipeline."""
  if split == 'train':
    tb = source.train_batches(config.batch_size, config.seed)
    step = 0
    while True:
      yield tb.batch(step)
      step += 1
  while True:
    yield from source.eval_batches(config.eval_batch_size or config.batch_size)


def measure(config, *, batches: int, warmup: int, split: str = 'train') -> dict:
  start = time.perf_counter()
  load_datasets = _loader(config.data)
  import_s = time.perf_counter() - start
  start = time.perf_counter()
  train, evaluation = load_datasets(config.data, config.seed)
  source = train if split == 'train' else evaluation
  build_s = time.perf_counter() - start
  stream = _batches(config, source, split)
  start = time.perf_counter()
  first = next(stream)
  first_s = time.perf_counter() - start
  for _ in range(warmup):
    next(stream)
  images = 0
  cpu0, wall0 = time.process_time(), time.perf_counter()
  for _ in range(batches):
    batch = next(stream)
    images += len(batch['label'])
  wall = time.perf_counter() - wall0
  cpu = time.process_time() - cpu0
  cores = _cores()
  threads = int(config.data.get('threadpool_size', 0) or 0)
  used = min(cores, threads) if threads else cores
  return {
      'source': config.data.source, 'name': config.data.get('name', ''),
      'dir': config.data.get('dir', ''), 'split': split,
      'backend': 'tfdata' if _uses_tfdata(config.data) else 'memory',
      'preprocess': getattr(source, 'preprocess', config.data.get('preprocess', '')),
      'num_examples': source.num_examples, 'image_shape': list(first['image'].shape[1:]),
      'batch_size': len(first['label']), 'batches': batches, 'warmup': warmup,
      'import_s': round(import_s, 3), 'build_s': round(build_s, 3),
      'first_batch_s': round(first_s, 3),
      'images_per_sec': images / wall, 'cores': cores, 'threads_used': used,
      'images_per_sec_per_core': images / wall / used,
      'cpu_utilisation': cpu / wall, 'images_per_cpu_second': images / cpu if cpu else None,
  }
