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
over rounds of its ratio to the first variant (and to the reference, when there is one).

A reference pipeline (`reference='FILE.py:FUNCTION'`, a variant {'reference': ...}): an outside
tf.data preprocessing function, fn(encoded image bytes, a string tensor) -> image tensor, such
as the Flax ImageNet example's `input_pipeline.py:preprocess_for_train`, mapped by tf.data over
the files of the config's folder split (`from_tensor_slices(paths).repeat().map(fn(read_file),
AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)`) and timed by the same loop. Its file is loaded
as it is, from where it lies; it needs TensorFlow and whatever the file imports.
"""

import gc
import importlib
import os
import statistics
import time

from resnet_flax import config as config_lib
from resnet_flax.errors import ConfigError


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
  out = {os.getpid(): time.process_time()}   # all threads, finer than os.times' clock ticks
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
    importlib.import_module('resnet_flax.data.tf.source')
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


def load_reference(spec: str):
  """'FILE.py:FUNCTION' -> the function, its file loaded as a module (not imported by name)."""
  import importlib.util
  path, sep, name = spec.rpartition(':')
  path = os.path.expanduser(path)
  if not sep or not name or not path.endswith('.py'):
    raise ConfigError(f'--reference {spec!r}: expected FILE.py:FUNCTION')
  if not os.path.isfile(path):
    raise ConfigError(f'--reference {spec!r}: {path} is not a file')
  module_spec = importlib.util.spec_from_file_location('input_benchmark_reference', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  fn = getattr(module, name, None)
  if not callable(fn):
    raise ConfigError(f'--reference {spec!r}: {path} has no function {name!r}')
  return fn


class ReferenceSource:
  """The files of the config's folder split, mapped by tf.data through a reference function."""

  def __init__(self, data_cfg, fn, split: str):
    from resnet_flax.data import folder
    if data_cfg['source'] != 'folder':
      raise ConfigError(f'--reference reads the files of data.source=folder, not '
                        f'{data_cfg["source"]!r}')
    root = folder.checked_root(data_cfg)
    spec = data_cfg['train_split'] if split == 'train' else data_cfg['eval_split']
    self.paths, self.labels, _ = folder.list_folder(root, spec)
    self.fn, self.num_examples = fn, len(self.paths)

  def batches(self, batch_size: int):
    import tensorflow as tf
    fn = self.fn
    ds = tf.data.Dataset.from_tensor_slices((self.paths, self.labels)).repeat()
    ds = ds.map(lambda path, label: (fn(tf.io.read_file(path)), label),
                num_parallel_calls=tf.data.AUTOTUNE)
    for image, label in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
      yield {'image': image, 'label': label}


def measure(config, *, batches: int, warmup: int, split: str = 'train',
            reference: str = '') -> dict:
  """Throughput of the config's pipeline, or with `reference` of that outside function over
  the config's folder split (see the module docstring)."""
  from resnet_flax import fields
  from resnet_flax.data.source import DATA_DEFAULTS
  start = time.perf_counter()
  if reference:
    fn = load_reference(reference)
    import_s = time.perf_counter() - start
    start = time.perf_counter()
    source = train = evaluation = ReferenceSource(
        fields.merged(config.data, DATA_DEFAULTS, 'data'), fn, split)
    stream = source.batches(config.batch_size)
  else:
    load_datasets = _loader(config.data)
    import_s = time.perf_counter() - start
    start = time.perf_counter()
    train, evaluation = load_datasets(config.data, config.seed)
    source = train if split == 'train' else evaluation
    stream = _batches(config, source, split)
  build_s = time.perf_counter() - start
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
  preprocess = reference or getattr(source, 'preprocess', config.data.get('preprocess', ''))
  num_examples = source.num_examples
  del stream, train, evaluation, source
  gc.collect()
  cores = _cores()
  threads = int(config.data.get('threadpool_size', 0) or 0)
  used = min(cores, threads) if threads else cores
  return {
      'source': config.data.source, 'name': config.data.get('name', ''),
      'dir': config.data.get('dir', ''), 'split': split,
      'backend': 'reference' if reference else backend_of(config.data),
      'worker_count': int(config.data.get('worker_count', 0)),
      'preprocess': preprocess, 'num_examples': num_examples,
      'image_shape': list(first['image'].shape[1:]), 'image_dtype': str(first['image'].dtype),
      'batch_size': len(first['label']), 'batches': batches, 'warmup': warmup,
      'import_s': round(import_s, 3), 'build_s': round(build_s, 3),
      'first_batch_s': round(first_s, 3),
      'images_per_sec': images / wall, 'cores': cores, 'threads_used': used,
      'images_per_sec_per_core': images / wall / used,
      'cpu_utilisation': cpu / wall, 'images_per_cpu_second': images / cpu if cpu else None,
  }


def compare(config, variants: list[dict], *, rounds: int, batches: int, warmup: int,
            split: str = 'train') -> dict:
  """Each variant ({'data.backend': 'grain', ...}: fields over `config`; {'reference':
  'FILE.py:FUNCTION'}: that outside pipeline) measured once per round, in order; medians of
  images per CPU-second and of the per-round ratios to variant 0 and to the reference."""
  configs = [None if 'reference' in v else config_lib.with_fields(config, v) for v in variants]
  results = [[] for _ in variants]
  for _ in range(rounds):
    for i, fields in enumerate(variants):
      if 'reference' in fields:
        result = measure(config, batches=batches, warmup=warmup, split=split,
                         reference=fields['reference'])
      else:
        result = measure(configs[i], batches=batches, warmup=warmup, split=split)
      results[i].append(result)
  rate = [[r['images_per_cpu_second'] or 0.0 for r in rs] for rs in results]

  def ratios(to: list) -> list:   # None where no round measured CPU time for both
    pairs = [[a / b for a, b in zip(r, to) if b] for r in rate]
    return [statistics.median(p) if p else None for p in pairs]
  out = {
      'variants': [dict(v) for v in variants], 'rounds': rounds, 'split': split,
      'images_per_cpu_second': rate,
      'median_images_per_cpu_second': [statistics.median(r) for r in rate],
      'median_images_per_sec': [statistics.median(r['images_per_sec'] for r in rs)
                                for rs in results],
      'median_ratio_to_first': ratios(rate[0]),
      'results': results,
  }
  reference = [i for i, v in enumerate(variants) if 'reference' in v]
  if reference:
    out['median_ratio_to_reference'] = ratios(rate[reference[0]])
  return out
