"""The one set of tree helpers: '/'-joined paths of pytree leaves, flat dicts, shape checks.

Flax variables, optimizer states and checkpoints are nested mappings; everything that names a
leaf by its path ('stage1_unit1/conv1/kernel') or compares two trees leaf by leaf goes through
these functions (over `flax.traverse_util` for nested dicts, `jax.tree_util` key paths for any
pytree).
"""

from typing import Any, Mapping, Optional

import jax
import numpy as np
from flax import traverse_util


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(keypath) -> str:
  """A `jax.tree_util` key path as 'a/b/c'."""
  return '/'.join(_key_name(k) for k in keypath)


def leaf_paths(tree: Any) -> Any:
  """A pytree like `tree` whose leaves are their '/'-joined paths ('stage1_unit1/conv1/kernel')."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path_str(path), tree)


def to_dict(tree: Any) -> Any:
  """Nested mappings (FrozenDict, ConfigDict, dict) as nested plain dicts; leaves unchanged."""
  if isinstance(tree, Mapping) or (hasattr(tree, 'items') and hasattr(tree, 'keys')):
    return {k: to_dict(v) for k, v in tree.items()}
  return tree


def flatten(tree: Mapping, sep: str = '/') -> dict:
  """{'a/b': leaf} of a nested mapping (empty sub-mappings are dropped)."""
  return traverse_util.flatten_dict(to_dict(tree), sep=sep)


def unflatten(flat: Mapping, sep: str = '/') -> dict:
  return traverse_util.unflatten_dict(dict(flat), sep=sep)


def shape_mismatch(expected: Mapping, found: Mapping) -> Optional[str]:
  """None when the two nested mappings have the same leaf paths and shapes; else what differs
  first ('missing a/b', 'unexpected a/c', 'a/b is (3,), expected (4,)') and how many differ."""
  want = {k: tuple(np.shape(v)) for k, v in flatten(expected).items()}
  have = {k: tuple(np.shape(v)) for k, v in flatten(found).items()}
  if want == have:
    return None
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  shapes = sorted(n for n in set(want) & set(have) if want[n] != have[n])
  first = (f'missing {missing[0]}' if missing else f'unexpected {extra[0]}' if extra else
           f'{shapes[0]} is {have[shapes[0]]}, expected {want[shapes[0]]}')
  return (f'{first}; {len(missing)} missing, {len(extra)} unexpected, {len(shapes)} of another '
          f'shape')


def num_elements(tree: Any) -> int:
  """The number of values in a pytree of arrays or shape structs."""
  return int(sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(tree)))
