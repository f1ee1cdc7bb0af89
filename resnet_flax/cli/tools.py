"""`resnet-flax summary`, `resnet-flax benchmark`, `resnet-flax compare-variants`, `resnet-flax
profile-step` and `resnet-flax input-benchmark`: model statistics, step throughput on synthetic
data, config variants side by side, where a step's time goes, input-pipeline throughput."""

import argparse
import json
import sys

from resnet_flax.cli import common
from resnet_flax.errors import UserError


def _fmt(value, digits: int = 4) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, float):
    return f'{value:.{digits}g}' if abs(value) < 1e3 else f'{value:,.0f}'
  if isinstance(value, int) and not isinstance(value, bool):
    return f'{value:,}'
  return str(value)


def _table(rows) -> str:
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


# --- summary ----------------------------------------------------------------------------------

def parse_value(text: str):
  """'12' -> 12, '0.5' -> 0.5, 'true'/'false' -> bool, 'none' -> None, '3,4,6,3' -> tuple."""
  lowered = text.strip().lower()
  if lowered in ('true', 'false'):
    return lowered == 'true'
  if lowered in ('none', 'null'):
    return None
  if ',' in text:
    return tuple(parse_value(part) for part in text.split(',') if part.strip())
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def parse_assignments(items) -> dict:
  """['FIELD=VALUE', ...] (the values as `parse_value` reads them) -> {FIELD: value}."""
  out = {}
  for item in items:
    field, sep, value = item.partition('=')
    if not sep or not field.strip():
      raise UserError(f'--set expects FIELD=VALUE, got {item!r}')
    out[field.strip()] = parse_value(value)
  return out


def human(n: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(n) >= scale:
      return f'{n / scale:.2f}{unit}'
  return str(int(n))


def summary_table(summary: dict) -> str:
  header = ('Part', 'Output shape', 'Params', 'MACs')
  rows = [(r['name'], str(tuple(r['output_shape'])), f"{r['params']:,}", human(r['macs']))
          for r in summary['stages']]
  widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
  line = '  '.join('{:<%d}' % w if i < 2 else '{:>%d}' % w for i, w in enumerate(widths))
  rule = '-' * (sum(widths) + 2 * (len(widths) - 1))
  name = summary['name'] or '(config)'
  if summary.get('config_overrides'):
    name += f" ({', '.join(summary['config_overrides'])})"
  out = [f"Model: {name}   input: {summary['image_size']}x{summary['image_size']}",
         rule, line.format(*header), rule]
  out += [line.format(*row) for row in rows]
  out += [rule,
          f"Trainable params:  {summary['params']:,} ({human(summary['params'])})",
          f"BatchNorm stats:   {summary['batch_stats']:,}",
          f"MACs per image:    {summary['macs']:,} ({human(summary['macs'])})"]
  return '\n'.join(out)


def summary(argv=None) -> int:
  """Parameters, BatchNorm statistics and MACs of a model, per stage and in total:
  `resnet-flax summary resnet50 [--set depth=101 --set version=v2] [--image-size 160] [--json]`.
  Nothing is materialised: shapes come from `jax.eval_shape`, MACs from the traced jaxpr."""
  parser = argparse.ArgumentParser(prog='resnet-flax summary',
                                   description=summary.__doc__.split('\n')[0])
  parser.add_argument('name', help='registered model name (e.g. resnet50, resnet20)')
  parser.add_argument('--image-size', type=int, default=None,
                      help='input height and width (default: 224 ImageNet family, 32 CIFAR)')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='override a model config field (repeatable), e.g. depth=101')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  args = parser.parse_args((sys.argv if argv is None else argv)[1:])
  if args.image_size is not None and args.image_size < 1:
    parser.error(f'--image-size {args.image_size}: give a positive side in pixels')
  from resnet_flax import fields
  from resnet_flax.models import model_fields
  from resnet_flax.tools import model_stats
  try:
    cfg = model_fields(args.name)
    cfg.update({k: fields.overriding(v, cfg.get(k))
                for k, v in parse_assignments(args.set).items()})
    result = model_stats.summarize(cfg, args.image_size)
  except UserError as e:
    return common.report_error(e)
  result['config_overrides'] = list(args.set)
  print(json.dumps(result) if args.json else summary_table(result))
  return 0


# --- benchmark --------------------------------------------------------------------------------

def benchmark_table(r: dict) -> str:
  def ms(prefix):
    return (f"{_fmt(r[prefix + '_median'])} ms  (p10 {_fmt(r[prefix + '_p10'])}, "
            f"p90 {_fmt(r[prefix + '_p90'])})")
  mem = r['peak_memory_bytes']
  return _table([
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
  ])


