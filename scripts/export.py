"""Export a saved model as a jax.export function: `resnet-flax export --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('export')
