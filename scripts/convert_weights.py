"""Convert pretrained weights of another framework: `resnet-flax convert-weights --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('convert-weights')
