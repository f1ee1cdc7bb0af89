"""Transfer learning to MNIST from a CIFAR-10 ResNet-20, as in the Keras fine-tuning recipe.

The backbone of a CIFAR-10 run is loaded (`init_from`) and frozen (`freeze='backbone'`: its
weights and BatchNorm statistics stay as trained; its BatchNorm layers normalise with their
running statistics); only a new head, Dense(1000) + ReLU then Dense(10), is trained. MNIST's
28x28 grey digits are zero-padded to 32x32 and repeated to 3 channels (`preprocess='mnist'`) and
normalised with the backbone's CIFAR-10 mean and std, the statistics its layers were trained on.

Two fields have no usable default and must be given (docs/TRAINING.md, "Transfer learning"):

  --config.init_from=RUN_DIR        the workdir of a configs/cifar10.py run (same model fields)
  --config.data.dir=PATH/mnist.npz  Keras' mnist.npz layout: x_train, y_train, x_test, y_test

A backbone of another depth needs the same `--config.model.depth=...` here as in its run.
The head reads the backbone's last feature map averaged over its positions (Keras'
GlobalAveragePooling2D); `--config.model.pooling=none` flattens the map instead (Keras' Flatten(),
8 x 8 x 64 features), which keeps where the strokes are (docs/REPRODUCING.md: 99.08% against
92.07% MNIST test top-1 on the same frozen backbone).
"""

from resnet_flax.config import base_config
from resnet_flax.models import model_fields


def get_config():
  config = base_config()
  config.model.update(model_fields('resnet20'))   # the backbone of configs/cifar10.py
  config.model.num_classes = 10
  config.model.head_hidden = (1000,)              # Dense(1000, relu) -> Dense(10)
  config.init_from = ''                           # required: a CIFAR-10 run's workdir
  config.freeze = 'backbone'                      # train the head only
  config.data.source = 'npz'
  config.data.dir = ''                            # required: the path of mnist.npz
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.preprocess = 'mnist'                # pad 28 -> 32, grey -> 3 channels
  config.data.mean = (125.3, 123.0, 113.9)        # the backbone's (CIFAR-10) normalisation
  config.data.std = (63.0, 62.1, 66.7)
  config.batch_size = 128
  config.num_epochs = 5
  config.optimizer.name = 'adamw'                 # Keras' default optimizer for the head
  config.optimizer.weight_decay = 0.0
  config.schedule.name = 'cosine'
  config.schedule.base_lr = 1e-3
  config.log_every_steps = 100
  return config
