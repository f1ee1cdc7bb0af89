"""Training and inference throughput of a config's model on synthetic data, with model FLOPs.

`SyntheticRun(config, ...)` is that run stepped one call at a time (for callers that time
steps their own way: the framework comparison, the accelerator report's batch search).
`benchmark(config, steps=..., warmup=..., peak_flops=...)` builds the run exactly as training
does (`train.build.build_run`: same model, precision, optimizer, parallelism and compiled steps),
but on synthetic uint8 images held in memory, so no dataset (and no TensorFlow) is needed and
the input pipeline is not measured: a few batches are put on the devices once and reused
cyclically (step k uses batch k % n, n <= 4). The images have the config's `data.image_size`
(0: the model family's default, 224 ImageNet / 32 CIFAR) and `data.channels` (0: 3). The
on-device preprocessing is the config's; preset 'imagenet' (random-resized crops on the host)
becomes 'none', which leaves on the device what a host-augmenting pipeline leaves there: the
cast and the normalisation.

What is measured (wall clock, `time.perf_counter`):

* train compile time: the first call of the train step, including `jax.block_until_ready`
  (compilation, plus one step; with a warm persistent compilation cache it is mostly the cache
  load);
* then `warmup` untimed steps, then `steps` timed steps, each followed by
  `jax.block_until_ready` -> median, 10th and 90th percentile step time; images/s is the
  global batch over the median step time (per device: divided by the device count);
* the same for the eval step (forward pass, preprocessing and the summed metrics) on one batch
  of `eval_batch_size` (or `batch_size`) images -> inference images/s;
* peak device memory: `peak_bytes_in_use` of the first local device's `memory_stats()` where the
  backend reports it (GPU, TPU), else None (CPU). It is the peak of the whole process so far.

Model FLOPs: `model_stats.count_macs` gives the multiply-accumulates of one eval-mode forward
pass per image (convolutions and dense layers; BatchNorm, activations, pooling, the loss and the
optimizer update are not counted). A forward pass is 2 x MACs FLOPs; a training step costs about
3 forward passes (the backward pass computes gradients for both activations and weights), so
training FLOPs per image = 3 x 2 x MACs. MFU = achieved model FLOP/s / (peak FLOP/s per device x
devices), with the peak from `PEAK_FLOPS` for the device kind and compute dtype, or as given.
"""

import importlib
import math
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np

from resnet_flax import fields as config_fields
from resnet_flax.errors import ConfigError, first_line
from resnet_flax.models import NAMES, create_model, default_image_size, model_fields
from resnet_flax.tools import model_stats
from resnet_flax.train.build import build_run

MAX_TRAIN_BATCHES = 4          # distinct synthetic train batches, reused cyclically
BENCH_NUM_TRAIN_STEPS = 1_000_000  # the schedule's length: any warmup or boundary fits in it

# Dense (no sparsity) peak FLOP/s per device by compute precision, from the vendors' data
# sheets; keyed by a substring of `device.device_kind` (case-insensitive, first match wins).
# 'float32' is plain FP32 arithmetic: on GPUs XLA may run float32 matmuls and convolutions as
# TF32 (H100 SXM: 494e12), so a float32 MFU against this figure can exceed 1.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ('H100 PCIe', {'bfloat16': 756e12, 'float32': 51e12}),
    ('H100', {'bfloat16': 989e12, 'float32': 67e12}),
    ('H200', {'bfloat16': 989e12, 'float32': 67e12}),
    ('A100', {'bfloat16': 312e12, 'float32': 19.5e12}),
    ('TPU v4', {'bfloat16': 275e12}),
)

_STRUCTURE_FIELDS = ('family', 'depth', 'block', 'stage_sizes', 'version', 'shortcut',
                     'residual', 'width', 'groups', 'width_per_group')


def compute_dtype(config) -> str:
  """The compute dtype: the top-level `config.dtype` (the training precision) when the config
  has one, else `config.model.dtype`."""
  top = config.get('dtype') if hasattr(config, 'get') else None
  return str(top or config.model.dtype)


def peak_flops_for(device_kind: str, dtype: str) -> Optional[float]:
  """Peak dense FLOP/s of one device for a compute dtype, or None when not in `PEAK_FLOPS`.

  float16 uses the bfloat16 figure (the same on these devices).
  """
  precision = 'bfloat16' if dtype in ('bfloat16', 'float16') else 'float32'
  kind = device_kind.lower()
  for key, peaks in PEAK_FLOPS:
    if key.lower() in kind:
      return peaks.get(precision)
  return None


def model_label(model_cfg) -> str:
  """The config's model name, or a description when the fields no longer match that name."""
  name = model_cfg.get('name') or ''
  candidates = ([name] if name in NAMES else []) + sorted(NAMES)
  for candidate in candidates:  # the config's own name first, else any name that fits
    reference = model_fields(candidate)
    if all(_same(model_cfg.get(f), reference[f]) for f in _STRUCTURE_FIELDS):
      return candidate
  return f"{model_cfg.get('family', 'imagenet')} ResNet depth {model_cfg.get('depth')}" + (
      f' (modified {name})' if name else '')


