"""Input-pipeline throughput of a config: `resnet-flax input-benchmark --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('input-benchmark')
