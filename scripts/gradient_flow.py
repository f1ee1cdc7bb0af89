"""Gradient flow of plain against residual networks: `resnet-flax gradient-flow --help`."""
from resnet_flax.cli import run
run('gradient-flow')
