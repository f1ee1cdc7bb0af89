"""What the accelerator report measures, section by section, and at which sizes (`Settings`:
`FULL` for one GPU, `QUICK` for a CPU check in seconds).

Each section is a function `(settings, context) -> dict` of plain JSON values; the report
(`accelerator_report`) runs them under a time cap and records a failure instead of stopping.
Everything runs on the first device, in this process, on synthetic data except the input
pipeline (`benchmarking.SyntheticRun` / `benchmark`: the project's real train and eval steps).
No section imports TensorFlow (the input pipeline's default back end is Grain where it is
installed, else the in-memory one).
"""

import dataclasses
import gc
import importlib.metadata
import importlib.util
import os
import time
from typing import Any, Callable, Optional

import jax

from resnet_flax.errors import first_line
from resnet_flax.tools import benchmarking, host_info, input_benchmark

PAPER_CIFAR_ITERATIONS = 64_000      # He et al. 2015, Section 4.2
OOM_MARKERS = ('resource_exhausted', 'out of memory', 'resource exhausted')


@dataclasses.dataclass(frozen=True)
class Settings:
  """The sizes of one report. `*_overrides` are 'section.field' = value for the configs."""
  mode: str
  resnet50_batch: int = 256
  resnet50_overrides: tuple = ()
  dtype: str = 'bfloat16'
  steps: int = 30
  warmup: int = 5
  max_batch_limit: int = 8192         # the batch search stops here
  search_steps: int = 3
  cifar_batch: int = 128
  cifar_overrides: tuple = ()
  cifar_dtype: str = 'float32'        # the paper's recipe
  cifar_depths: tuple = (20, 56)      # the depths of the sections cifar_resnet20, _resnet56
  input_batch: int = 256
  input_image_size: int = 224
  input_batches: int = 80
  input_backend: str = 'auto'        # Grain where it is installed, else in memory
  input_workers: int = -1            # Grain: one worker process per host core
  caps_s: tuple = (('environment', 30), ('resnet50_train', 150), ('cifar_resnet20', 60),
                   ('cifar_resnet56', 80), ('input_pipeline', 60), ('resnet50_max_batch', 150))


FULL = Settings(mode='full')
# A check of every section's code on a CPU in seconds: one tiny network (a CIFAR-style
# ResNet-8 of width 4, 32 px) stands in for every model, so that the eager initialisations of
# the sections share their compiled operations; ResNet-14 for ResNet-56; float32 (the CPU is
# not what is measured); one try of the batch search.
_TINY = (('model.family', 'cifar'), ('model.depth', 8), ('model.width', 4),
         ('model.shortcut', 'A'), ('model.version', 'v1'), ('model.num_classes', 10),
         ('data.image_size', 32))
QUICK = Settings(
    mode='quick', resnet50_batch=4, dtype='float32', steps=2, warmup=1, max_batch_limit=8,
    search_steps=1, resnet50_overrides=_TINY, cifar_batch=8, cifar_overrides=(
        ('model.width', 4),), cifar_depths=(8, 14), input_batch=8, input_image_size=32,
    input_batches=2, input_workers=0,
    caps_s=(('environment', 20), ('resnet50_train', 90), ('cifar_resnet20', 60),
            ('cifar_resnet56', 60), ('input_pipeline', 30), ('resnet50_max_batch', 60)))


@dataclasses.dataclass(frozen=True)
class Context:
  """Where a section's inputs are: the Imagenette folder (None: none given) and the time the
  section must end by (time.monotonic())."""
  data_dir: Optional[str]
  deadline: float


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def xla_environment() -> dict:
  """The XLA and JAX settings of this process's environment (XLA_FLAGS and friends)."""
  return {k: v for k, v in sorted(os.environ.items())
          if k.startswith(('XLA_', 'JAX_', 'LIBTPU_', 'TF_CPP_', 'NCCL_'))}


def environment(settings: Settings, context: Context) -> dict:
  devices = jax.devices()
  return {
      'backend': jax.default_backend(), 'device_kind': devices[0].device_kind,
      'device_count': len(devices), 'jax_version': jax.__version__,
      'jaxlib_version': _version('jaxlib'), 'flax_version': _version('flax'),
      'optax_version': _version('optax'), 'numpy_version': _version('numpy'),
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'xla_environment': xla_environment(),
      'default_matmul_precision': str(jax.config.jax_default_matmul_precision),
      'host': host_info.describe(),
  }


