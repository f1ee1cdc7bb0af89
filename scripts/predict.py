"""Classify images with a saved model: `resnet-flax predict --help`."""
from resnet_flax.cli import run
run('predict')