def _same(a, b) -> bool:
  if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
    return tuple(a or ()) == tuple(b or ())
  return a == b


# the shipped config (resnet_flax/configs/NAME.py) whose recipe a model family is measured with
FAMILY_CONFIGS = {'cifar': 'cifar10', 'imagenet': 'imagenet'}


def shipped_config(name: str, *, batch_size: int, dtype: str = 'float32',
                   overrides: Optional[Mapping[str, Any]] = None):
  """The shipped training config of a registered model's family (`FAMILY_CONFIGS`) with that
  model's fields: configs/cifar10.py for the CIFAR family (He et al.'s recipe, the pad-4 crop
  and flip run on the device), configs/imagenet.py for the others; `batch_size` for training and evaluation,
  `dtype` the compute precision, then the 'section.field' = value `overrides`. A ConfigError
  names an unknown model, field or a value of the wrong type."""
  fields = model_fields(name)
  config = importlib.import_module(
      f"resnet_flax.configs.{FAMILY_CONFIGS[fields['family']]}").get_config()
  config.model.update(fields)
  config.batch_size = config.eval_batch_size = int(batch_size)
  config.dtype = dtype
  for key, value in (overrides or {}).items():
    *parents, last = key.split('.')
    node = config
    for part in parents:
      node = node.get(part) if hasattr(node, 'get') else None
    if not hasattr(node, 'keys') or last not in node:
      raise ConfigError(f'{key}: the config has no such field')
    value = config_fields.overriding(value, node[last])
    try:
      node[last] = tuple(value) if isinstance(value, list) else value
    except (TypeError, ValueError) as e:
      raise ConfigError(f'{key}={value!r}: {first_line(e)}') from None
  return config


def benchmark_config(config, *, steps: int, warmup: int):
  """A copy of `config` set up for benchmarking: synthetic data, a long schedule, no logging."""
  config = config.copy_and_resolve_references()
  image_size = int(config.data.image_size) or default_image_size(config.model)
  n_train = max(1, min(steps + warmup, MAX_TRAIN_BATCHES))
  config.data.source = 'synthetic'
  if 'backend' in config.data:
    config.data.backend = 'memory'
  if config.data.get('preprocess') == 'imagenet':
    # random-resized crops run on the host (tf.data); on the device the step only normalises,
    # which is what preset 'none' without crop or flip does
    config.data.preprocess = 'none'
    config.data.random_crop_pad = 0
    config.data.random_flip = False
  config.data.image_size = image_size
  config.data.channels = int(config.data.channels) or 3
  config.data.synthetic_num_classes = int(config.model.num_classes)
  config.data.synthetic_train_size = int(config.batch_size) * n_train
  config.data.synthetic_eval_size = int(config.eval_batch_size or config.batch_size)
  config.num_train_steps = max(int(config.num_train_steps), steps + warmup + 1,
                               BENCH_NUM_TRAIN_STEPS)
  config.log_tensorboard = False
  config.progress_bar = False
  return config


def _to_devices(par, host_batch):
  """A host batch placed on the devices once, so that timed steps do not copy it."""
  batch = par.put_batch(host_batch)
  if par.mode == 'pmap':  # pmap's put_batch only reshapes; commit the shards to the devices
    batch = jax.pmap(lambda x: x, devices=par.devices)(batch)
  return jax.block_until_ready(batch)


def time_calls(fn, n: int) -> np.ndarray:
  """Seconds of each of `n` calls of fn(i), each waited for with block_until_ready."""
  times = np.empty(n)
  for i in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn(i))
    times[i] = time.perf_counter() - start
  return times


def _ms(seconds: float) -> float:
  return round(1e3 * float(seconds), 3)


def _peak_memory_bytes() -> Optional[int]:
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # some backends do not implement memory statistics at all
    return None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return int(stats['peak_bytes_in_use'])


class SyntheticRun:
  """The run of `benchmark_config(config)` with its synthetic batches on the devices, stepped
  one call at a time: `train(k)` runs train step k on batch k % n (n <= MAX_TRAIN_BATCHES) and
  returns (state, metrics); `evaluate()` runs the eval step on one batch of `eval_batch_size`
  (or `batch_size`) images with the current state. Nothing is waited for: the caller blocks.
  `steps` and `warmup` only size the synthetic data and the schedule (`benchmark_config`).
  """

  def __init__(self, config, *, steps: int, warmup: int, devices=None):
    self.config = benchmark_config(config, steps=steps, warmup=warmup)
    self.run = build_run(self.config, devices=devices)
    self.par = self.run.par
    self.batch_size = int(self.config.batch_size)
    self.eval_batch_size = int(self.config.eval_batch_size or self.config.batch_size)
    self.state = self.run.state
    n_train = self.run.train_batches.steps_per_epoch
    self.train_batches = [_to_devices(self.par, self.run.train_batches.batch(k))
                          for k in range(n_train)]
    self.eval_batch = _to_devices(self.par, next(iter(self.run.eval_ds.eval_batches(
        self.eval_batch_size, 0, 1))))

  def train(self, k: int):
    self.state, metrics = self.run.p_train(self.state,
                                           self.train_batches[k % len(self.train_batches)])
    return self.state, metrics

  def evaluate(self, _: int = 0):
    return self.run.p_eval(self.state, self.eval_batch)


