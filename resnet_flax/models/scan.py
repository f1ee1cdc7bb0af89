"""Runs of identical units: as one `nn.scan` and the two parameter layouts it gives (stacked,
unrolled), or, in forward-only passes, as one loop over their own parameters.

Within a stage, every unit after the first that does not stride has the same shapes: its input
and output are the stage's width. A run of such units (`stage_segments`) can be one
`flax.linen.scan` over parameters stacked along a leading axis, so the compiler sees the unit
once however deep the network is. Its module is named `stageS_unitsAtoB` (units A..B, 1-based,
as the unrolled `stageS_unitA` ... `stageS_unitB`), and each of its leaves has a leading axis
of B - A + 1.

`run_looped` is the forward-only counterpart for the unrolled layout: a run of identical
units, each with its own parameters, applied as one loop (`model.eval_loop`).

`unstack(tree)` turns any mapping keyed by module names (params, batch_stats, their EMA, an
optimizer's momentum) into the unrolled layout, `restack(tree, like)` into the layout of
`like`; both are lossless. Consumers that need per-unit names (weight converters, `init_from`
across layouts, per-layer diagnostics) go through them.
"""

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_SCANNED = re.compile(r'stage(\d+)_units(\d+)to(\d+)')
_UNIT = re.compile(r'stage(\d+)_unit(\d+)')
SCAN_CHOICES = ('auto', 'on', 'off')
REMAT_CHOICES = ('none', 'unit')
EVAL_LOOP_CHOICES = ('auto', 'on', 'off')
# 'auto' scans a run of at least this many identical units (measured: docs/BENCHMARKS.md; on
# CPU a scanned ResNet-56 step took 1.34x the unrolled one, and unrolled ResNet-110 compiles
# as fast as scanned, while ResNet-152's run of 35 units compiles 2.3x faster scanned)
AUTO_MIN_UNITS = 32


@dataclasses.dataclass(frozen=True)
class Segment:
  """Units [start, stop) of a stage (0-based); `scanned` for a run under one nn.scan."""
  start: int
  stop: int
  scanned: bool

  def name(self, stage: int) -> str:
    if self.scanned:
      return f'stage{stage}_units{self.start + 1}to{self.stop}'
    return f'stage{stage}_unit{self.start + 1}'

  def unit_names(self, stage: int) -> list[str]:
    """The unrolled layout's module name of each of the segment's units."""
    return [Segment(u, u + 1, False).name(stage) for u in range(self.start, self.stop)]


def min_units(scan_units: str, remat: bool = False) -> int:
  """The shortest run of identical units that is scanned (0: none) for a `model.scan_units`.
  With rematerialisation 'auto' scans every run: XLA's CPU back end schedules the recomputation
  of unrolled units next to the forward pass, where it saves no memory; inside a scan it
  cannot (measured: docs/BENCHMARKS.md)."""
  if scan_units == 'auto':
    return 2 if remat else AUTO_MIN_UNITS
  return {'on': 2, 'off': 0}[scan_units]


def stage_segments(strides: Sequence[int], min_run: int) -> list[Segment]:
  """The segments of a stage whose units stride `strides[j]`: a unit after the first that
  does not stride joins a run of identical units; runs of at least `min_run` (>= 2) units are
  scanned, everything else stays one unit a segment."""
  plain = [j > 0 and s == 1 for j, s in enumerate(strides)]
  segments, j = [], 0
  while j < len(strides):
    k = j
    while k < len(strides) and plain[k]:
      k += 1
    if k - j >= max(2, min_run) and min_run > 0:
      segments.append(Segment(j, k, True))
      j = k
    else:
      segments.append(Segment(j, j + 1, False))
      j += 1
  return segments


def _body(module, carry, drop_rate):
  return module(carry, drop_rate), None


def run_scanned(unit: nn.Module, x, drop_rates: Sequence[float], remat: bool = False):
  """Applies `unit` once per entry of `drop_rates` (each unit's stochastic-depth rate) to `x`
  under nn.scan: its variables stacked along a leading axis, each unit initialised with its own
  random key and drawing its own drop-path masks (`split_rngs`)."""
  body: Callable = nn.remat(_body) if remat else _body
  scan = nn.scan(body, variable_axes={'params': 0, 'batch_stats': 0},
                 split_rngs={'params': True, 'drop_path': True}, length=len(drop_rates))
  x, _ = scan(unit, x, jnp.asarray(drop_rates, jnp.float32))
  return x


