"""Input-pipeline throughput of a config's data, without any model (`measure(config, batches=,
warmup=, split=)`; the command is `resnet-flax input-benchmark`).

Builds the config's train (or eval) source exactly as training does and pulls `--warmup`
untimed batches, then `--batches` timed ones (`train_batches(batch_size, seed).batch(step)` for
consecutive steps, crossing epoch boundaries as training would; or the eval batches, cycled).
Reports images/s (wall clock), images/s per CPU core (cores = the CPUs this process may run on,
or `data.threadpool_size` when set and smaller), and images per CPU-second (CPU time of this
process, all threads, and of its worker processes (Grain's), during the timed batches: the
figure to trust on a machine shared with other work), plus the time to import the back end,
build the sources and get the first batch. Nothing is put on an accelerator.

The back end is the config's (`data.load_datasets`): tf.data for data.source=tfds or
data.backend=tfdata, Grain for data.backend=grain or data.source=arrayrecord, else in memory
(then only the host-side gathering of batches is measured, as the augmentation runs on the
device).

`compare(config, variants, rounds=)` measures several variants of one config side by side, in
rounds (A B A B ...: each round measures every variant once, so a change in the machine's load
reaches all of them), and reports each variant's median images per CPU-second and the median
over rounds of its ratio to the first variant.
"""

import gc
import os
import statistics
import time


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def backend_of(data_cfg) -> str:
  """The back end `data.load_datasets` picks for a data config."""
  backend, source = data_cfg.get('backend', 'auto'), data_cfg['source']
  if backend != 'auto':
    return backend
  return {'tfds': 'tfdata', 'arrayrecord': 'grain'}.get(source, 'memory')


def _uses_tfdata(data_cfg) -> bool:
  return backend_of(data_cfg) == 'tfdata'


def cpu_seconds() -> dict:
  """CPU seconds (user + system) so far of this process and of each live child, by pid."""
  times = os.times()
  out = {os.getpid(): times.user + times.system}
  try:
    import psutil
  except ImportError:   # without psutil only this process counts
    return out
  for child in psutil.Process().children(recursive=True):
    try:
      t = child.cpu_times()
      out[child.pid] = t.user + t.system
    except psutil.Error:
      pass
  return out


def cpu_between(before: dict, after: dict) -> float:
  return sum(t - before.get(pid, 0.0) for pid, t in after.items())


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
    try:
      while True:
        yield tb.batch(step)
        step += 1
    finally:   # stops worker processes (Grain)
      getattr(tb, 'close', lambda: None)()
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
  cpu0, wall0 = cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    batch = next(stream)
    images += len(batch['label'])
  wall = time.perf_counter() - wall0
  cpu = cpu_between(cpu0, cpu_seconds())
  stream.close()
  preprocess = getattr(source, 'preprocess', config.data.get('preprocess', ''))
  num_examples = source.num_examples
  del stream, train, evaluation, source
  gc.collect()
  cores = _cores()
  threads = int(config.data.get('threadpool_size', 0) or 0)
  used = min(cores, threads) if threads else cores
  return {
      'source': config.data.source, 'name': config.data.get('name', ''),
      'dir': config.data.get('dir', ''), 'split': split,
      'backend': backend_of(config.data),
      'worker_count': int(config.data.get('worker_count', 0)),
      'preprocess': preprocess, 'num_examples': num_examples,
      'image_shape': list(first['image'].shape[1:]),
      'batch_size': len(first['label']), 'batches': batches, 'warmup': warmup,
      'import_s': round(import_s, 3), 'build_s': round(build_s, 3),
      'first_batch_s': round(first_s, 3),
      'images_per_sec': images / wall, 'cores': cores, 'threads_used': used,
      'images_per_sec_per_core': images / wall / used,
      'cpu_utilisation': cpu / wall, 'images_per_cpu_second': images / cpu if cpu else None,
  }


def compare(config, variants: list[dict], *, rounds: int, batches: int, warmup: int,
            split: str = 'train') -> dict:
  """Each variant ({'data.backend': 'grain', ...}: fields over `config`) measured once per
  round, in order; medians of images per CPU-second and of the ratio to variant 0."""
  import copy
  results = [[] for _ in variants]
  for _ in range(rounds):
    for i, fields in enumerate(variants):
      variant = copy.deepcopy(config)
      for key, value in fields.items():
        node = variant
        *path, last = key.split('.')
        for part in path:
          node = node[part]
        node[last] = value
      results[i].append(measure(variant, batches=batches, warmup=warmup, split=split))
  rate = [[r['images_per_cpu_second'] or 0.0 for r in rs] for rs in results]
  return {
      'variants': [dict(v) for v in variants], 'rounds': rounds, 'split': split,
      'images_per_cpu_second': rate,
      'median_images_per_cpu_second': [statistics.median(r) for r in rate],
      'median_images_per_sec': [statistics.median(r['images_per_sec'] for r in rs)
                                for rs in results],
      'median_ratio_to_first': [statistics.median(a / b for a, b in zip(r, rate[0]) if b)
                                for r in rate],
      'results': results,
  }
