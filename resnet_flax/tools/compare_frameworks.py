"""resnet_flax against PyTorch or Keras on the same model and batch shape, side by side:
`compare(model, against='torch', batch_size=, rounds=, steps=, warmup=)`; the command is
`resnet-flax compare-frameworks`.

Each framework runs in a process of its own (`step_server` workers: `jax_steps` for ours,
the project's real train and eval steps; `torch_steps` for torchvision's model, or the CIFAR
reference ResNet of tests/torch_models.py; `keras_steps` for Keras applications' ResNets,
compiled by XLA), because two frameworks in one process slow each other several-fold (both
keep thread pools on the same cores). The reference worker starts first, so a missing torch or
TensorFlow is reported (one line) before anything is compiled.

`against='keras-program'` (eval only) times Keras' own forward program on our XLA: a Keras
worker exports the program TensorFlow's XLA bridge compiles for Keras' inference forward pass
(`keras_program`, with its weights and logits) and exits, then `xla_program` runs it in a JAX
process. `keras_eval='program'` has the Keras worker time that same program on TensorFlow's
XLA as its eval step (instead of `predict_on_batch`). Against our eval step, the two tell
whether a gap to Keras lies in the program or in the XLA build that runs it.

Our side is the model's shipped recipe (`benchmarking.shipped_config`) with the caller's
'section.field' overrides, checked here before any worker starts. Fields that change how ours
computes, not what (`IMPLEMENTATION_FIELDS`: model.scan_units, model.eval_loop, model.remat,
model.conv_impl) may be set freely; fields that change the network must keep its PyTorch counterpart
(`torch_spec`, `keras_spec`): a CIFAR ResNet may change its depth (both sides follow),
anything else is a ConfigError. Keras' counterparts are our `keras_resnet*` models (Keras
applications' flavour: conv biases, its paddings and V2 strides), exactly its networks. Both
sides' parameter counts are in the result (`same_parameter_count`).

The timing runs in rounds. In each round every step kind (train, eval) is timed on both sides,
one after the other: `warmup` untimed calls, then `steps` timed ones, the median of those is
the side's figure for the round. The order alternates, ours first in rounds 1, 3, ... and
the reference first in rounds 2, 4, ..., so a change in the machine's load reaches both
sides. Per round: each side's median step time, images/s (batch / median), the process's CPU
cores busy during its timed steps, and the ratios ours/reference of step time and of images/s;
over rounds: the median of each. The reference side's values are under its framework's name
(`against`). The per-round values stay in the result: on a loaded machine PyTorch's
OpenMP threads (spinning while they wait) can collapse several-fold when other work takes the
cores, and a reader needs to see that.
"""

import shutil
import statistics
import tempfile
from typing import Any, Mapping, Optional, Sequence

from resnet_flax import compiler
from resnet_flax.errors import ConfigError
from resnet_flax.models import create_model, default_image_size, model_fields
from resnet_flax.tools import benchmarking, host_info, step_server
from resnet_flax.tools.keras_steps import EVAL_CALLS

KINDS = ('train', 'eval')
KERAS_PROGRAM = 'keras-program'   # Keras' forward program on our XLA: an eval step only
WORKERS = {'torch': 'resnet_flax.tools.torch_steps', 'keras': 'resnet_flax.tools.keras_steps',
           KERAS_PROGRAM: 'resnet_flax.tools.xla_program'}
LAYOUTS = ('channels_last', 'nchw')
TORCHVISION_NAMES = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
                     'resnext50_32x4d', 'resnext101_32x8d', 'resnext101_64x4d',
                     'wide_resnet50_2', 'wide_resnet101_2')
DEFAULT_BATCH = {'cifar': 128, 'imagenet': 16}


