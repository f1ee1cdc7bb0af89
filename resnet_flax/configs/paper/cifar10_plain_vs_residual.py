"""Plain against residual networks on CIFAR-10 (He et al. 2015, Fig. 6: the degradation problem).

The paper's CIFAR recipe (configs/paper/cifar10_resnet.py) with a plain 20-layer network: the
same layers without the shortcuts. The figure's comparison is one sweep:

  python scripts/sweep.py --config configs/paper/cifar10_plain_vs_residual.py --workdir DIR \
      --sweep model.depth=20,56 --sweep model.residual=false,true
  python scripts/plot.py DIR

Expected (Fig. 6): the deeper plain network has the higher training and test error (plain-56
above plain-20 throughout training), while ResNet-56 is below ResNet-20.
"""

from resnet_flax.configs.paper.cifar10_resnet import get_config as paper_config
from resnet_flax.models import model_fields


def get_config():
  config = paper_config()
  config.model.update(model_fields('plain20'))
  return config
