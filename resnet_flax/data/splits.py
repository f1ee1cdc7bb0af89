"""TFDS-style split strings for every source: 'train', 'train[:45000]', 'train[45000:]',
'train[:10%]', 'test[-1000:]'.

`parse_split` returns the split name and a slice; `select` applies it to a number of examples
(percent bounds round like TFDS: to the nearest example); `select_examples` is what the sources
call (a problem is a DataError naming the data). A bound beyond the split's examples
('train[:45000]' of 10,000) is an error, as in TFDS, not a silently shorter split.
"""

import re

from resnet_flax.errors import DataError

_SPLIT = re.compile(r'^\s*([A-Za-z0-9_\-]+)\s*(?:\[\s*([-+]?\d*\.?\d*%?)\s*:\s*([-+]?\d*\.?\d*%?)\s*\])?\s*$')


def parse_split(spec: str) -> tuple[str, str, str]:
  """'train[:45000]' -> ('train', '', '45000'). Raises ValueError on malformed strings."""
  m = _SPLIT.match(spec)
  if not m:
    raise ValueError(f"split {spec!r} is not of the form NAME or NAME[START:END] "
                     "(e.g. 'train', 'train[:45000]', 'train[90%:]')")
  return m.group(1), m.group(2) or '', m.group(3) or ''


def _bound(spec: str, text: str, n: int, default: int) -> int:
  if not text:
    return default
  try:
    value = round(float(text[:-1]) * n / 100.0) if text.endswith('%') else int(text)
  except ValueError:
    raise ValueError(f'split {spec!r}: the bound {text!r} is neither a whole number of examples '
                     f'nor a percentage') from None
  if not -n <= value <= n:
    raise ValueError(f'split {spec!r}: the bound {text} lies outside the {n} examples of the '
                     f'split; use bounds within [-{n}, {n}] or percentages')
  return value + n if value < 0 else value


def select(spec: str, n: int) -> tuple[str, range]:
  """(split name, range of example indices) of `spec` applied to a split of `n` examples."""
  name, start, end = parse_split(spec)
  lo, hi = _bound(spec, start, n, 0), _bound(spec, end, n, n)
  if hi <= lo:
    raise ValueError(f'split {spec!r} selects no examples of the {n} in {name!r}')
  return name, range(lo, hi)


def select_examples(spec: str, n: int, where: str) -> range:
  """`select`'s range, a problem with the split a DataError naming `where` and the fields."""
  try:
    return select(spec, n)[1]
  except ValueError as e:
    raise DataError(f'{where}: {e}; check data.train_split / data.eval_split') from None