# Model fields that change how ours computes, not what: free to set on our side.
IMPLEMENTATION_FIELDS = ('name', 'scan_units', 'eval_loop', 'remat', 'conv_impl')
CIFAR_REFERENCE = 'resnet20'   # tests/torch_models.py builds its architecture at any depth 6n+2
KERAS_APPLICATIONS = {f'keras_resnet{d}{v}': f'ResNet{d}{v.upper()}'
                      for d in (50, 101, 152) for v in ('', 'v2')}


def _as_tuple(value):
  return tuple(value) if isinstance(value, list) else value   # a config stores either


def _differences(fields: Mapping[str, Any], reference: Mapping[str, Any],
                 free: Sequence[str]) -> list[str]:
  return sorted(k for k in reference if k not in free and k not in IMPLEMENTATION_FIELDS and
                _as_tuple(fields.get(k)) != _as_tuple(reference[k]))


def _check_counterpart(fields: Mapping[str, Any], reference: Mapping[str, Any],
                       free: Sequence[str], framework: str, what: str) -> None:
  differ = _differences(fields, reference, free)
  if differ:
    verb = 'differs' if len(differ) == 1 else 'differ'
    also = ' and depth' if 'depth' in free else ''
    raise ConfigError(f"model.{', model.'.join(differ)} {verb} from {what}, so there is "
                      f"no {framework} counterpart; only {', '.join(IMPLEMENTATION_FIELDS[1:])}"
                      f"{also} may be changed")


def torch_spec(model: str, fields: Mapping[str, Any], *, image_size: int, batch_size: int,
               layout: str, threads: int) -> dict:
  """The torch worker's spec for our model `model` with its resolved `fields` (the config's
  model section after overrides). Its PyTorch counterpart: torchvision's model of that name
  with the registered fields (only `IMPLEMENTATION_FIELDS` and num_classes may differ), or
  the CIFAR reference network when the fields are resnet20's at another depth (6n+2). A
  ConfigError names a model without one, or the fields that take ours away from it."""
  if layout not in LAYOUTS:
    raise ConfigError(f'layout {layout!r}: expected one of {", ".join(LAYOUTS)}')
  if fields.get('family') == 'cifar':
    source, reference, free = 'cifar', model_fields(CIFAR_REFERENCE), ('depth', 'num_classes')
    if (int(fields['depth']) - 2) % 6:
      raise ConfigError(f"model.depth={fields['depth']}: the CIFAR reference network has "
                        f"depth 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)")
  elif model in TORCHVISION_NAMES:
    source, reference, free = 'torchvision', model_fields(model), ('num_classes',)
  else:
    raise ConfigError(f'{model}: no PyTorch counterpart; compare a torchvision name '
                      f'({", ".join(TORCHVISION_NAMES)}) or a CIFAR ResNet with option-A '
                      f'shortcuts (resnet20, resnet32, resnet44, resnet56, resnet110)')
  _check_counterpart(fields, reference, free, 'PyTorch',
                     'the CIFAR reference network' if source == 'cifar' else
                     f'torchvision {model}')
  return {'source': source, 'model': model, 'depth': int(fields['depth']),
          'num_classes': int(fields['num_classes']), 'image_size': int(image_size),
          'batch_size': int(batch_size), 'layout': layout, 'threads': int(threads)}


def keras_spec(model: str, fields: Mapping[str, Any], *, image_size: int, batch_size: int,
               threads: int) -> dict:
  """The Keras worker's spec for our model `model` with its resolved `fields`: Keras
  applications' network of the same architecture (`KERAS_APPLICATIONS`, our `keras_resnet*`
  models); a ConfigError names a model without one, or the fields that take ours away from
  it."""
  if model not in KERAS_APPLICATIONS:
    raise ConfigError(f'{model}: no Keras counterpart; compare one of '
                      f'{", ".join(KERAS_APPLICATIONS)} (Keras applications\' networks)')
  application = KERAS_APPLICATIONS[model]
  _check_counterpart(fields, model_fields(model), ('num_classes',), 'Keras',
                     f'Keras {application}')
  return {'application': application, 'model': model,
          'num_classes': int(fields['num_classes']), 'image_size': int(image_size),
          'batch_size': int(batch_size), 'threads': int(threads)}


