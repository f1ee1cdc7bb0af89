"""Gradient flow of plain against residual networks: `resnet-flax gradient-flow --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('gradient-flow')
