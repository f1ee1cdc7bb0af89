"""resnet_flax against PyTorch on the same model and batch shape, side by side: `compare(model,
batch_size=, rounds=, steps=, warmup=)`; the command is `resnet-flax compare-frameworks`.

Each framework runs in a process of its own (`step_server` workers: `jax_steps` for ours,
the project's real train and eval steps; `torch_steps` for torchvision's model, or the CIFAR
reference ResNet of tests/torch_models.py), because JAX and torch in one process slow each
other several-fold (both keep thread pools on the same cores). The torch worker starts first,
so a missing torch is reported (one line) before anything is compiled.

Our side is the model's shipped recipe (`benchmarking.shipped_config`) with the caller's
'section.field' overrides, checked here before any worker starts. Fields that change how ours
computes, not what (`IMPLEMENTATION_FIELDS`: model.scan_units, model.remat, model.conv_impl)
may be set freely; fields that change the network must keep its PyTorch counterpart
(`torch_spec`): a CIFAR ResNet may change its depth (both sides follow), anything else is a
ConfigError. Both sides' parameter counts are in the result (`same_parameter_count`).

The timing runs in rounds. In each round every step kind (train, eval) is timed on both sides,
one after the other: `warmup` untimed calls, then `steps` timed ones, the median of those is
the side's figure for the round. The order alternates, ours first in rounds 1, 3, ... and
torch first in rounds 2, 4, ..., so a change in the machine's load reaches both sides. Per
round: each side's median step time, images/s (batch / median), the process's CPU cores busy
during its timed steps, and the ratios ours/torch of step time and of images/s; over rounds:
the median of each. The per-round values stay in the result: on a loaded machine PyTorch's
OpenMP threads (spinning while they wait) can collapse several-fold when other work takes the
cores, and a reader needs to see that.
"""

import statistics
from typing import Any, Mapping, Optional, Sequence

from resnet_flax.errors import ConfigError
from resnet_flax.models import default_image_size, model_fields
from resnet_flax.tools import benchmarking, host_info, step_server

KINDS = ('train', 'eval')
LAYOUTS = ('channels_last', 'nchw')
TORCHVISION_NAMES = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
                     'resnext50_32x4d', 'resnext101_32x8d', 'resnext101_64x4d',
                     'wide_resnet50_2', 'wide_resnet101_2')
DEFAULT_BATCH = {'cifar': 128, 'imagenet': 16}


# Model fields that change how ours computes, not what: free to set on our side.
IMPLEMENTATION_FIELDS = ('name', 'scan_units', 'remat', 'conv_impl')
CIFAR_REFERENCE = 'resnet20'   # tests/torch_models.py builds its architecture at any depth 6n+2


def _as_tuple(value):
  return tuple(value) if isinstance(value, list) else value   # a config stores either


def _differences(fields: Mapping[str, Any], reference: Mapping[str, Any],
                 free: Sequence[str]) -> list[str]:
  return sorted(k for k in reference if k not in free and k not in IMPLEMENTATION_FIELDS and
                _as_tuple(fields.get(k)) != _as_tuple(reference[k]))


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
  differ = _differences(fields, reference, free)
  if differ:
    what = 'the CIFAR reference network' if source == 'cifar' else f'torchvision {model}'
    verb = 'differs' if len(differ) == 1 else 'differ'
    raise ConfigError(f"model.{', model.'.join(differ)} {verb} from {what}, so there is "
                      f"no PyTorch counterpart; only {', '.join(IMPLEMENTATION_FIELDS[1:])} "
                      f"{'and depth ' if source == 'cifar' else ''}may be changed")
  return {'source': source, 'model': model, 'depth': int(fields['depth']),
          'num_classes': int(fields['num_classes']), 'image_size': int(image_size),
          'batch_size': int(batch_size), 'layout': layout, 'threads': int(threads)}


def _round(value: float, digits: int = 4) -> float:
  return float(f'{value:.{digits}g}')


def _measure(worker, kind: str, warmup: int, steps: int, batch_size: int) -> dict:
  reply = worker.time(kind, warmup=warmup, steps=steps)
  median = statistics.median(reply['seconds'])
  return {'step_ms': _round(1e3 * median), 'images_per_sec': _round(batch_size / median),
          'cpu_cores_busy': _round(reply['cpu_seconds'] / sum(reply['seconds']), 3),
          'step_ms_all': [_round(1e3 * s) for s in reply['seconds']]}


def _summary(per_round: Sequence[dict], kind: str) -> dict:
  values = [r[kind] for r in per_round]

  def med(side, key):
    return _round(statistics.median(v[side][key] for v in values))
  time_ratios = [v['time_ratio'] for v in values]
  return {'ours_step_ms_median': med('ours', 'step_ms'),
          'torch_step_ms_median': med('torch', 'step_ms'),
          'ours_images_per_sec_median': med('ours', 'images_per_sec'),
          'torch_images_per_sec_median': med('torch', 'images_per_sec'),
          'time_ratio_median': _round(statistics.median(time_ratios)),
          'speed_ratio_median': _round(statistics.median(v['speed_ratio'] for v in values)),
          'time_ratio_min': min(time_ratios), 'time_ratio_max': max(time_ratios)}


