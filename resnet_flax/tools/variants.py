"""Config variants of one model side by side in one process: train or eval step time, the
train step's compile time, or its temporary memory, measured in alternating rounds (A B A B,
the order reversed every other round) and quoted as the median ratio to the first variant.

A variant is a set of config overrides (`{'model.conv_impl': 'xla'}`); the first one is the
reference. Each variant's run is built as training builds it, on synthetic data
(`benchmarking.SyntheticRun`), so no dataset is needed.

* `train` / `eval`: per round, `steps` timed steps of each variant (each waited for) after
  `warmup` untimed ones; a variant's figure for the round is the median of its steps, and its
  ratio for the round is that over the reference's in the same round.
* `compile`: per round, each variant's train step lowered and compiled from scratch (the
  persistent compilation cache is switched off for the call), after one untimed compilation
  of the first variant (the first compilation in a process also pays one-time set-up).
* `memory`: XLA's temporary memory of the compiled train step
  (`compiled.memory_analysis().temp_size_in_bytes`), once per variant (it is deterministic).
"""

import time
from typing import Sequence

import jax
import numpy as np

from resnet_flax import config as config_lib
from resnet_flax.errors import ConfigError
from resnet_flax.tools.benchmarking import SyntheticRun, time_calls

KINDS = ('train', 'eval', 'compile', 'memory')


def label(overrides: dict) -> str:
  return ','.join(f'{k}={v}' for k, v in overrides.items()) or '(config)'


def _configure(config, overrides: dict):
  """`config` with the overrides, text values typed as the fields they set."""
  typed = {}
  for field, value in overrides.items():
    node = config
    for name in field.split('.')[:-1]:
      node = node[name] if name in node else {}
    current = node.get(field.split('.')[-1]) if hasattr(node, 'get') else None
    try:
      typed[field] = _typed(value, current)
    except ValueError as e:
      raise ConfigError(f'--variant {field}={value}: {e}') from None
  return config_lib.with_fields(config, typed)


def _typed(value, current):
  """A variant's value (text from the command line, or already typed) as the type of the
  field's current value."""
  if not isinstance(value, str) or isinstance(current, str) or current is None:
    return value
  if isinstance(current, bool):
    if value.lower() not in ('true', 'false'):
      raise ValueError(f'expected true or false, got {value!r}')
    return value.lower() == 'true'
  if isinstance(current, (int, float)):
    return type(current)(float(value)) if isinstance(current, float) else int(value)
  if isinstance(current, tuple):
    kind = type(current[0]) if current else float
    return tuple(kind(part) for part in value.split(',') if part.strip())
  return value


def _compiled(config, overrides: dict, devices):
  run = SyntheticRun(_configure(config, overrides), steps=1, warmup=0, devices=devices)
  started = time.perf_counter()
  compiled = run.run.p_train.lower(run.state, run.train_batches[0]).compile()
  return compiled, time.perf_counter() - started


def compare(config, variants: Sequence[dict], *, kind: str = 'train', rounds: int = 5,
            steps: int = 3, warmup: int = 1, devices=None) -> dict:
  """The record of `variants` of `config` measured for `kind` (see the module docstring)."""
  if kind not in KINDS:
    raise ConfigError(f'--what {kind}: choose one of {", ".join(KINDS)}')
  if len(variants) < 2 or rounds < 1 or steps < 1 or warmup < 0:
    raise ConfigError('give at least two variants, rounds >= 1, steps >= 1 and warmup >= 0')
  devices = devices or jax.devices()[:1]
  names = [label(v) for v in variants]
  for v in variants:
    _configure(config, v)   # every override names a field before anything is compiled
  per_round = {n: [] for n in names}
  if kind == 'memory':
    for name, v in zip(names, variants):
      per_round[name].append(float(_compiled(config, v, devices)[0].memory_analysis()
                                   .temp_size_in_bytes))
    rounds = 1
  elif kind == 'compile':
    saved = jax.config.jax_enable_compilation_cache
    jax.config.update('jax_enable_compilation_cache', False)
    try:
      _compiled(config, variants[0], devices)   # untimed: the process's one-time set-up
      for r in range(rounds):
        order = list(zip(names, variants))
        for name, v in (order if r % 2 == 0 else order[::-1]):
          per_round[name].append(_compiled(config, v, devices)[1])
    finally:
      jax.config.update('jax_enable_compilation_cache', saved)
  else:
    runs = {}
    for name, v in zip(names, variants):
      runs[name] = SyntheticRun(_configure(config, v), steps=steps + warmup, warmup=warmup,
                                devices=devices)
      step = runs[name].train if kind == 'train' else runs[name].evaluate
      jax.block_until_ready(step(0))       # compile outside the rounds
    for r in range(rounds):
      for name in (names if r % 2 == 0 else names[::-1]):
        step = runs[name].train if kind == 'train' else runs[name].evaluate
        time_calls(step, warmup)
        per_round[name].append(float(np.median(time_calls(step, steps))))
  reference = np.asarray(per_round[names[0]])
  return {
      'kind': kind, 'unit': 'bytes' if kind == 'memory' else 's', 'rounds': rounds,
      'steps': steps, 'warmup': warmup, 'variants': names, 'per_round': per_round,
      'median': {n: float(np.median(v)) for n, v in per_round.items()},
      'median_ratio': {n: float(np.median(np.asarray(v) / reference))
                       for n, v in per_round.items()},
  }


def table(record: dict) -> str:
  unit = record['unit']
  scale, shown = (2.0 ** 20, 'MiB') if unit == 'bytes' else (1e-3, 'ms')
  lines = [f"{record['kind']}: median over {record['rounds']} round(s), ratio to the first",
           f"{'variant':<60} {shown:>12} {'ratio':>8}"]
  for name in record['variants']:
    lines.append(f"{name:<60} {record['median'][name] / scale:>12,.1f} "
                 f"{record['median_ratio'][name]:>8.3f}")
  return '\n'.join(lines)
