"""Where a parameter sits in the network, read from its module path (the names `resnet.py` gives).

The `ResNet` module names its parts `stem_conv` / `stem_norm` (the deep stem: `stem_convK` /
`stem_normK`, K = 1..3; a conv stem pool: `stem_pool_conv` / `stem_pool_norm`), `stageS_unitU`
(1-based) with the unit's layers `convK` / `normK` / `shortcut_conv` / `shortcut_norm` and the
squeeze-and-excitation convs `se/reduce`, `se/expand`, `final_norm` (v2), and the head
`head_hidden1`... / `head`. Everything that maps names (weight converters, per-stage
gradient norms, freezing reports) reads them through these functions.
"""

import re
from typing import NamedTuple, Optional, Sequence

_UNIT_NAME = re.compile(r'stage(\d+)_unit(\d+)')      # the units' module names, 1-based
_LAYER_NAME = re.compile(r'(conv|norm)(\d+)')         # their layers (see `blocks`)


class UnitLayer(NamedTuple):
  """Where a layer sits in the network: stage and unit (1-based), `kind` ('conv', 'norm',
  'shortcut_conv', 'shortcut_norm', 'se_reduce', 'se_expand') and `index` (k of convK / normK;
  0 for the shortcut and the SE convs)."""
  stage: int
  unit: int
  kind: str
  index: int


def unit_layer(path: Sequence[str]) -> Optional[UnitLayer]:
  """The position of the layer at module path `path` (e.g. ('stage2_unit1', 'conv3'),
  ('stage1_unit2', 'se', 'reduce')) inside a residual unit, or None for a path outside the units
  (stem, final norm, head)."""
  unit = _UNIT_NAME.fullmatch(path[0]) if len(path) in (2, 3) else None
  if not unit:
    return None
  if len(path) == 3:
    if path[1] == 'se' and path[2] in ('reduce', 'expand'):
      return UnitLayer(int(unit[1]), int(unit[2]), f'se_{path[2]}', 0)
    return None
  if path[1] in ('shortcut_conv', 'shortcut_norm'):
    return UnitLayer(int(unit[1]), int(unit[2]), path[1], 0)
  layer = _LAYER_NAME.fullmatch(path[1])
  if not layer:
    return None
  return UnitLayer(int(unit[1]), int(unit[2]), layer[1], int(layer[2]))


def stage_of(path: str) -> str:
  """'stage2_unit3/conv1/kernel' -> 'stage2'; stem and head parameters keep their own name
  ('stem', 'head'; 'final_norm' -> 'final')."""
  first = path.split('/')[0]
  return first.split('_unit')[0] if first.startswith('stage') else first.split('_')[0]