def eval_loop(setting: str, block: str, platform: Optional[str] = None) -> bool:
  """Whether forward-only passes run each run of identical unrolled units as a loop
  (`run_looped`) for a `model.eval_loop` and a network of `block` units ('basic' or
  'bottleneck'). 'auto': for bottleneck units on the CPU back end only, where it was measured
  faster (ResNet-50 and -101, Keras' ResNet50, pre-activation ResNet-164); basic units
  (ResNet-18, -20, -56) ran as fast or slightly slower, and GPU and TPU keep the unrolled
  pass (docs/BENCHMARKS.md)."""
  if setting == 'auto':
    return block == 'bottleneck' and (platform or jax.default_backend()) == 'cpu'
  return setting == 'on'


def _apply(unit: nn.Module, variables: Mapping, x):
  return unit.apply(variables, x)


def run_looped(unit: nn.Module, x, variables: Sequence[Mapping],
               join: Optional[Callable] = None):
  """The unbound `unit` applied to `x` once per entry of `variables` (each unit's own
  collections, e.g. {'params': ..., 'batch_stats': ...}), in order, as one loop whose
  iteration k takes branch k of a `lax.switch`: no parameter is stacked or copied. Forward
  only. With `join`, `unit` returns its residual branch y and an iteration's output is
  `join(y, h)` (h: its input), computed outside the switch; without it (units that do not add
  their input unchanged) the switch's result is the carry.

  A loop materialises its carry once per iteration. Unrolled, XLA's CPU fusion may recompute
  a unit's element-wise tail (BatchNorm, residual addition, ReLU) inside the next units' fused
  additions, re-reading their convolution outputs (docs/BENCHMARKS.md: over a whole stage with
  XLA's own fusions, over up to three units with the library's). The join outside the switch
  writes the next carry in place: a switch's result is a new buffer, which the loop copies
  into its carry once per iteration (docs/BENCHMARKS.md)."""
  branches = [functools.partial(_apply, unit, v) for v in variables]

  def body(k, h):
    y = jax.lax.switch(k, branches, h)
    return y if join is None else join(y, h)
  return jax.lax.fori_loop(0, len(branches), body, x)


# --- the two layouts ----------------------------------------------------------------------------

def is_scanned_name(name: str) -> bool:
  return _SCANNED.fullmatch(name) is not None


def unit_names(name: str) -> list[str]:
  """The unrolled names of a scanned module's units ([] for any other name)."""
  m = _SCANNED.fullmatch(name)
  if m is None:
    return []
  stage, first, last = (int(g) for g in m.groups())
  return Segment(first - 1, last, True).unit_names(stage)


def unstack(tree: Mapping[str, Any]) -> dict:
  """`tree` (keyed by top-level module names) with every scanned module split into its units:
  'stage1_units2to5' -> 'stage1_unit2' ... 'stage1_unit5'."""
  out = {}
  for name, sub in tree.items():
    units = unit_names(name)
    if not units:
      out[name] = sub
      continue
    for k, unit in enumerate(units):
      out[unit] = jax.tree.map(lambda a, k=k: a[k], sub)
  return out


def restack(tree: Mapping[str, Any], like: Mapping[str, Any]) -> dict:
  """`tree` (unrolled, stacked or mixed) in the layout of `like` (module names as in `like`;
  `like` may hold shapes only). Modules of `tree` that `like` lacks are kept as they are."""
  flat = unstack(tree)
  out = {}
  for name in like:
    names = unit_names(name)
    if not names:
      if name in flat:
        out[name] = flat[name]
      continue
    units = [flat.get(n) for n in names]
    if any(u is None for u in units):
      continue        # not in `tree`: the caller reports it as missing
    out[name] = jax.tree.map(lambda *leaves: np.stack([np.asarray(a) for a in leaves]), *units)
  used = {unit for n in like for unit in unit_names(n)}
  for name, sub in flat.items():
    if name not in out and name not in used and name not in like:
      out[name] = sub
  return out


def has_units(tree: Any) -> bool:
  """Whether `tree` is a mapping keyed by unit modules (scanned or not)."""
  return isinstance(tree, Mapping) and any(
      isinstance(k, str) and (_SCANNED.fullmatch(k) or _UNIT.fullmatch(k)) for k in tree)


def convert_layout(tree: Any, like: Any, fn: Optional[Callable] = None) -> Any:
  """Every unit-keyed mapping inside `tree` (any pytree: a TrainState, an optimizer state)
  put into the layout of the mapping at the same place in `like` (`fn(node, like_node)`,
  default `restack`)."""
  fn = fn or restack
  return jax.tree.map(lambda node, ref: fn(node, ref) if has_units(node) else node, tree, like,
                      is_leaf=has_units)
