"""Train and inference throughput on synthetic data: `resnet-flax benchmark --help`."""
from resnet_flax.cli import run
run('benchmark')