def compare(model: str, *, batch_size: Optional[int] = None, rounds: int = 5, steps: int = 5,
            warmup: int = 1, layout: str = 'channels_last', threads: Optional[int] = None,
            overrides: Optional[Mapping[str, Any]] = None, kinds: Sequence[str] = KINDS,
            timeout_s: float = 1800.0) -> dict:
  """Times `model` in both frameworks (see the module doc); returns the whole record.

  `batch_size` None: 128 for the CIFAR family, 16 otherwise; `threads`: torch's intra-op
  threads (None: the cores this process may use); `overrides`: 'section.field' = value for
  our config (e.g. {'model.scan_units': 'off'}); `kinds`: a subset of ('train', 'eval').
  Raises a UserError for what a user can fix (a missing torch, an unknown model or field).
  """
  if min(rounds, steps) < 1 or warmup < 0:
    raise ConfigError(f'rounds={rounds}, steps={steps} must be >= 1 and warmup={warmup} >= 0')
  if (batch_size is not None and batch_size < 1) or (threads is not None and threads < 1):
    raise ConfigError(f'batch size {batch_size} and threads {threads} must be >= 1')
  if not kinds or any(k not in KINDS for k in kinds):
    raise ConfigError(f'kinds {list(kinds)}: expected a subset of {", ".join(KINDS)}')
  batch_size = int(batch_size or DEFAULT_BATCH[model_fields(model)['family']])
  threads = int(threads or host_info.cores())
  overrides = dict(overrides or {})
  config = benchmarking.shipped_config(model, batch_size=batch_size, overrides=overrides)
  fields = dict(config.model)
  spec = torch_spec(model, fields, batch_size=batch_size, layout=layout, threads=threads,
                    image_size=config.data.image_size or default_image_size(fields))
  ours_spec = {'model': model, 'batch_size': batch_size, 'overrides': overrides}
  env = step_server.worker_env()
  workers = []
  try:
    workers.append(step_server.Worker('torch', 'resnet_flax.tools.torch_steps', spec, env=env,
                                      timeout_s=timeout_s))
    workers.append(step_server.Worker('resnet_flax', 'resnet_flax.tools.jax_steps', ours_spec,
                                      env=env, timeout_s=timeout_s))
    torch_worker, ours_worker = workers
    per_round = []
    for r in range(rounds):
      order = ((('ours', ours_worker), ('torch', torch_worker)) if r % 2 == 0 else
               (('torch', torch_worker), ('ours', ours_worker)))
      record = {'round': r + 1, 'first': order[0][0],
                'load_average_1m': host_info.load_average()}
      for kind in kinds:
        sides = {name: _measure(w, kind, warmup, steps, batch_size) for name, w in order}
        sides['time_ratio'] = _round(sides['ours']['step_ms'] / sides['torch']['step_ms'])
        sides['speed_ratio'] = _round(sides['ours']['images_per_sec'] /
                                      sides['torch']['images_per_sec'])
        record[kind] = sides
      per_round.append(record)
  finally:
    for w in workers:
      w.close()
  return {
      'model': model, 'label': benchmarking.model_label(config.model),
      'batch_size': batch_size, 'image_size': spec['image_size'],
      'rounds': rounds, 'steps': steps, 'warmup': warmup, 'kinds': list(kinds),
      'layout': layout, 'torch_threads': threads,
      'machine': host_info.describe(),
      'ours': ours_worker.info, 'torch': torch_worker.info,
      'same_parameter_count': ours_worker.info['num_params'] == torch_worker.info['num_params'],
      'per_round': per_round,
      'summary': {kind: _summary(per_round, kind) for kind in kinds},
  }


def table(result: dict) -> str:
  """The per-round values and the medians, as plain text."""
  m = result['machine']
  lines = [f"{result['label']}, batch {result['batch_size']}, {result['image_size']} px, "
           f"float32; {result['rounds']} rounds of {result['steps']} timed steps after "
           f"{result['warmup']} untimed (median per side and round)",
           f"machine: {m['cpu_model']}, {m['cores']} cores, {' '.join(m['vector_flags'])}",
           f"ours: resnet_flax (jax {result['ours']['jax_version']}, "
           f"{result['ours']['num_params']:,} parameters, conv_impl "
           f"{result['ours']['conv_impl']}); torch {result['torch']['torch_version']}"
           f" ({result['torch']['model_source']}, {result['torch']['num_params']:,} parameters, "
           f"{result['layout']}, {result['torch']['threads']} threads)"]
  if not result['same_parameter_count']:
    lines.append('WARNING: the two models have different parameter counts')
  header = (f"{'kind':<6}{'round':>6}{'first':>7}{'load':>6}{'ours ms':>10}{'torch ms':>10}"
            f"{'ours img/s':>12}{'torch img/s':>12}{'ours/torch time':>17}{'img/s ratio':>13}")
  lines += ['', header]
  for kind in result['kinds']:
    for r in result['per_round']:
      v = r[kind]
      load = '' if r['load_average_1m'] is None else f"{r['load_average_1m']:.1f}"
      lines.append(f"{kind:<6}{r['round']:>6}{r['first']:>7}{load:>6}"
                   f"{v['ours']['step_ms']:>10.4g}{v['torch']['step_ms']:>10.4g}"
                   f"{v['ours']['images_per_sec']:>12.4g}{v['torch']['images_per_sec']:>12.4g}"
                   f"{v['time_ratio']:>17.3f}{v['speed_ratio']:>13.3f}")
    s = result['summary'][kind]
    lines.append(f"{kind:<6}{'median':>6}{'':>13}{s['ours_step_ms_median']:>10.4g}"
                 f"{s['torch_step_ms_median']:>10.4g}{s['ours_images_per_sec_median']:>12.4g}"
                 f"{s['torch_images_per_sec_median']:>12.4g}{s['time_ratio_median']:>17.3f}"
                 f"{s['speed_ratio_median']:>13.3f}")
  return '\n'.join(lines)
