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
* eval: `model.predict_on_batch` (inference mode, returns the logits as a NumPy array), or
  with `"eval_call": "program"` the forward program of `keras_program` (the same network
  with the weights as arguments, run by TensorFlow's XLA; its logits fetched as NumPy), the
  program `--against keras-program` runs on JAX's XLA.

TensorFlow's intra-op threads are the spec's `threads`. A missing TensorFlow or Keras is a
`DependencyError` (one line).

With `"export_program": FOLDER` in the spec the worker times nothing: it writes that forward
program to FOLDER (`keras_program.export`), for `xla_program` to run with JAX's XLA, and says
it is ready with no steps.

Spec: {"application": "ResNet50", "model": NAME, "num_classes": C, "image_size": S,
"batch_size": N, "threads": T[, "eval_call": "predict_on_batch" | "program"]
[, "export_program": FOLDER]}.
"""

import math
import os
import sys

from resnet_flax.tools import keras_program, step_server

EVAL_CALLS = ('predict_on_batch', 'program')


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
    keras_program.export(tf, model, images, spec['export_program'])
    return {}, info

  def train(_):
    model.train_on_batch(images, labels)

  if info['eval_call'] == 'program':
    program, args = keras_program.forward_program(tf, model, images)

    def evaluate(_):
      program(*args).numpy()
  else:
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
      'eval_call': spec.get('eval_call', EVAL_CALLS[0]),
      'imports_jax': sys.modules.get('jax') is not None,   # must be False
  }


if __name__ == '__main__':
  step_server.run_worker(build, sys.argv)
