"""Plot runs and sweeps: `resnet-flax plot --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('plot')
