"""The package's structure as docs/ARCHITECTURE.md declares it, read from the code with `ast`:
imports run one way (down the layers), no import cycle, no private name used across modules,
short modules, thin scripts, and the defaults that two layers must agree on."""

import ast
import os

import pytest

from conftest import REPO

PACKAGE = os.path.join(REPO, 'resnet_flax')

# Bottom to top: a module may import its own layer or a lower one, never a higher one.
LAYERS = (
    ('resnet_flax', 'resnet_flax.errors', 'resnet_flax.tree', 'resnet_flax.fields',
     'resnet_flax.rundir', 'resnet_flax.compiler'),
    ('resnet_flax.models', 'resnet_flax.data'),
    ('resnet_flax.optim', 'resnet_flax.transfer'),
    ('resnet_flax.config', 'resnet_flax.configs'),
    ('resnet_flax.checkpoint',),
    ('resnet_flax.train',),
    ('resnet_flax.inference', 'resnet_flax.weights'),
    ('resnet_flax.experiments', 'resnet_flax.tools'),
    ('resnet_flax.cli', 'resnet_flax.__main__'),
)
MAX_LINES = 400


def _modules() -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        module = os.path.relpath(path[:-3], REPO).replace(os.sep, '.')
        out[module.removesuffix('.__init__')] = path
  return out


MODULES = _modules()


def _layer(module: str) -> int:
  best, index = -1, None
  for i, group in enumerate(LAYERS):
    for prefix in group:
      if (module == prefix or module.startswith(prefix + '.')) and len(prefix) > best:
        best, index = len(prefix), i
  assert index is not None, f'{module} is in no layer of LAYERS'
  return index


def _imports(path: str) -> list[tuple[str, list[str], int]]:
  """(imported resnet_flax module, names taken from it, line) of every import, anywhere in the
  file (inside functions too)."""
  out = []
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
        'resnet_flax') and node.level == 0:
      names = [a.name for a in node.names]
      for name in names:          # `from resnet_flax.data import folder` imports a module
        if f'{node.module}.{name}' in MODULES:
          out.append((f'{node.module}.{name}', [], node.lineno))
      out.append((node.module, names, node.lineno))
    elif isinstance(node, ast.Import):
      out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith('resnet_flax')]
  return out


def test_every_module_is_in_a_layer():
  for module in MODULES:
    _layer(module)


def test_imports_run_down_the_layers():
  upward = []
  for module, path in MODULES.items():
    for target, _, line in _imports(path):
      if target in MODULES and _layer(target) > _layer(module):
        upward.append(f'{module}:{line} imports {target}')
  assert not upward, '\n'.join(upward)


def test_no_import_cycle():
  graph = {m: {t for t, _, _ in _imports(p) if t in MODULES and t != m and
               not m.startswith(t + '.')}   # a package's own __init__ runs first anyway
           for m, p in MODULES.items()}
  done, cycles = set(), []

  def visit(node, stack):
    if node in stack:
      cycles.append(' -> '.join(stack[stack.index(node):] + [node]))
      return
    if node in done:
      return
    for nxt in sorted(graph[node]):
      visit(nxt, stack + [node])
    done.add(node)

  for module in sorted(graph):
    visit(module, [])
  assert not cycles, cycles[:5]


def test_no_private_name_is_used_across_modules():
  found = []
  for module, path in MODULES.items():
    tree = ast.parse(open(path).read())
    imported = {}   # local name -> resnet_flax module
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
          'resnet_flax'):
        for alias in node.names:
          if alias.name.startswith('_'):
            found.append(f'{module} imports {node.module}.{alias.name}')
          if f'{node.module}.{alias.name}' in MODULES:
            imported[alias.asname or alias.name] = f'{node.module}.{alias.name}'
      elif isinstance(node, ast.Import):
        for alias in node.names:
          if alias.name.startswith('resnet_flax') and alias.asname:
            imported[alias.asname] = alias.name
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and
          node.value.id in imported and node.attr.startswith('_') and
          not node.attr.startswith('__')):
        found.append(f'{module}:{node.lineno} uses {imported[node.value.id]}.{node.attr}')
  assert not found, found


def test_modules_are_short_and_say_what_they_do():
  for module, path in MODULES.items():
    text = open(path).read()
    assert text.count('\n') <= MAX_LINES, f'{module}: {text.count(chr(10))} lines'
    assert ast.get_docstring(ast.parse(text)), f'{module} has no docstring'


def test_scripts_are_thin_wrappers_that_leave_sys_path_alone():
  from resnet_flax.cli import COMMANDS
  scripts = os.path.join(REPO, 'scripts')
  names = sorted(f[:-3] for f in os.listdir(scripts) if f.endswith('.py'))
  assert sorted(c.replace('-', '_') for c in COMMANDS) == names
  for name in names:
    text = open(os.path.join(scripts, name + '.py')).read()
    assert 'sys.path' not in text and len(text.strip().splitlines()) <= 3, name


@pytest.mark.parametrize('section', ['model', 'data', 'optimizer', 'schedule'])
def test_config_sections_are_the_owning_modules_defaults(section):
  """base_config() states no default of its own for a section another layer owns."""
  from resnet_flax import optim
  from resnet_flax.config import base_config
  from resnet_flax.data.source import DATA_DEFAULTS
  from resnet_flax.models import model_fields
  owner = {'model': model_fields('resnet20'), 'data': DATA_DEFAULTS,
           'optimizer': optim.OPTIMIZER_DEFAULTS, 'schedule': optim.SCHEDULE_DEFAULTS}[section]
  assert base_config()[section].to_dict() == dict(owner)
