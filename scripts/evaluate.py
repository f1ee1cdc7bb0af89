"""Evaluate a saved model: `resnet-flax evaluate --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('evaluate')
