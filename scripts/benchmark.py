"""Training and inference throughput of a config's model, on synthetic data:
`python scripts/benchmark.py --config configs/NAME.py [--config.FIELD=VALUE ...] [--steps 20]
[--warmup 3] [--peak-tflops T] [--json]`. With no --config, benchmarks configs/default.py.

The config's data source is replaced by synthetic images of its image size (or the model
family's default: 224 ImageNet, 32 CIFAR), so no dataset is needed. Prints a table, or with
--json one JSON object. See resnet_flax/benchmarking.py for what is measured and how.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from resnet_flax import cli, configuration  # noqa: E402

_CONFIG = cli.define_config_flag(sys.argv)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (train and inference each).')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after the compiling first call.')
_PEAK_TFLOPS = flags.DEFINE_float(
    'peak-tflops', None, 'Peak TFLOP/s of one device for the MFU (default: the known figure '
    'for the device kind and compute dtype, if any).')
_JSON = flags.DEFINE_boolean('json', False, 'Print one JSON object instead of a table.')


def _fmt(value, digits: int = 4) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, float):
    return f'{value:.{digits}g}' if abs(value) < 1e3 else f'{value:,.0f}'
  if isinstance(value, int) and not isinstance(value, bool):
    return f'{value:,}'
  return str(value)


def format_table(r: dict) -> str:
  def ms(prefix):
    return (f"{_fmt(r[prefix + '_median'])} ms  (p10 {_fmt(r[prefix + '_p10'])}, "
            f"p90 {_fmt(r[prefix + '_p90'])})")
  mem = r['peak_memory_bytes']
  rows = [
      ('model', f"{r['model']}  ({_fmt(r['num_params'])} parameters)"),
      ('image size', f"{r['image_size']} px"),
      ('batch (train / infer)', f"{r['batch_size']} / {r['eval_batch_size']}"),
      ('devices', f"{r['num_devices']} x {r['device_kind']} ({r['backend']}, "
                  f"{r['parallelism']})"),
      ('JAX', r['jax_version']),
      ('dtype', r['dtype']),
      ('steps (timed, warmup)', f"{r['steps']}, {r['warmup']}"),
      ('train compile', f"{_fmt(r['compile_s'])} s"),
      ('train step', ms('train_step_ms')),
      ('train images/s', f"{_fmt(r['train_images_per_sec'])}  "
                         f"({_fmt(r['train_images_per_sec_per_device'])} per device)"),
      ('infer compile', f"{_fmt(r['infer_compile_s'])} s"),
      ('infer step', ms('infer_step_ms')),
      ('infer images/s', _fmt(r['infer_images_per_sec'])),
      ('peak memory', 'n/a' if mem is None else f'{mem / 2**30:.2f} GiB'),
      ('MACs / image', f"{r['macs_per_image'] / 1e9:.4g} G (forward)"),
      ('train TFLOP/s', f"{_fmt(r['train_tflops_achieved'])}  (3 x 2 x MACs per image)"),
      ('infer TFLOP/s', f"{_fmt(r['infer_tflops_achieved'])}  (2 x MACs per image)"),
      ('peak TFLOP/s / device', _fmt(r['peak_tflops_per_device'])),
      ('MFU (train / infer)', 'n/a (unknown peak; pass --peak-tflops)' if r['mfu'] is None
       else f"{100 * r['mfu']:.1f}% / {100 * r['infer_mfu']:.1f}%"),
  ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from resnet_flax import benchmarking
  peak = None if _PEAK_TFLOPS.value is None else _PEAK_TFLOPS.value * 1e12
  try:
    result = benchmarking.benchmark(_CONFIG.value, steps=_STEPS.value, warmup=_WARMUP.value,
                                    peak_flops=peak)
  except (configuration.ConfigError, ValueError) as e:
    return cli.report_error(e)
  print(json.dumps(result) if _JSON.value else format_table(result))
  return 0


if __name__ == '__main__':
  app.run(main)
