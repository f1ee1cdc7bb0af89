"""Train and evaluate as a config says: `resnet-flax train --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('train')
