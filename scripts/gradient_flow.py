"""Gradient flow of plain against residual networks: `python scripts/gradient_flow.py
--models plain56,resnet56 [--steps K] [--out PREFIX] [--config FILE] [--config.FIELD=V ...]`.

Per main-path layer (stem, each unit's convolutions, classifier): the norm of the loss gradient
with respect to its kernel and the RMS of its output, at initialisation and after K training
steps of the config (default configs/default.py, offline), on one batch. Writes PREFIX.csv and
PREFIX.png (default gradient_flow.*) and prints the early-to-late gradient ratio of each model.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from resnet_flax import cli, configuration, gradient_flow, plotting  # noqa: E402
from resnet_flax.data import DataError  # noqa: E402
from resnet_flax.models import NAMES  # noqa: E402

_CONFIG = cli.define_config_flag(sys.argv)
_MODELS = flags.DEFINE_list('models', ['plain56', 'resnet56'], 'Registry names to compare.')
_STEPS = flags.DEFINE_integer('steps', 100, 'Training steps between the two measurements.')
_OUT = flags.DEFINE_string('out', 'gradient_flow', 'Output prefix: PREFIX.csv and PREFIX.png.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  unknown = [m for m in _MODELS.value if m not in NAMES]
  if unknown:
    print(f'config error: --models: unknown model {unknown[0]!r}; e.g. plain20, resnet20, '
          f'plain56, resnet56, plain18, resnet18', file=sys.stderr)
    return cli.EXIT_USER_ERROR
  if _STEPS.value < 0:
    print(f'config error: --steps={_STEPS.value} must not be negative', file=sys.stderr)
    return cli.EXIT_USER_ERROR
  try:
    rows = gradient_flow.diagnose(_CONFIG.value, _MODELS.value, _STEPS.value)
  except (configuration.ConfigError, DataError) as e:
    return cli.report_error(e)
  csv_path = gradient_flow.write_csv(rows, _OUT.value + '.csv')
  fig, _ = gradient_flow.figure(rows)
  print(f'per-layer numbers: {csv_path}; figure: {plotting.save(fig, _OUT.value + ".png")}')
  return 0


if __name__ == '__main__':
  app.run(main)
