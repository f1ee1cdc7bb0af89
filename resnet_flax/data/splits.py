"""TFDS-style split strings for every source: 'train', 'train[:45000]', 'train[45000:]',
'train[:10%]', 'test[-1000:]'.

`parse_split` returns the split name and a slice; `select` applies it to a number of examples
(percent bounds round like TFDS: to the nearest example).
"""

import re

_SPLIT = re.compile(r'^\s*([A-Za-z0-9_\-]+)\s*(?:\[\s*([-+]?\d*\.?\d*%?)\s*:\s*([-+]?\d*\.?\d*%?)\s*\])?\s*$')


def parse_split(spec: str) -> tuple[str, str, str]:
  """'train[:45000]' -> ('train', '', '45000'). Raises ValueError on malformed strings."""
  m = _SPLIT.match(spec)
  if not m:
    raise ValueError(f"split {spec!r} is not of the form NAME or NAME[START:END] "
                     "(e.g. 'train', 'train[:45000]', 'train[90%:]')")
  return m.group(1), m.group(2) or '', m.group(3) or ''


def _bound(text: str, n: int, default: int) -> int:
  if not text:
    return default
  if text.endswith('%'):
    value = round(float(text[:-1]) * n / 100.0)
  else:
    value = int(text)
  if value < 0:
    value += n
  return max(0, min(n, value))


def select(spec: str, n: int) -> tuple[str, range]:
  """(split name, range of example indices) of `spec` applied to a split of `n` examples."""
  name, start, end = parse_split(spec)
  lo, hi = _bound(start, n, 0), _bound(end, n, n)
  if hi <= lo:
    raise ValueError(f'split {spec!r} selects no examples of the {n} in {name!r}')
  return name, range(lo, hi)
