"""Run a multi-process training on this machine: `resnet-flax launch-local --help`."""
from resnet_flax.cli import run
run('launch-local')
