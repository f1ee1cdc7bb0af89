"""Keras' inference forward pass as one XLA program: built (`forward_program`) and written to a
folder (`export`) in the Keras worker's process, read by `xla_program` in a JAX process. It
imports neither framework: the caller passes TensorFlow in.

The program is `model.stateless_call(trainable, statistics, images, training=False)` compiled
by TensorFlow's XLA bridge (`tf.function(jit_compile=True)`), the weights passed as arguments
so that it holds no TensorFlow resource: Keras' network and its layers' computation, the
program `predict_on_batch` compiles with the weights as captured variables instead.

The folder's files: `PROGRAM` (the HloModuleProto), `ARGUMENTS` (its arguments in order: the
trainable weights, the BatchNorm statistics, the images; `arr_0` ...), `LOGITS` (Keras'
`predict_on_batch` logits for them) and `DESCRIPTION` (JSON: the source, the number of
arguments, how many of them are trainable weights).
"""

import json
import os

PROGRAM, ARGUMENTS, LOGITS, DESCRIPTION = ('forward.hlo.pb', 'arguments.npz', 'logits.npy',
                                          'program.json')


def forward_program(tf, model, images):
  """(the jit-compiled `tf.function`, its arguments as a tuple) for `model` on `images`."""
  trainable = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
  statistics = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]

  def forward(trainable, statistics, images):
    return model.stateless_call(trainable, statistics, images, training=False)[0]

  return tf.function(forward, jit_compile=True), (trainable, statistics, tf.constant(images))


def export(tf, model, images, folder: str) -> None:
  """Writes the forward program of `model` on `images` and its files to `folder`."""
  import numpy as np
  function, args = forward_program(tf, model, images)
  program = function.experimental_get_compiler_ir(*args)(stage='hlo_serialized')
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, PROGRAM), 'wb') as f:
    f.write(program)
  flat = [a.numpy() for a in tf.nest.flatten(args)]
  np.savez(os.path.join(folder, ARGUMENTS), *flat)
  np.save(os.path.join(folder, LOGITS), model.predict_on_batch(images))
  with open(os.path.join(folder, DESCRIPTION), 'w') as f:
    json.dump({'source': f"{model.name}: Keras' inference forward pass, compiled by "
                         f"TensorFlow {tf.__version__}'s XLA bridge (jit_compile)",
               'arguments': len(flat), 'trainable_arguments': len(args[0])}, f)
