"""Train and evaluate as a config says: `resnet-flax train --help`."""
from resnet_flax.cli import run
run('train')
