"""Imagenette (10 ImageNet classes) at 128 px from random initialisation: ResNet-18 by default,
`--config.model.depth=50` for ResNet-50.

Reference, fastai's Imagenette leaderboard at 128 px (from random init, their own recipe and
tricks): 5 epochs 87.43%, 20 epochs 91.57% top-1 (`--config.num_epochs=20`). Our recipe is a
plain one: SGD with Nesterov momentum, lr 0.1 per 256 images with one epoch of warm-up then
cosine, label smoothing 0.1, weight decay 5e-5, random-resized crop + flip (eval: resize to
146 and center-crop 128). docs/REPRODUCING.md says what was run.

Data: the 128 px image folders (train/ and val/ sub-folders), read by tf.data:
`--config.data.dir=DIR`.
"""

from resnet_flax.configs.imagenet import get_config as imagenet_config
from resnet_flax.models import model_fields


def get_config():
  config = imagenet_config()
  config.model.update(model_fields('resnet18'))
  config.model.num_classes = 10
  config.data.source = 'folder'
  config.data.name = 'imagenette'
  config.data.dir = ''
  config.data.train_split = 'train'
  config.data.eval_split = 'val'
  config.data.image_size = 128
  config.batch_size = 64
  config.num_epochs = 5
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-5
  config.schedule.name = 'cosine'
  config.schedule.base_lr = 0.1
  config.schedule.warmup_epochs = 1
  config.label_smoothing = 0.1
  config.eval_every_steps = -1
  return config
