"""Input-pipeline throughput of a config's data, without any model:
`python scripts/input_benchmark.py --config configs/NAME.py [--config.FIELD=VALUE ...]
[--batches 50] [--warmup 5] [--split train|eval] [--json]`.

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

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from resnet_flax import cli  # noqa: E402

_CONFIG = cli.define_config_flag(sys.argv)
_BATCHES = flags.DEFINE_integer('batches', 50, 'Timed batches.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed batches after the first one.')
_SPLIT = flags.DEFINE_enum('split', 'train', ['train', 'eval'], 'Which pipeline to measure.')
_JSON = flags.DEFINE_boolean('json', False, 'Print one JSON object instead of a table.')


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _uses_tfdata(data_cfg) -> bool:
  backend = data_cfg.get('backend', 'auto')
  return data_cfg['source'] == 'tfds' or backend == 'tfdata'


def _loader(data_cfg):
  """load_datasets of the config's back end (importing it: TensorFlow for tf.data)."""
  if _uses_tfdata(data_cfg):
    from resnet_flax.data import tfdata
    return tfdata.load_datasets
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


def format_table(r: dict) -> str:
  rows = [
      ('data', f"{r['source']} {r['name'] if r['source'] == 'tfds' else r['dir']} "
               f"({r['split']}, {r['num_examples']:,} "
               f"examples)"),
      ('back end / preset', f"{r['backend']} / {r['preprocess']}"),
      ('batch', f"{r['batch_size']} x {tuple(r['image_shape'])} uint8"),
      ('batches (timed, warmup)', f"{r['batches']}, {r['warmup']}"),
      ('import back end', f"{r['import_s']:.2f} s"),
      ('build sources', f"{r['build_s']:.2f} s  (train and eval)"),
      ('first batch', f"{r['first_batch_s']:.2f} s"),
      ('images/s', f"{r['images_per_sec']:,.0f}"),
      ('images/s per core', f"{r['images_per_sec_per_core']:,.0f}  ({r['threads_used']} of "
                            f"{r['cores']} cores)"),
      ('CPU busy', f"{r['cpu_utilisation']:.2f} cores"),
      ('images per CPU-second', f"{r['images_per_cpu_second']:,.0f}"
                                if r['images_per_cpu_second'] else 'n/a'),
  ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from resnet_flax.data import DataError
  try:
    result = measure(_CONFIG.value, batches=_BATCHES.value, warmup=_WARMUP.value,
                     split=_SPLIT.value)
  except DataError as e:
    print(f'data error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result, indent=2) if _JSON.value else format_table(result))
  return 0


if __name__ == '__main__':
  app.run(main)
