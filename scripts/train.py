"""Train and evaluate a ResNet: `python scripts/train.py --config configs/NAME.py --workdir DIR
[--config.FIELD=VALUE ...]`. With no --config, runs configs/default.py (offline quick start)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from resnet_flax import cli  # noqa: E402

_CONFIG = cli.define_config_flag(sys.argv)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default: a new one under runs/).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  return cli.train_main(_CONFIG.value, _WORKDIR.value,
                        config_flags.get_config_filename(flags.FLAGS['config']))


if __name__ == '__main__':
  app.run(main)
