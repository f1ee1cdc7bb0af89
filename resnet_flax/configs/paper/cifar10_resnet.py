"""CIFAR-10 ResNets of He et al. 2015 ("Deep Residual Learning for Image Recognition"), Sec. 4.2.

configs/cifar10.py's recipe (batch 128, SGD momentum 0.9, lr 0.1 divided by 10 at 32k and 48k
iterations, 64k iterations, weight decay 1e-4 as L2, pad-4 random crop and flip, option A
shortcuts) trained on the paper's 45k split: the first 45,000 training images (the remaining
5,000 are the paper's validation set); the test error is measured on the 10k test set.

Paper test errors (Table 6): ResNet-20 8.75%, 32 7.51%, 44 7.17%, 56 6.97%, 110 6.43% (best of
5 runs; mean 6.61 +- 0.16). Depths are overrides, `--config.model.depth=N` (N = 6n+2). For
ResNet-110 the paper warms up at lr 0.01 until iteration 400: add
`--config.schedule.warmup_steps=400 --config.schedule.warmup_type=constant
--config.schedule.warmup_init_lr=0.01`.

Data: TFDS `cifar10`. For the CIFAR-10 JPEG folders: `--config.data.source=folder
--config.data.dir=DIR` (DIR/train, DIR/test); a folder split is sliced in class-interleaved
order, so train[:45000] holds 4,500 images of each class. docs/REPRODUCING.md has the runs.
"""

from resnet_flax.configs.cifar10 import get_config as cifar10_config


def get_config():
  config = cifar10_config()
  config.data.train_split = 'train[:45000]'
  config.data.eval_split = 'test'
  return config
