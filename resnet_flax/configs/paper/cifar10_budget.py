"""CIFAR-10 ResNets of He et al. 2015 on a fixed budget of epochs: the paper's network,
augmentation, weight decay, batch and split, with a schedule that makes the most of few epochs.

The paper (configs/paper/cifar10_resnet.py) trains 64k iterations (182 epochs of its 45k split)
with lr 0.1 divided by 10 at 32k and 48k. A fraction of that budget is spent best with a cosine
decay over the whole run, after a linear warm-up of one epoch from lr 0.01 (for v1 ResNet-110 the
paper's warm-up is the constant 0.01 until iteration 400; see docs/REPRODUCING.md).

The budget is `num_epochs` (30 by default): the cosine decay spans exactly the run, so
`--config.num_epochs=60` is the same recipe twice as long, not a truncated one. Everything else
is the paper's: option A shortcuts (the model's default), pad-4 crop and flip, weight decay 1e-4
as L2, batch 128, SGD with momentum 0.9, trained on the first 45,000 training images and tested
on the 10,000 test images.

Data: the CIFAR-10 JPEG folders (`data.source=folder`), by default unpacked into
~/.cache/resnet_flax/cifar10-jpeg (docs/DATA.md); `--config.data.dir=DIR` for another place, or
`--config.data.source=tfds --config.data.name=cifar10` for the original data.
"""

from resnet_flax.configs.paper.cifar10_resnet import get_config as paper_config


def get_config():
  config = paper_config()
  config.data.source = 'folder'
  config.data.dir = '~/.cache/resnet_flax/cifar10-jpeg'
  config.num_train_steps = -1          # the budget is num_epochs
  config.num_epochs = 30.0
  config.schedule.name = 'cosine'
  config.schedule.boundaries_steps = ()
  config.schedule.warmup_epochs = 1.0
  config.schedule.warmup_type = 'linear'
  config.schedule.warmup_init_lr = 0.01
  config.eval_every_steps = -1         # once per epoch
  config.checkpoint_every_steps = -1   # once per epoch: a run resumes where it stopped
  config.log_every_steps = 50
  return config
