"""Evaluate a saved model: `resnet-flax evaluate --help`."""
from resnet_flax.cli import run
run('evaluate')
