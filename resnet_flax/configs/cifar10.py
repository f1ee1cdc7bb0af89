"""CIFAR-10, ResNet-20: the recipe of He et al. 2015, Section 4.2.

SGD with momentum 0.9, lr 0.1, batch 128, weight decay 1e-4 (L2), lr divided by 10 at 32k and
48k iterations, 64k iterations, pad-4 random crop and flip, per-channel normalisation.
Override the depth for the rest of the family: `--config.model.depth=56` (6n+2 depths).
The CIFAR-10 data come from the input-pipeline sources (`data.source`: tfds, folder, npz).
"""

from resnet_flax.config import base_config
from resnet_flax.models import model_fields


def get_config():
  config = base_config()
  config.model.update(model_fields('resnet20'))
  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.preprocess = 'cifar'   # pad 4, random 32x32 crop, horizontal flip
  config.data.mean = (125.3, 123.0, 113.9)
  config.data.std = (63.0, 62.1, 66.7)
  config.batch_size = 128
  config.num_train_steps = 64_000
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.weight_decay_mode = 'l2'
  config.schedule.name = 'step'
  config.schedule.base_lr = 0.1
  config.schedule.boundaries_steps = (32_000, 48_000)
  config.schedule.decay_factor = 0.1
  config.eval_every_steps = 2_000
  config.log_every_steps = 100
  return config