def benchmark(argv=None) -> None:
  """Training and inference throughput of a config's model, on synthetic data:
  `resnet-flax benchmark --config FILE_OR_NAME [--config.FIELD=VALUE ...] [--steps 20]
  [--warmup 3] [--peak-tflops T] [--json]` (see resnet_flax/tools/benchmarking.py)."""
  from absl import app, flags

  def define():
    flags.DEFINE_integer('steps', 20, 'Timed steps (train and inference each).')
    flags.DEFINE_integer('warmup', 3, 'Untimed steps after the compiling first call.')
    flags.DEFINE_float('peak-tflops', None, 'Peak TFLOP/s of one device for the MFU (default: '
                       'the known figure for the device kind and compute dtype, if any).')
    flags.DEFINE_boolean('json', False, 'Print one JSON object instead of a table.')

  def run(config, _, args):
    if len(args) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(args[1:])}')
    from resnet_flax.tools import benchmarking
    fv = flags.FLAGS
    peak = None if fv['peak-tflops'].value is None else fv['peak-tflops'].value * 1e12
    try:
      result = benchmarking.benchmark(config, steps=fv.steps, warmup=fv.warmup,
                                      peak_flops=peak)
    except (UserError, ValueError) as e:
      return common.report_error(e if isinstance(e, UserError) else UserError(str(e)))
    print(json.dumps(result) if fv.json else benchmark_table(result))
    return 0

  common.run_absl(run, argv, define)


def _measure_command(argv, define, measure, table) -> None:
  """A measuring command over a config: `define()` adds its flags (with --json), `measure(config,
  flags)` returns the record, `table(record)` prints it; user errors are one line, exit 2."""
  from absl import app, flags

  def run(config, _, args):
    if len(args) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(args[1:])}')
    try:
      result = measure(config, flags.FLAGS)
    except (UserError, ValueError) as e:
      return common.report_error(e if isinstance(e, UserError) else UserError(str(e)))
    print(json.dumps(result) if flags.FLAGS.json else table(result))
    return 0

  common.run_absl(run, argv, define)


def _assignment(text: str) -> tuple[str, str]:
  field, sep, value = text.partition('=')
  if not sep or not field.strip():
    raise UserError(f'--variant expects FIELD=VALUE;FIELD=VALUE, got {text!r}')
  return field.strip(), value.strip()


def compare_variants(argv=None) -> None:
  """Config variants side by side in one process, in alternating rounds:
  `resnet-flax compare-variants --config FILE_OR_NAME [--config.FIELD=VALUE ...] --variant
  'FIELD=VALUE;FIELD=VALUE' --variant ... [--what train|eval|compile|memory] [--rounds 5]
  [--steps 3] [--warmup 1] [--json]`; the first variant is the reference (an empty one: the
  config as it is). See resnet_flax/tools/variants.py."""
  from absl import flags

  def define():
    flags.DEFINE_multi_string('variant', [], "Overrides 'FIELD=VALUE;FIELD=VALUE' (repeat; "
                              'the first is the reference, an empty string the config itself).')
    flags.DEFINE_string('what', 'train', 'train, eval (step time), compile (train step compile '
                        'time) or memory (XLA temporary memory of the train step).')
    flags.DEFINE_integer('rounds', 5, 'Alternating rounds.')
    flags.DEFINE_integer('steps', 3, 'Timed steps per variant and round (train, eval).')
    flags.DEFINE_integer('warmup', 1, 'Untimed steps before them, each round.')
    flags.DEFINE_boolean('json', False, 'Print one JSON object instead of a table.')

  def measure(config, fv):
    from resnet_flax.tools import variants
    chosen = [dict(_assignment(a) for a in v.split(';') if a.strip()) for v in fv.variant]
    return variants.compare(config, chosen, kind=fv.what, rounds=fv.rounds, steps=fv.steps,
                            warmup=fv.warmup)

  from resnet_flax.tools import variants
  _measure_command(argv, define, measure, variants.table)


# --- step profile -----------------------------------------------------------------------------

def profile_step(argv=None) -> None:
  """Where the time of a train or eval step goes, per kind of operation: `resnet-flax
  profile-step --config FILE_OR_NAME [--config.FIELD=VALUE ...] [--mode train|eval] [--steps 3]
  [--warmup 2] [--json]` (see resnet_flax/tools/step_profile.py)."""
  from absl import flags

  def define():
    flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Which step to profile.')
    flags.DEFINE_integer('steps', 3, 'Profiled steps.')
    flags.DEFINE_integer('warmup', 2, 'Untimed steps after the compiling first call.')
    flags.DEFINE_integer('top', 10, 'Instructions listed in the JSON record, slowest first.')
    flags.DEFINE_boolean('json', False, 'Print one JSON object instead of a table.')

  def measure(config, fv):
    from resnet_flax.tools import step_profile
    return step_profile.profile(config, mode=fv.mode, steps=fv.steps, warmup=fv.warmup,
                                top=fv.top)

  from resnet_flax.tools import step_profile
  _measure_command(argv, define, measure, step_profile.table)


