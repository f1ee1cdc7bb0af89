"""The shipped training configs (plain Python files with `get_config()`), found by name.

`--config cifar10` or `--config paper/cifar10_resnet` names a config shipped here (the
repository's top-level `configs/` is this folder); any other value is a path to a config file.
"""

import os

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT = 'default'


def path(name_or_path: str) -> str:
  """The file of a shipped config name ('cifar10', 'paper/cifar10_resnet', 'configs/x.py'),
  else `name_or_path` unchanged (a user's config file)."""
  if os.path.exists(name_or_path.split(':', 1)[0]):
    return name_or_path
  name, colon, arg = name_or_path.partition(':')
  stem = name[:-3] if name.endswith('.py') else name
  if stem.startswith('configs/'):
    stem = stem[len('configs/'):]
  candidate = os.path.join(ROOT, stem + '.py')
  return candidate + colon + arg if os.path.isfile(candidate) else name_or_path


def names() -> list[str]:
  """Every shipped config name, e.g. ['cifar10', 'default', ..., 'paper/cifar10_resnet']."""
  out = []
  for folder, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith('.py') and f != '__init__.py':
        rel = os.path.relpath(os.path.join(folder, f), ROOT)
        out.append(rel[:-3].replace(os.sep, '/'))
  return sorted(out)