def _config(model: str, batch: int, dtype: str, overrides: tuple):
  return benchmarking.shipped_config(model, batch_size=batch, dtype=dtype,
                                     overrides=dict(overrides))


def _throughput(config, settings: Settings) -> dict:
  r = benchmarking.benchmark(config, steps=settings.steps, warmup=settings.warmup,
                             devices=jax.devices()[:1])
  keep = ('model', 'image_size', 'batch_size', 'dtype', 'num_params', 'compile_s',
          'train_step_ms_median', 'train_step_ms_p10', 'train_step_ms_p90',
          'train_images_per_sec', 'infer_compile_s', 'infer_step_ms_median',
          'infer_images_per_sec', 'macs_per_image', 'train_flops_per_image',
          'train_tflops_achieved', 'infer_tflops_achieved', 'peak_tflops_per_device', 'mfu',
          'infer_mfu', 'peak_memory_bytes', 'device_kind', 'conv_impl')
  return {k: r[k] for k in keep}


def resnet50_train(settings: Settings, context: Context) -> dict:
  config = _config('resnet50', settings.resnet50_batch, settings.dtype,
                   settings.resnet50_overrides)
  out = _throughput(config, settings)
  out['overrides'] = dict(settings.resnet50_overrides)
  if out['mfu'] is None:
    known = ', '.join(key for key, _ in benchmarking.PEAK_FLOPS)
    out['mfu_omitted'] = (f"no known peak {out['dtype']} FLOP/s for device kind "
                          f"{out['device_kind']!r} (known: {known})")
  if out['peak_memory_bytes'] is None:
    out['peak_memory_omitted'] = f'the {jax.default_backend()} backend reports no memory_stats'
  return out


def _cifar(index: int) -> Callable:
  """The section of the CIFAR ResNet of depth `settings.cifar_depths[index]`."""
  def section(settings: Settings, context: Context) -> dict:
    overrides = settings.cifar_overrides + (('model.depth', settings.cifar_depths[index]),)
    config = _config('resnet20', settings.cifar_batch, settings.cifar_dtype, overrides)
    out = _throughput(config, settings)
    out['overrides'] = dict(settings.cifar_overrides)
    out['on_device_augmentation'] = str(config.data.preprocess)
    seconds = PAPER_CIFAR_ITERATIONS * out['train_step_ms_median'] / 1e3
    out['projected_64k_iterations_s'] = round(seconds, 1)
    return out
  return section


def _oom(error: BaseException) -> bool:
  return any(m in str(error).lower() for m in OOM_MARKERS)


