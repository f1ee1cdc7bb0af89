"""Input-pipeline throughput of a config: `resnet-flax input-benchmark --help`."""
from resnet_flax.cli import run
run('input-benchmark')
