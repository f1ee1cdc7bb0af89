"""ImageNet ResNet-18 ... 152, the training recipe of He et al. 2015 as commonly reproduced.

Batch 256, SGD momentum 0.9, lr 0.1 divided by 10 every 30 epochs, 90 epochs, weight decay 1e-4
(L2), random-resized crop + flip, single center crop at 224 for eval, v1 units (stride in the
first 1x1 conv, as in the paper). Depth: `--config.model.depth=18|34|50|101|152`; torchvision's
v1.5 units: `--config.model.version=v1.5`; the modern cosine variant:
`--config.schedule.name=cosine --config.schedule.warmup_epochs=5`.

Targets, top-1 error on the 50k validation images:
  the paper (Table 3, 10-crop testing): ResNet-34 (option B) 24.52%, ResNet-50 22.85%,
  ResNet-101 21.75%, ResNet-152 21.43%;
  single 224 center crop (torchvision's reference v1.5 weights, the same recipe): ResNet-18
  30.24%, ResNet-34 26.69%, ResNet-50 23.87%, ResNet-101 22.63%, ResNet-152 21.69%.
"""

from resnet_flax.configs.imagenet import get_config as imagenet_config
from resnet_flax.models import model_fields


def get_config():
  config = imagenet_config()
  config.model.update(model_fields('resnet50_v1'))
  config.schedule.name = 'step'
  config.schedule.warmup_epochs = 0
  config.schedule.boundaries_epochs = (30, 60)
  config.schedule.decay_factor = 0.1
  return config