def resnet50_max_batch(settings: Settings, context: Context) -> dict:
  """Doubles the batch from 2 x resnet50_batch while it fits (a train step runs), stopping at
  the first out-of-memory error, at `max_batch_limit`, or when the next try would not end
  before the context's deadline (a try takes about twice the last one)."""
  tries, largest, batch, last_s = [], settings.resnet50_batch, 2 * settings.resnet50_batch, 0.0
  stop = f'reached the limit of the search ({settings.max_batch_limit})'
  while batch <= settings.max_batch_limit:
    if time.monotonic() + 2 * last_s > context.deadline:
      stop = f'time cap: the try at batch {batch} would not end in time'
      break
    start = time.monotonic()
    try:
      config = _config('resnet50', batch, settings.dtype, settings.resnet50_overrides)
      bench = benchmarking.SyntheticRun(config, steps=settings.search_steps, warmup=1,
                                        devices=jax.devices()[:1])
      jax.block_until_ready(bench.train(0))          # compiles
      times = benchmarking.time_calls(bench.train, settings.search_steps)
      record = {'batch': batch, 'fits': True,
                'images_per_sec': round(batch / float(sorted(times)[len(times) // 2]), 2)}
    except Exception as e:  # noqa: BLE001 - an allocation failure is the answer sought
      record = {'batch': batch, 'fits': False, 'out_of_memory': _oom(e),
                'error': first_line(e)[:300]}
    finally:
      bench = None
      gc.collect()
    last_s = time.monotonic() - start
    record['seconds'] = round(last_s, 1)
    tries.append(record)
    if not record['fits']:
      stop = (f'out of memory at batch {batch}' if record['out_of_memory'] else
              f'failed at batch {batch} (not out of memory: see the error)')
      break
    largest, batch = batch, 2 * batch
  return {'largest_fitting_batch': largest, 'stopped': stop, 'tries': tries,
          'dtype': settings.dtype, 'overrides': dict(settings.resnet50_overrides)}


def input_backend(requested: str) -> str:
  """'auto': Grain where it is installed (it streams and augments on the host without
  TensorFlow), else the in-memory back end; any other name as it is."""
  if requested != 'auto':
    return requested
  return 'grain' if importlib.util.find_spec('grain') is not None else 'memory'


def input_pipeline(settings: Settings, context: Context) -> dict:
  """The input pipeline of the ImageNet recipe on an Imagenette folder's train split, no model.

  Grain (the default where installed): the `imagenet` preset's random-resized crop and flip on
  the host, in `input_workers` worker processes (-1: one per host core), decoding and resizing
  with OpenCV where it is installed (about twice Pillow's rate, docs/BENCHMARKS.md), else
  Pillow; as many untimed batches as workers first, so the timed ones are made while timed.
  The in-memory back end decodes every JPEG once with Pillow (a thread per host core) and
  resizes it to the input size; the crop and flip then run on the device, and the host only
  gathers batches: both rates are reported. Other back ends (tfdata) stream and augment on the
  host, and their images/s is the pipeline's."""
  if not context.data_dir:
    raise FileNotFoundError('no Imagenette folder: pass --data-dir (see --prepare)')
  backend = input_backend(settings.input_backend)
  config = benchmarking.shipped_config('resnet50', batch_size=settings.input_batch)
  config.data.source = 'folder'
  config.data.dir = context.data_dir
  config.data.backend = backend
  config.data.train_split = 'train'
  # the eval source is built too but not measured: one batch of the same split
  config.data.eval_split = f'train[:{settings.input_batch}]'
  config.data.image_size = settings.input_image_size
  memory = backend == 'memory'
  warmup = 1
  if memory:
    config.data.preprocess = 'none'
  if backend == 'grain':
    config.data.preprocess = 'imagenet'
    config.data.worker_count = settings.input_workers
    config.data.image_library = ('opencv' if importlib.util.find_spec('cv2') is not None
                                 else 'pillow')
    warmup = max(1, host_info.cores() if settings.input_workers < 0 else
                 settings.input_workers)
  r = input_benchmark.measure(config, batches=settings.input_batches, warmup=warmup,
                              split='train')
  out = {k: r[k] for k in ('backend', 'preprocess', 'num_examples', 'image_shape', 'batch_size',
                           'batches', 'warmup', 'build_s', 'first_batch_s', 'images_per_sec',
                           'cores', 'images_per_cpu_second', 'cpu_utilisation')}
  if backend == 'grain':
    out['worker_count'] = warmup if settings.input_workers < 0 else settings.input_workers
    out['image_library'] = config.data.image_library
  if memory:
    decoded = r['num_examples'] + min(settings.input_batch, r['num_examples'])
    out['decoded_images'] = decoded
    out['decode_images_per_sec'] = round(decoded / r['build_s'], 1)
  return out


def input_keeps_up(results: dict) -> dict:
  """Whether the input pipeline's images/s reach the ResNet-50 train step's (both sections
  of one report): {'keeps_up', 'ratio', 'input_images_per_sec', 'train_images_per_sec'}, or
  {'keeps_up': None, 'reason'} when either section has no figure."""
  pipe, step = results.get('input_pipeline', {}), results.get('resnet50_train', {})
  for name, r in (('input_pipeline', pipe), ('resnet50_train', step)):
    if r.get('status') != 'ok':
      return {'keeps_up': None, 'reason': f"{name} {r.get('status', 'not run')}"}
  supply, demand = pipe['images_per_sec'], step['train_images_per_sec']
  return {'keeps_up': supply >= demand, 'ratio': round(supply / demand, 3),
          'input_images_per_sec': supply, 'train_images_per_sec': demand}


SECTIONS: tuple[tuple[str, Callable[..., dict]], ...] = (
    ('environment', environment),
    ('resnet50_train', resnet50_train),
    ('cifar_resnet20', _cifar(0)),
    ('cifar_resnet56', _cifar(1)),
    ('input_pipeline', input_pipeline),
    ('resnet50_max_batch', resnet50_max_batch),
)


def jsonable(value: Any) -> Any:
  """Tuples as lists, recursively (JSON has no tuples)."""
  if isinstance(value, dict):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  return value
