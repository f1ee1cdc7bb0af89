"""Quick start: a CIFAR-style ResNet-20 on scikit-learn's bundled handwritten digits.

1,797 real 8x8 grey images ship inside scikit-learn, so this runs offline; a fixed seeded split
holds out 449 of them for test. `python scripts/train.py` runs this config.
"""

from resnet_flax.config import base_config


def get_config():
  config = base_config()           # model: resnet20 (CIFAR family, option A shortcuts)
  config.data.source = 'digits'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.random_crop_pad = 1  # shifts of up to one pixel; no flips for digits
  config.data.mean = (85.0,)
  config.data.std = (110.0,)
  config.batch_size = 64
  config.num_epochs = 30
  config.schedule.name = 'cosine'
  config.schedule.base_lr = 0.1
  config.schedule.warmup_epochs = 1
  config.optimizer.weight_decay = 5e-4
  config.log_every_steps = 21
  return config
