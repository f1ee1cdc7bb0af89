"""ImageNet (ILSVRC-2012), ResNet-50 v1.5, 90 epochs.

lr 0.1 x batch/256 (linear scaling), SGD momentum 0.9, weight decay 1e-4, 5-epoch linear
warmup, then cosine decay (`--config.schedule.name=step` gives the paper's /10 at epochs 30,
60, 80). Label smoothing is off by default (0.1 is the common modern choice). Batch size and
precision are overrides: `--config.batch_size=1024 --config.dtype=bfloat16`.
"""

from resnet_flax.config import base_config
from resnet_flax.models import model_fields


def get_config():
  config = base_config()
  config.model.update(model_fields('resnet50'))
  config.data.source = 'tfds'
  config.data.name = 'imagenet2012'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.backend = 'tfdata'
  config.data.preprocess = 'imagenet'  # random-resized crop + flip; eval resize 256, crop 224
  config.data.image_size = 224
  config.data.mean = (123.675, 116.28, 103.53)
  config.data.std = (58.395, 57.12, 57.375)
  config.batch_size = 256
  config.num_epochs = 90
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 1e-4
  config.optimizer.weight_decay_mode = 'l2'
  config.optimizer.weight_decay_exclude = 'none'
  config.schedule.name = 'cosine'
  config.schedule.base_lr = 0.1
  config.schedule.lr_scaling = 'linear'
  config.schedule.base_batch_size = 256
  config.schedule.warmup_epochs = 5
  config.schedule.boundaries_epochs = (30, 60, 80)   # used with schedule.name='step'
  config.label_smoothing = 0.0
  config.log_every_steps = 100
  return config
