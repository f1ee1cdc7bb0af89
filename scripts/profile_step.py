"""Where the time of a train or eval step goes, per op kind: `resnet-flax profile-step --help`."""
from resnet_flax.cli import run
run('profile-step')
