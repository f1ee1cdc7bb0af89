"""Image folders or TFDS -> sharded ArrayRecord files: `resnet-flax make-arrayrecord --help`."""
from resnet_flax.cli import run
if __name__ == '__main__': run('make-arrayrecord')
