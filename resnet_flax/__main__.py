"""`python -m resnet_flax COMMAND [ARGS]`: the `resnet-flax` command."""

from resnet_flax.cli import main

main()