def reference_spec(against: str, model: str, fields: Mapping[str, Any], *, image_size: int,
                   batch_size: int, layout: str, threads: int) -> dict:
  """The reference worker's spec: `torch_spec` or `keras_spec` by `against`."""
  if against not in WORKERS:
    raise ConfigError(f'against {against!r}: expected one of {", ".join(WORKERS)}')
  if against in ('keras', KERAS_PROGRAM):
    if layout != 'channels_last':
      raise ConfigError(f'layout {layout!r}: Keras runs channels_last only; the layout '
                        f'choice is PyTorch\'s')
    return keras_spec(model, fields, image_size=image_size, batch_size=batch_size,
                      threads=threads)
  return torch_spec(model, fields, image_size=image_size, batch_size=batch_size,
                    layout=layout, threads=threads)


def _round(value: float, digits: int = 4) -> float:
  return float(f'{value:.{digits}g}')


def _measure(worker, kind: str, warmup: int, steps: int, batch_size: int) -> dict:
  reply = worker.time(kind, warmup=warmup, steps=steps)
  median = statistics.median(reply['seconds'])
  return {'step_ms': _round(1e3 * median), 'images_per_sec': _round(batch_size / median),
          'cpu_cores_busy': _round(reply['cpu_seconds'] / sum(reply['seconds']), 3),
          'step_ms_all': [_round(1e3 * s) for s in reply['seconds']]}


def _summary(per_round: Sequence[dict], kind: str, against: str) -> dict:
  values = [r[kind] for r in per_round]

  def med(side, key):
    return _round(statistics.median(v[side][key] for v in values))
  time_ratios = [v['time_ratio'] for v in values]
  return {'ours_step_ms_median': med('ours', 'step_ms'),
          f'{against}_step_ms_median': med(against, 'step_ms'),
          'ours_images_per_sec_median': med('ours', 'images_per_sec'),
          f'{against}_images_per_sec_median': med(against, 'images_per_sec'),
          'time_ratio_median': _round(statistics.median(time_ratios)),
          'speed_ratio_median': _round(statistics.median(v['speed_ratio'] for v in values)),
          'time_ratio_min': min(time_ratios), 'time_ratio_max': max(time_ratios)}


