"""A GPU's throughput, MFU and memory in one report: `resnet-flax accelerator-report --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('accelerator-report')
