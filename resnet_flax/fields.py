"""Typed reads of config fields, each failing with one `ConfigError` line that names the field.

The sections of a config (`model`, `data`, `optimizer`, `schedule`) are flat mappings; the
modules that own a section read its fields through these checks, so every field is checked the
same way and in one place ('schedule.base_lr=inf must be a finite number in (0.0, inf).').
"""

import math
from typing import Any, Mapping, Optional

import numpy as np

from resnet_flax.errors import ConfigError


def merged(cfg: Optional[Mapping[str, Any]], defaults: Mapping[str, Any],
           section: str) -> dict[str, Any]:
  """The defaults overridden by the config's fields; unknown fields are an error."""
  cfg = {} if cfg is None else {k: cfg[k] for k in cfg.keys()}
  unknown = sorted(set(cfg) - set(defaults))
  if unknown:
    raise ConfigError(f'unknown {section} field(s) {", ".join(unknown)}; known: '
                      f'{", ".join(sorted(defaults))}')
  return {**defaults, **cfg}


def overriding(value: Any, current: Any) -> Any:
  """A command-line override `value` for a field now holding `current`: the word 'none',
  read as None, stays the text 'none' for a string field (`compiler_options=none`,
  `pooling=none`)."""
  return 'none' if value is None and isinstance(current, str) else value


def choice(cfg: Mapping[str, Any], section: str, field: str, allowed) -> Any:
  value = cfg[field]
  if value not in allowed:
    raise ConfigError(f'{section}.{field}={value!r} is not allowed; allowed: '
                      f'{", ".join(map(repr, allowed))}')
  return value


def number(cfg: Mapping[str, Any], section: str, field: str, *, low=None, high=None,
           low_open: bool = False, high_open: bool = False) -> float:
  """cfg[field] as a finite float, checked against [low, high] (open ends where asked)."""
  value = cfg[field]
  try:
    if isinstance(value, (bool, str)):
      raise TypeError
    value = float(value)  # also numpy scalars
  except (TypeError, ValueError):
    raise ConfigError(f'{section}.{field}={value!r} must be a number.') from None
  if math.isnan(value):
    raise ConfigError(f'{section}.{field}={value!r} must be a number, not NaN.')
  if math.isinf(value):
    raise ConfigError(f'{section}.{field}={value!r} must be a finite number.')
  bad_low = low is not None and (value <= low if low_open else value < low)
  bad_high = high is not None and (value >= high if high_open else value > high)
  if bad_low or bad_high:
    left = '(-inf' if low is None else ('(' if low_open else '[') + repr(low)
    right = 'inf)' if high is None else repr(high) + (')' if high_open else ']')
    raise ConfigError(f'{section}.{field}={cfg[field]!r} must be in {left}, {right}.')
  return value


def integer(value: Any, name: str) -> int:
  """`value` as an int (an integral float such as 2.0 is accepted; True is not)."""
  if isinstance(value, bool):
    raise ConfigError(f'{name}={value!r} must be an integer.')
  try:
    as_int = int(value)
  except (TypeError, ValueError, OverflowError):
    raise ConfigError(f'{name}={value!r} must be an integer.') from None
  if as_int != value:
    raise ConfigError(f'{name}={value!r} must be an integer.')
  return as_int


def boolean(cfg: Mapping[str, Any], section: str, field: str) -> bool:
  value = cfg[field]
  if not isinstance(value, (bool, np.bool_)):
    raise ConfigError(f'{section}.{field}={value!r} must be True or False.')
  return bool(value)