def compare(model: str, *, against: str = 'torch', batch_size: Optional[int] = None,
            rounds: int = 5, steps: int = 5, warmup: int = 1, layout: str = 'channels_last',
            threads: Optional[int] = None,
            overrides: Optional[Mapping[str, Any]] = None, kinds: Sequence[str] = KINDS,
            keras_eval: str = EVAL_CALLS[0], program_dir: Optional[str] = None,
            program_options: str = 'none', timeout_s: float = 1800.0) -> dict:
  """Times `model` in ours and in the framework `against` ('torch', 'keras' or
  'keras-program'; see the module doc); returns the whole record.

  `batch_size` None: 128 for the CIFAR family, 16 otherwise; `threads`: the reference's
  intra-op threads (None: the cores this process may use); `overrides`: 'section.field' =
  value for our config (e.g. {'model.scan_units': 'off'}); `kinds`: a subset of ('train', 'eval');
  `keras_eval`: what Keras' eval step calls (`keras_steps.EVAL_CALLS`); `program_dir`: where
  'keras-program' writes Keras' program, kept (None: a temporary folder, removed);
  `program_options`: the `compiler_options` setting it is compiled with ('none': XLA's
  defaults; 'auto': our eval step's options).
  Raises a UserError for what a user can fix (a missing torch or TensorFlow, an unknown model
  or field).
  """
  if min(rounds, steps) < 1 or warmup < 0:
    raise ConfigError(f'rounds={rounds}, steps={steps} must be >= 1 and warmup={warmup} >= 0')
  if (batch_size is not None and batch_size < 1) or (threads is not None and threads < 1):
    raise ConfigError(f'batch size {batch_size} and threads {threads} must be >= 1')
  if not kinds or any(k not in KINDS for k in kinds):
    raise ConfigError(f'kinds {list(kinds)}: expected a subset of {", ".join(KINDS)}')
  if against == KERAS_PROGRAM and list(kinds) != ['eval']:
    raise ConfigError(f'--against {against} times the forward pass only: add --kinds eval')
  if keras_eval not in EVAL_CALLS:
    raise ConfigError(f'keras eval {keras_eval!r}: expected one of {", ".join(EVAL_CALLS)}')
  if program_options not in compiler.CHOICES:
    raise ConfigError(f'program options {program_options!r}: expected one of '
                      f'{", ".join(compiler.CHOICES)}')
  if program_options != 'none' and against != KERAS_PROGRAM:
    raise ConfigError(f'program options {program_options!r} are a setting of --against '
                      f'{KERAS_PROGRAM}, not {against}')
  if keras_eval != EVAL_CALLS[0] and against != 'keras':
    raise ConfigError(f'keras eval {keras_eval!r} is a setting of --against keras, not '
                      f'{against}')
  batch_size = int(batch_size or DEFAULT_BATCH[model_fields(model)['family']])
  threads = int(threads or host_info.cores())
  overrides = dict(overrides or {})
  config = benchmarking.shipped_config(model, batch_size=batch_size, overrides=overrides)
  fields = dict(config.model)
  spec = reference_spec(against, model, fields, batch_size=batch_size, layout=layout,
                        threads=threads,
                        image_size=config.data.image_size or default_image_size(fields))
  ours_spec = {'model': model, 'batch_size': batch_size, 'overrides': overrides}
  env = step_server.worker_env()
  workers, cleanups, exported = [], [], {}
  try:
    if against == KERAS_PROGRAM:
      if program_dir is None:
        program_dir = tempfile.mkdtemp(prefix='keras-program-')
        cleanups.append(lambda: shutil.rmtree(program_dir, ignore_errors=True))
      exporter = step_server.Worker('keras', WORKERS['keras'],
                                    {**spec, 'export_program': program_dir}, env=env,
                                    timeout_s=timeout_s)
      exporter.close()
      exported['keras'] = exporter.info
      spec = {'program_dir': program_dir, 'image_size': spec['image_size'],
              'block': create_model(fields).block_kind, 'compiler_options': program_options}
    elif against == 'keras':
      spec['eval_call'] = keras_eval
    workers.append(step_server.Worker(against, WORKERS[against], spec, env=env,
                                      timeout_s=timeout_s))
    workers.append(step_server.Worker('resnet_flax', 'resnet_flax.tools.jax_steps', ours_spec,
                                      env=env, timeout_s=timeout_s))
    reference_worker, ours_worker = workers
    per_round = []
    for r in range(rounds):
      order = ((('ours', ours_worker), (against, reference_worker)) if r % 2 == 0 else
               ((against, reference_worker), ('ours', ours_worker)))
      record = {'round': r + 1, 'first': order[0][0],
                'load_average_1m': host_info.load_average()}
      for kind in kinds:
        sides = {name: _measure(w, kind, warmup, steps, batch_size) for name, w in order}
        sides['time_ratio'] = _round(sides['ours']['step_ms'] / sides[against]['step_ms'])
        sides['speed_ratio'] = _round(sides['ours']['images_per_sec'] /
                                      sides[against]['images_per_sec'])
        record[kind] = sides
      per_round.append(record)
  finally:
    for w in workers:
      w.close()
    for cleanup in cleanups:
      cleanup()
  return {
      'model': model, 'label': benchmarking.model_label(config.model), 'against': against,
      'batch_size': batch_size, 'image_size': spec['image_size'],
      'rounds': rounds, 'steps': steps, 'warmup': warmup, 'kinds': list(kinds),
      'layout': reference_worker.info['layout'],
      # XLA's CPU run time in a JAX process takes no thread count
      'reference_threads': None if against == KERAS_PROGRAM else threads,
      'machine': host_info.describe(),
      'ours': ours_worker.info, against: reference_worker.info, **exported,
      'same_parameter_count': (ours_worker.info['num_params'] ==
                               reference_worker.info['num_params']),
      'per_round': per_round,
      'summary': {kind: _summary(per_round, kind, against) for kind in kinds},
  }


