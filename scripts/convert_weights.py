"""Convert pretrained weights of another framework: `resnet-flax convert-weights --help`."""
from resnet_flax.cli import run
run('convert-weights')
