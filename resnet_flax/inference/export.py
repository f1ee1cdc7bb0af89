"""Export a saved model as a self-contained inference function (jax.export / StableHLO).

The exported function maps a batch of images at the model's input size, `(b, H, W, C)` with a
symbolic batch size `b`, uint8 (or float32 on the 0..255 scale with `input_dtype='float32'`),
to float32 logits `(b, classes)`. It includes the device part of the eval preprocessing
(MNIST border, resize to `data.image_size`, grey -> RGB repeat, normalisation with the config's
mean / std) and the weights evaluation uses (EMA when kept), as constants; the caller only
brings each image to `(H, W, C)` uint8 (`inference.Predictor.prepare` does it, see
docs/INFERENCE.md). The file needs only jax and numpy to reload:

    exported = jax.export.deserialize(bytearray(open(path, 'rb').read()))
    logits = exported.call(images)

A JSON file next to it (`PATH.json`) describes the input, the classes and where it came from.
`save_saved_model` writes the same function as a TensorFlow SavedModel (jax2tf; needs
TensorFlow).
"""

import json
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resnet_flax.errors import ExportError
from resnet_flax.inference.predictor import Predictor

INPUT_DTYPES = ('uint8', 'float32')
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')   # jax.export lowering platforms


def inference_function(predictor: Predictor):
  """fn(images (N, H, W, C) uint8 or float 0..255) -> float32 logits, weights as constants
  (the predictor's forward function: an exported program carries no compiler options)."""
  variables = predictor.variables

  def fn(images):
    return predictor.forward(variables, images)
  return fn


def _input_spec(predictor: Predictor, input_dtype: str, batch: str = 'b'):
  if input_dtype not in INPUT_DTYPES:
    raise ExportError(f'input dtype {input_dtype!r}; allowed: {", ".join(INPUT_DTYPES)}')
  (b,) = jax.export.symbolic_shape(batch)
  return jax.ShapeDtypeStruct((b,) + predictor.input_shape, jnp.dtype(input_dtype))


def export(predictor: Predictor, *, input_dtype: str = 'uint8',
           platforms: Optional[Sequence[str]] = None) -> jax.export.Exported:
  """The inference function, exported with a symbolic batch dimension for `platforms`
  (default: this machine's backend, e.g. ('cpu',); ('cpu', 'cuda') for both)."""
  spec = _input_spec(predictor, input_dtype)
  unknown = [p for p in platforms or () if p not in PLATFORMS]
  if unknown:
    raise ExportError(f'platform {unknown[0]!r}; allowed: {", ".join(PLATFORMS)}')
  try:
    return jax.export.export(jax.jit(inference_function(predictor)),
                             platforms=tuple(platforms) if platforms else None)(spec)
  except (ValueError, NotImplementedError) as e:
    raise ExportError(f'jax.export failed for platforms {platforms or "default"}: '
                      f'{str(e).splitlines()[0] if str(e) else type(e).__name__}') from None


def metadata(predictor: Predictor, exported: jax.export.Exported, input_dtype: str) -> dict:
  """What a user of the exported file needs to know besides the function."""
  config = predictor.config
  return {
      'format': 'jax.export (StableHLO); reload with jax.export.deserialize',
      'input_shape': ['batch'] + list(predictor.input_shape),
      'input_dtype': input_dtype,
      'input_range': '0..255 (not normalised: the function normalises)',
      'output': 'float32 logits (batch, num_classes); softmax for probabilities',
      'normalisation': {'mean': list(config.data.mean), 'std': list(config.data.std)},
      'host_preprocessing': ('tf.data eval preset ' + repr(config.data.preprocess)
                             if predictor.data.host_preprocess else
                             'resize to the input size (bilinear)'),
      'num_classes': predictor.num_classes,
      'class_names': predictor.class_names,
      'platforms': list(exported.platforms),
      'checkpoint': predictor.directory,
      'step': predictor.step,
      'ema': predictor.uses_ema,
      'model': config.model.to_dict(),
      'dtype': config.dtype,
  }


def write(predictor: Predictor, path: str, *, input_dtype: str = 'uint8',
          platforms: Optional[Sequence[str]] = None) -> dict:
  """Exports to `path` (and `path.json`); returns the metadata written."""
  exported = export(predictor, input_dtype=input_dtype, platforms=platforms)
  info = metadata(predictor, exported, input_dtype)
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(exported.serialize())
    with open(path + '.json', 'w') as f:
      json.dump(info, f, indent=2, default=str)
  except OSError as e:
    raise ExportError(f'cannot write {path} ({type(e).__name__}: {e})') from None
  return info


def load_exported(path: str) -> jax.export.Exported:
  """An exported function read back (what the snippet in docs/INFERENCE.md does)."""
  with open(path, 'rb') as f:
    return jax.export.deserialize(bytearray(f.read()))


def save_saved_model(predictor: Predictor, directory: str, *, input_dtype: str = 'uint8') -> None:
  """The inference function as a TensorFlow SavedModel (signature 'serving_default': images ->
  logits, polymorphic batch), via jax2tf. Raises ExportError without TensorFlow."""
  try:
    import tensorflow as tf
    from jax.experimental import jax2tf
  except ImportError as e:
    raise ExportError(f'--saved-model needs TensorFlow and jax.experimental.jax2tf ({e}); '
                      f'install tensorflow, or export without --saved-model') from None
  spec = _input_spec(predictor, input_dtype)
  h, w, c = predictor.input_shape
  converted = jax2tf.convert(inference_function(predictor),
                             polymorphic_shapes=[f'(b, {h}, {w}, {c})'], with_gradient=False)
  module = tf.Module()
  module.predict = tf.function(
      lambda images: {'logits': converted(images)}, autograph=False,
      input_signature=[tf.TensorSpec((None, h, w, c), tf.as_dtype(spec.dtype), name='images')])
  try:
    tf.saved_model.save(module, os.path.abspath(os.path.expanduser(directory)),
                        signatures={'serving_default': module.predict})
  except (OSError, ValueError, tf.errors.OpError) as e:
    raise ExportError(f'cannot write the SavedModel to {directory} ({type(e).__name__}: '
                      f'{str(e).splitlines()[0] if str(e) else ""})') from None


def check_reload(path: str, images: np.ndarray) -> np.ndarray:
  """Logits of `images` from the file at `path` (a quick self-check after writing)."""
  return np.asarray(load_exported(path).call(images))