def _reference_line(result: dict) -> str:
  ref = result[result['against']]
  if result['against'] == KERAS_PROGRAM:
    return (f"{ref['model_source']}, {ref['num_params']:,} parameters, run by {ref['run_by']} "
            f"(logits within {ref['max_relative_difference_from_keras']:.1g} of Keras')")
  if result['against'] == 'keras':
    return (f"keras {ref['keras_version']} on tensorflow {ref['tensorflow_version']} "
            f"({ref['model_source']}, {ref['num_params']:,} parameters, jit_compile, "
            f"eval {ref['eval_call']}, {ref['threads']} threads)")
  return (f"torch {ref['torch_version']} ({ref['model_source']}, {ref['num_params']:,} "
          f"parameters, {result['layout']}, {ref['threads']} threads)")


def table(result: dict) -> str:
  """The per-round values and the medians, as plain text."""
  m, ref = result['machine'], result['against']
  lines = [f"{result['label']}, batch {result['batch_size']}, {result['image_size']} px, "
           f"float32; {result['rounds']} rounds of {result['steps']} timed steps after "
           f"{result['warmup']} untimed (median per side and round)",
           f"machine: {m['cpu_model']}, {m['cores']} cores, {' '.join(m['vector_flags'])}",
           f"ours: resnet_flax (jax {result['ours']['jax_version']}, "
           f"{result['ours']['num_params']:,} parameters, conv_impl "
           f"{result['ours']['conv_impl']}); {_reference_line(result)}"]
  if m.get('xla_flags'):
    lines.append(f"XLA_FLAGS: {m['xla_flags']}")
  if not result['same_parameter_count']:
    lines.append('WARNING: the two models have different parameter counts')
  # column widths: the reference's name ('torch', 'keras', 'keras-program') sets its columns
  f, ms, ips, tr = (max(7, len(ref) + 1), max(10, len(ref) + 4), max(12, len(ref) + 7),
                    max(17, len(ref) + 11))
  header = (f"{'kind':<6}{'round':>6}{'first':>{f}}{'load':>6}{'ours ms':>{ms}}"
            f"{ref + ' ms':>{ms}}{'ours img/s':>{ips}}{ref + ' img/s':>{ips}}"
            f"{'ours/' + ref + ' time':>{tr}}{'img/s ratio':>13}")
  lines += ['', header]
  for kind in result['kinds']:
    for r in result['per_round']:
      v = r[kind]
      load = '' if r['load_average_1m'] is None else f"{r['load_average_1m']:.1f}"
      lines.append(f"{kind:<6}{r['round']:>6}{r['first']:>{f}}{load:>6}"
                   f"{v['ours']['step_ms']:>{ms}.4g}{v[ref]['step_ms']:>{ms}.4g}"
                   f"{v['ours']['images_per_sec']:>{ips}.4g}{v[ref]['images_per_sec']:>{ips}.4g}"
                   f"{v['time_ratio']:>{tr}.3f}{v['speed_ratio']:>13.3f}")
    s = result['summary'][kind]
    lines.append(f"{kind:<6}{'median':>6}{'':>{f + 6}}{s['ours_step_ms_median']:>{ms}.4g}"
                 f"{s[ref + '_step_ms_median']:>{ms}.4g}"
                 f"{s['ours_images_per_sec_median']:>{ips}.4g}"
                 f"{s[ref + '_images_per_sec_median']:>{ips}.4g}"
                 f"{s['time_ratio_median']:>{tr}.3f}{s['speed_ratio_median']:>13.3f}")
  return '\n'.join(lines)
