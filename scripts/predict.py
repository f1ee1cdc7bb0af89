"""Classify images with a saved model: `resnet-flax predict --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('predict')
