"""Run a multi-process training on this machine: `resnet-flax launch-local --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('launch-local')
