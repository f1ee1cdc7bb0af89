"""The PyTorch reference trained on a config's recipe: `resnet-flax torch-train --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('torch-train')