def check_arguments(steps: int, warmup: int, peak_flops: Optional[float] = None) -> None:
  """ValueError for step counts or a peak FLOP/s the benchmark cannot use."""
  if int(steps) < 1:
    raise ValueError(f'steps={steps} must be a positive number of timed steps')
  if int(warmup) < 0:
    raise ValueError(f'warmup={warmup} must not be negative')
  if peak_flops is not None and not (peak_flops > 0 and math.isfinite(peak_flops)):
    raise ValueError(f'peak FLOP/s {peak_flops} must be a positive number')
  if jax.process_count() > 1:
    raise ValueError('the benchmark runs in a single process; start it without '
                     'distributed initialisation')


def benchmark(config, *, steps: int, warmup: int, peak_flops: Optional[float] = None,
              devices=None) -> dict[str, Any]:
  """Times the train and eval steps of `config`'s run on synthetic data; see the module doc.

  `peak_flops` is the peak FLOP/s of one device (None: looked up in `PEAK_FLOPS`); `devices`
  as in `train.build.build_run` (None: all). Single process. Raises `ConfigError` / `ValueError`
  for a config or arguments that cannot run.
  """
  check_arguments(steps, warmup, peak_flops)
  steps, warmup = int(steps), int(warmup)
  bench = SyntheticRun(config, steps=steps, warmup=warmup, devices=devices)
  config, run, par = bench.config, bench.run, bench.par
  batch_size, eval_batch_size = bench.batch_size, bench.eval_batch_size
  image_size = int(config.data.image_size)
  channels = int(config.data.channels)

  # Training.
  compile_s = float(time_calls(bench.train, 1)[0])
  for k in range(1, 1 + warmup):
    jax.block_until_ready(bench.train(k))
  train_times = time_calls(lambda i: bench.train(1 + warmup + i), steps)

  # Inference: the eval step on one batch, with the trained state.
  infer_compile_s = float(time_calls(bench.evaluate, 1)[0])
  for _ in range(warmup):
    jax.block_until_ready(bench.evaluate())
  infer_times = time_calls(bench.evaluate, steps)

  # Model FLOPs (an unbound copy of the model: no BatchNorm axis name needed in eval mode).
  dtype = compute_dtype(config)
  macs = model_stats.count_macs(create_model({**config.model, 'dtype': dtype}),
                                image_size=image_size, channels=channels)
  train_p10, train_med, train_p90 = np.percentile(train_times, [10, 50, 90])
  infer_p10, infer_med, infer_p90 = np.percentile(infer_times, [10, 50, 90])
  train_ips = batch_size / train_med
  infer_ips = eval_batch_size / infer_med
  train_flops = 3 * 2 * macs * train_ips
  infer_flops = 2 * macs * infer_ips

  device = jax.local_devices()[0]
  if peak_flops is None:
    peak_flops = peak_flops_for(device.device_kind, dtype)
  total_peak = peak_flops * par.num_devices if peak_flops else None
  return {
      'model': model_label(config.model),
      'image_size': image_size,
      'batch_size': batch_size,
      'eval_batch_size': eval_batch_size,
      'num_params': int(run.num_params),
      'num_devices': int(par.num_devices),
      'device_kind': device.device_kind,
      'backend': jax.default_backend(),
      'jax_version': jax.__version__,
      'dtype': dtype,
      'conv_impl': run.model.conv_impl,   # what 'auto' became for this model here
      'parallelism': par.mode,
      'steps': steps,
      'warmup': warmup,
      'compile_s': round(compile_s, 3),
      'train_step_ms_median': _ms(train_med),
      'train_step_ms_p10': _ms(train_p10),
      'train_step_ms_p90': _ms(train_p90),
      'train_images_per_sec': round(float(train_ips), 2),
      'train_images_per_sec_per_device': round(float(train_ips) / par.num_devices, 2),
      'infer_compile_s': round(infer_compile_s, 3),
      'infer_step_ms_median': _ms(infer_med),
      'infer_step_ms_p10': _ms(infer_p10),
      'infer_step_ms_p90': _ms(infer_p90),
      'infer_images_per_sec': round(float(infer_ips), 2),
      'peak_memory_bytes': _peak_memory_bytes(),
      'macs_per_image': int(macs),
      'train_flops_per_image': int(6 * macs),
      'train_tflops_achieved': float(train_flops / 1e12),
      'infer_tflops_achieved': float(infer_flops / 1e12),
      'peak_tflops_per_device': peak_flops / 1e12 if peak_flops else None,
      'mfu': float(train_flops / total_peak) if total_peak else None,
      'infer_mfu': float(infer_flops / total_peak) if total_peak else None,
  }
