"""Run a sweep of trainings: `resnet-flax sweep --help`."""
from resnet_flax.cli import run
run('sweep')