# --- input benchmark --------------------------------------------------------------------------

def input_table(r: dict) -> str:
  return _table([
      ('data', f"{r['source']} {r['name'] if r['source'] == 'tfds' else r['dir']} "
               f"({r['split']}, {r['num_examples']:,} examples)"),
      ('back end / preset', f"{r['backend']} / {r['preprocess']}" +
                            (f" ({r['worker_count']} workers)" if r['backend'] == 'grain'
                             else '')),
      ('batch', f"{r['batch_size']} x {tuple(r['image_shape'])} {r['image_dtype']}"),
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
  ])


def compare_table(r: dict) -> str:
  def times(ratio) -> str:
    return 'n/a' if ratio is None else f'x{ratio:.2f}'
  to_reference = r.get('median_ratio_to_reference')
  rows = []
  for i, (v, rate, wall, ratio) in enumerate(zip(
      r['variants'], r['median_images_per_cpu_second'], r['median_images_per_sec'],
      r['median_ratio_to_first'])):
    text = f"{rate:,.0f} img/CPU-s, {wall:,.0f} img/s, {times(ratio)}"
    if to_reference:
      text += f', {times(to_reference[i])} of the reference'
    rows.append((f'variant {i}: ' + (' '.join(f'{k}={v}' for k, v in v.items()) or
                                     '(the config)'), text))
  rows.append(('medians over rounds', f"{r['rounds']} rounds, side by side; ratio: to "
                                      f"variant 0, per round"))
  return _table(rows)


def _variant(text: str) -> dict:
  """'data.backend=grain data.worker_count=2' -> {'data.backend': 'grain', ...}."""
  fields = {}
  for part in text.split():
    key, sep, value = part.partition('=')
    if not sep or not key:
      raise UserError(f'--variant {text!r}: expected FIELD=VALUE pairs separated by spaces')
    fields[key.removeprefix('config.')] = parse_value(value)
  return fields


def input_benchmark(argv=None) -> None:
  """Input-pipeline throughput of a config's data, without any model: `resnet-flax
  input-benchmark --config FILE_OR_NAME [--config.FIELD=VALUE ...] [--batches 50] [--warmup 5]
  [--split train|eval] [--variant 'FIELD=VALUE ...' ... --rounds 3]
  [--reference FILE.py:FUNCTION] [--json]` (see resnet_flax/tools/input_benchmark.py)."""
  from absl import app, flags

  def define():
    flags.DEFINE_integer('batches', 50, 'Timed batches.')
    flags.DEFINE_integer('warmup', 5, 'Untimed batches after the first one.')
    flags.DEFINE_enum('split', 'train', ['train', 'eval'], 'Which pipeline to measure.')
    flags.DEFINE_multi_string('variant', [], "Side by side: 'data.FIELD=VALUE ...' over the "
                              'config, once per --variant (two or more), measured in rounds.')
    flags.DEFINE_integer('rounds', 3, 'Rounds of a side-by-side comparison.')
    flags.DEFINE_string('reference', '', 'FILE.py:FUNCTION: an outside tf.data preprocessing '
                        'function of encoded image bytes (e.g. the Flax ImageNet example\'s '
                        'input_pipeline.py:preprocess_for_train), mapped over the files of the '
                        'folder split; measured after the variants (or alone).')
    flags.DEFINE_boolean('json', False, 'Print one JSON object instead of a table.')

  def run(config, _, args):
    if len(args) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(args[1:])}')
    from resnet_flax.tools import input_benchmark as pipeline
    fv = flags.FLAGS
    try:
      variants = [_variant(v) for v in fv.variant]
      if fv.reference and variants:
        variants.append({'reference': fv.reference})
      if variants:
        result = pipeline.compare(config, variants, rounds=fv.rounds, batches=fv.batches,
                                  warmup=fv.warmup, split=fv.split)
        table = compare_table
      else:
        result = pipeline.measure(config, batches=fv.batches, warmup=fv.warmup, split=fv.split,
                                  reference=fv.reference)
        table = input_table
    except UserError as e:
      return common.report_error(e)
    print(json.dumps(result, indent=2) if fv.json else table(result))
    return 0

  common.run_absl(run, argv, define)
