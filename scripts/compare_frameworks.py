"""Our steps against PyTorch's, side by side: `resnet-flax compare-frameworks --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('compare-frameworks')
