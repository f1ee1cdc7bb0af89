"""Plot runs and sweeps: `resnet-flax plot --help`."""
from resnet_flax.cli import run
run('plot')
