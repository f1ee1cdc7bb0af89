"""Config variants side by side in one process: `resnet-flax compare-variants --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('compare-variants')
