"""Every command of the package: `resnet-flax COMMAND [ARGS]` (or `python -m resnet_flax COMMAND`,
or `python scripts/COMMAND.py`, the same code).

Each command lives in one module of this package and is imported only when it runs, so a
command's flags and heavy imports (TensorFlow, matplotlib, torch) never reach another.
"""

import importlib
import sys
from typing import Optional, Sequence

# command -> (module of resnet_flax.cli, function); the function takes the whole argv (the
# program name first; None: sys.argv) and returns the exit code (absl commands exit themselves)
COMMANDS = {
    'train': ('train', 'main'),
    'evaluate': ('evaluate', 'main'),
    'predict': ('inference', 'predict'),
    'export': ('inference', 'export'),
    'summary': ('tools', 'summary'),
    'benchmark': ('tools', 'benchmark'),
    'input-benchmark': ('tools', 'input_benchmark'),
    'make-arrayrecord': ('arrayrecord', 'make_arrayrecord'),
    'compare-frameworks': ('reports', 'compare_frameworks'),
    'torch-train': ('experiments', 'torch_train'),
    'compare-variants': ('tools', 'compare_variants'),
    'profile-step': ('tools', 'profile_step'),
    'accelerator-report': ('reports', 'accelerator_report'),
    'sweep': ('experiments', 'sweep'),
    'plot': ('experiments', 'plot'),
    'gradient-flow': ('experiments', 'gradient_flow'),
    'convert-weights': ('weights', 'convert_weights'),
    'launch-local': ('launch_local', 'launch_local'),
}


def run(command: str, argv: Optional[Sequence[str]] = None) -> None:
  """Runs one command with `argv` (None: this process's arguments) and exits with its code."""
  module_name, function = COMMANDS[command]
  fn = getattr(importlib.import_module(f'resnet_flax.cli.{module_name}'), function)
  argv = list(sys.argv if argv is None else argv)
  sys.exit(fn(argv) or 0)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """`resnet-flax COMMAND ...`."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    known = ', '.join(COMMANDS)
    given = f'unknown command {argv[1]!r}; ' if len(argv) > 1 and argv[1] not in (
        '-h', '--help') else ''
    print(f'usage: resnet-flax COMMAND [ARGS]; {given}commands: {known}', file=sys.stderr)
    sys.exit(0 if given == '' and len(argv) > 1 else 2)
  run(argv[1], [f'resnet-flax {argv[1]}'] + argv[2:])
