"""CIFAR-10 with stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth") on a
deep pre-activation ResNet: ResNet-164 (He et al. 2016) by default, `--config.model.name=
preact_resnet1001` for the 1001-layer one (the drop rate stays: it is a training field).

The residual branch of unit k of K is dropped with rate 0.5 * k / (K - 1) (linear, ending at
Huang et al.'s 0.5) and kept branches are scaled by 1 / (1 - rate), so evaluation uses the whole
network unscaled. Unlike the paper, which drops a unit for the whole mini-batch, the drop is
drawn per example (timm's DropPath). Huang et al.'s CIFAR schedule: 500 epochs, batch 128, SGD
with Nesterov momentum 0.9, lr 0.1 divided by 10 at epochs 250 and 375, weight decay 1e-4,
pad-crop-flip, the full 50k training images; plus the pre-activation paper's warm-up at lr 0.01
for 400 iterations (configs/paper/cifar10_preact.py).

Published test errors on CIFAR-10 (with augmentation): Huang et al., post-activation ResNet-110,
6.41% with constant depth, 5.25% with stochastic depth; ResNet-1202 with stochastic depth
4.91%. He et al. 2016, pre-activation ResNet-164 (constant depth, 64k iterations) 5.46%, the
1001-layer one 4.92%. No published figure for this exact combination is known to us.
"""

from resnet_flax.configs.paper.cifar10_preact import get_config as preact_config


def get_config():
  config = preact_config()
  config.model.drop_path_rate = 0.5
  config.num_train_steps = -1
  config.num_epochs = 500
  config.optimizer.nesterov = True
  config.schedule.name = 'step'
  config.schedule.boundaries_steps = ()
  config.schedule.boundaries_epochs = (250, 375)
  config.eval_every_steps = -1
  return config
