"""Run a sweep of trainings: `resnet-flax sweep --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('sweep')
