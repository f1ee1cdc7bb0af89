"""CIFAR-10 pre-activation ResNets of He et al. 2016 ("Identity Mappings in Deep Residual
Networks"): ResNet-164 (bottleneck units) by default; `--config.model.depth=110
--config.model.block=basic` or `--config.model.depth=1001` for the others, and
`--config.model.version=v1` for the original (post-activation) unit of the same depth.

The 2015 CIFAR recipe (configs/cifar10.py: batch 128, lr 0.1 divided by 10 at 32k and 48k
iterations, 64k iterations, weight decay 1e-4, pad-crop-flip) on the full 50k training set,
with the 2016 paper's warm-up at lr 0.01 for the first 400 iterations for every depth.

Paper test errors (Table 3, median of 5 runs): ResNet-110 6.61% (v1) vs 6.37% (v2); ResNet-164
5.93% (v1) vs 5.46% (v2); ResNet-1001 7.61% (v1) vs 4.92% (v2).
"""

from resnet_flax.configs.cifar10 import get_config as cifar10_config
from resnet_flax.models import model_fields


def get_config():
  config = cifar10_config()
  config.model.update(model_fields('preact_resnet164'))
  config.schedule.warmup_steps = 400
  config.schedule.warmup_type = 'constant'
  config.schedule.warmup_init_lr = 0.01
  return config
