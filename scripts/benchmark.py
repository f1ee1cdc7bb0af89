"""Train and inference throughput on synthetic data: `resnet-flax benchmark --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('benchmark')
