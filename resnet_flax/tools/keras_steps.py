"""The framework comparison's Keras side, a worker process (`step_server`): `python -m
resnet_flax.tools.keras_steps SPEC_JSON`. Only this process imports TensorFlow and Keras, and
Keras runs on its TensorFlow back end here whatever KERAS_BACKEND says (on the JAX back end it
would be our framework again), and JAX is kept out of the process.

The model: Keras applications' network of the spec's name (`keras.applications.ResNet50`,
..., `ResNet152V2`, `weights=None`: nothing is downloaded), logits out. The steps, on one
random float32 batch (N, S, S, 3) with random labels, made once, compiled by XLA
(`jit_compile=True`, Keras' fastest setting on CPU):

* train: `model.train_on_batch` with SGD (lr 0.1, momentum 0.9, weight decay 1e-4) and
  sparse categorical cross-entropy from logits; it returns the loss, so the step is waited for;
* eval: `model.predict_on_batch` (inference mode, returns the logits as a NumPy array).

TensorFlow's intra-op threads are the spec's `threads`. A missing TensorFlow or Keras is a
`DependencyError` (one line).

With `"export_program": FOLDER` in the spec the worker times nothing: it writes the forward
pass as TensorFlow's XLA bridge compiles it for `predict_on_batch` (`export_forward`), for
`xla_program` to run with JAX's XLA, and says it is ready with no steps.

Spec: {"application": "ResNet50", "model": NAME, "num_classes": C, "image_size": S,
"batch_size": N, "threads": T}.
"""

import json
import math
import os
import sys

from resnet_flax.tools import step_server


def _import(name: str):
  return step_server.import_framework(name, 'TensorFlow: pip install -r requirements.txt')


def build(spec: dict):
  os.environ['KERAS_BACKEND'] = 'tensorflow'
  # TensorFlow imports JAX where it is installed (its Lite converter, which tolerates its
  # absence): kept out, so that this process runs one framework and no JAX thread pool
  sys.modules.setdefault('jax', None)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  tf = _import('tensorflow')
  keras = _import('keras')
  threads = int(spec['threads'])
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  keras.utils.set_random_seed(0)
  n, s, classes = int(spec['batch_size']), int(spec['image_size']), int(spec['num_classes'])
  model = getattr(keras.applications, spec['application'])(
      weights=None, input_shape=(s, s, 3), classes=classes, classifier_activation=None)
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9,
                                               weight_decay=1e-4),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=True)
  rng = tf.random.Generator.from_seed(0)
  images = rng.normal((n, s, s, 3)).numpy()
  labels = rng.uniform((n,), 0, classes, dtype=tf.int32).numpy()
  info = _info(tf, keras, model, spec)
  if spec.get('export_program'):
    export_forward(tf, model, images, spec['export_program'])
    return {}, info

  def train(_):
    model.train_on_batch(images, labels)

  def evaluate(_):
    model.predict_on_batch(images)

  calls = {'train': train, 'eval': evaluate}
  info['first_call_s'] = step_server.time_first_calls(calls)
  return calls, info


def _info(tf, keras, model, spec: dict) -> dict:
  return {
      'framework': 'keras',
      # trainable weights, as ours and torch count them (Keras' count_params() adds the
      # BatchNorm moving statistics)
      'num_params': int(sum(math.prod(w.shape) for w in model.trainable_weights)),
      'image_size': int(spec['image_size']),
      'layout': 'channels_last',
      'threads': tf.config.threading.get_intra_op_parallelism_threads(),
      'tensorflow_version': tf.__version__,
      'keras_version': keras.__version__,
      'keras_backend': keras.backend.backend(),
      'model_source': f"keras.applications.{spec['application']}",
      'jit_compile': True,
      'imports_jax': sys.modules.get('jax') is not None,   # must be False
  }


# the files of `export_forward`: the program, its arguments, Keras' logits, a description
PROGRAM, ARGUMENTS, LOGITS, DESCRIPTION = ('forward.hlo.pb', 'arguments.npz', 'logits.npy',
                                          'program.json')


def export_forward(tf, model, images, folder: str) -> None:
  """Writes Keras' inference forward pass of `model` on `images` to `folder`: the XLA program
  (HloModuleProto) that TensorFlow compiles for it with `jit_compile` (`model.stateless_call`
  with the weights as arguments, so that the program holds no TensorFlow resource), its
  arguments in order (the trainable weights, the BatchNorm statistics, the images), the logits
  `predict_on_batch` returns for them, and a description (`PROGRAM` ... `DESCRIPTION`)."""
  import numpy as np
  trainable = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
  statistics = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]

  def forward(trainable, statistics, images):
    return model.stateless_call(trainable, statistics, images, training=False)[0]

  args = (trainable, statistics, tf.constant(images))
  program = tf.function(forward, jit_compile=True).experimental_get_compiler_ir(*args)(
      stage='hlo_serialized')
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, PROGRAM), 'wb') as f:
    f.write(program)
  flat = [a.numpy() for a in tf.nest.flatten(args)]
  np.savez(os.path.join(folder, ARGUMENTS), *flat)
  np.save(os.path.join(folder, LOGITS), model.predict_on_batch(images))
  with open(os.path.join(folder, DESCRIPTION), 'w') as f:
    json.dump({'source': f"{model.name}: Keras' predict_on_batch forward pass, compiled by "
                         f"TensorFlow {tf.__version__}'s XLA bridge (jit_compile)",
               'arguments': len(flat), 'weights': len(trainable) + len(statistics)}, f)


if __name__ == '__main__':
  step_server.run_worker(build, sys.argv)
