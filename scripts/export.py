"""Export a saved model as a jax.export function: `resnet-flax export --help`."""
from resnet_flax.cli import run
run('export')
