"""Parameters, BatchNorm statistics and MACs of a model: `resnet-flax summary --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('summary')
