"""Inference from a saved run: a checkpoint -> model, variables, eval preprocessing, predictions.

`load(path, step)` takes a run workdir, its checkpoints folder or one step's folder and returns a
`Predictor`: the model of the checkpoint's config, the variables evaluation uses (the EMA copies
when the run kept them, as `TrainState.eval_variables`), and the eval preprocessing of the
training config for one decoded image of any size, mode and aspect:

1. Host part (`Predictor.prepare`): Pillow decodes; grey, palette, RGBA and 16-bit images become
   the stored channel count (3: RGB as the folder source decodes them, alpha dropped; 1: grey,
   colour images by luma). Then the image is brought to the shape the training data had when
   it reached the device (`Predictor.input_shape`, saved in the checkpoint's meta):
   * in-memory back end (digits, npz, synthetic, folder; presets none / cifar / mnist): a
     bilinear Pillow resize to the stored size when the size differs (what the folder source
     does with `data.image_size`); images of the stored size are untouched, so they go through
     exactly the pipeline `evaluate` uses;
   * back ends that preprocess on the host (tf.data: tfds, or folder with
     `data.backend=tfdata`; Grain): the eval branch of the host presets, `data.host.eval_image`
     (NumPy and Pillow, without TensorFlow; the Grain back end runs this very function):
     'imagenet' takes the center window that "shorter side -> S / 0.875, center crop S" keeps
     and resizes it to S x S (bilinear, antialiased when shrinking); 'mnist' pads to a square
     of at least 32; then a resize to S x S. Equal to TensorFlow's up to one uint8 level.
2. Device part (`Predictor.logits`, jitted): the package's own eval preprocessing
   (`augment.make_preprocess(..., train=False)`: MNIST border, resize to `data.image_size`,
   grey -> RGB channel repeat, normalisation with `data.mean` / `data.std`), then the model.

The data facts (stored image shape, host preprocessing, class names) come from the checkpoint
meta (`data.info`). No TensorFlow is imported.
"""

import dataclasses
import io
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_flax import compiler, rundir, tree
from resnet_flax.checkpoint import compat
from resnet_flax.checkpoint.pretrained import load_checkpoint
from resnet_flax.data import augment, host
from resnet_flax.data.info import DataInfo, from_meta
from resnet_flax.errors import CheckpointError, DataError, first_line
from resnet_flax.models import create_model

REDUCE_TO = 2   # a large image is decoded / reduced to at least this many times what is needed


@dataclasses.dataclass
class Predictor:
  """A saved model ready to classify images; see the module docstring for the preprocessing."""
  config: ml_collections.ConfigDict
  step: int
  directory: str               # the checkpoints folder
  model: Any
  variables: dict              # {'params', 'batch_stats'} as evaluation uses them
  uses_ema: bool
  data: DataInfo
  forward: Any                 # fn(variables, images (N, H, W, C)) -> float32 logits
  apply: Any                   # `forward` jitted with the config's compiler options

  @property
  def input_shape(self) -> tuple:
    return tuple(self.data.image_shape)

  @property
  def num_classes(self) -> int:
    return int(self.config.model.num_classes)

  @property
  def class_names(self) -> Optional[list]:
    return self.data.class_names

  def prepare(self, image) -> np.ndarray:
    """uint8 `input_shape` of a path, encoded bytes, PIL image or uint8 array (H, W[, C])."""
    return prepare_image(image, self.config.data, self.data)

  def logits(self, images) -> np.ndarray:
    """float32 (N, classes) of prepared images (N, H, W, C), uint8 or float on 0..255."""
    images = np.asarray(images)
    if images.shape[1:] != self.input_shape:
      raise DataError(f'images of shape {images.shape[1:]}; this model takes '
                      f'{self.input_shape} (prepare() brings an image there)')
    return np.asarray(self.apply(self.variables, images))

  def predict(self, images: Sequence, *, top_k: int = 5, batch_size: int = 32) -> list:
    """For each image (anything `prepare` takes): [(class, name or None, probability)] of the
    `top_k` most probable classes, most probable first."""
    prepared = np.stack([self.prepare(image) for image in images])
    logits = self.logits_batched(prepared, batch_size)
    return top_classes(logits, top_k, self.class_names)

  def logits_batched(self, prepared: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """`logits` in batches of one size (the last one padded: one compilation)."""
    n = len(prepared)
    size = max(1, min(int(batch_size), n))
    out = []
    for start in range(0, n, size):
      chunk = prepared[start:start + size]
      pad = size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      out.append(self.logits(chunk)[:size - pad])
    return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)


def top_classes(logits: np.ndarray, k: int, class_names: Optional[list] = None) -> list:
  """[(class, name or None, probability)] * k for each row of logits (softmax probabilities)."""
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
  k = max(1, min(int(k), logits.shape[-1]))
  out = []
  for row in probs:
    order = np.argsort(-row, kind='stable')[:k]
    out.append([(int(c), class_names[c] if class_names else None, float(row[c]))
                for c in order])
  return out


# --- loading --------------------------------------------------------------------------------

def load(path: str, step: int = -1) -> Predictor:
  """The model saved at `path` (a run workdir, its checkpoints folder or one step's folder; the
  latest checkpoint unless `step` >= 0 or the path names one). Raises CheckpointError."""
  directory, _ = rundir.resolve_checkpoint_path(path, step)
  try:
    chosen, state, meta, saved_config = load_checkpoint(path, step)
  except CheckpointError:
    raise
  except Exception as e:  # noqa: BLE001 - orbax's errors for unreadable folders vary
    raise CheckpointError(f'{directory}: cannot read the checkpoint ({first_line(e)})') from None
  config = compat.config_from_dict(saved_config)
  if not config.model.include_top:
    raise CheckpointError(f'{directory}: the model of checkpoint {chosen} has no classification '
                          f'head (model.include_top=False); there are no classes to predict')
  data = from_meta(meta, config.data, config.model.num_classes)
  ema = state.get('ema_params')
  uses_ema = bool(ema)      # as TrainState.eval_variables: the EMA whenever the run kept one
  variables = ({'params': ema, 'batch_stats': state.get('ema_batch_stats') or {}} if uses_ema
               else {'params': state['params'], 'batch_stats': state.get('batch_stats') or {}})
  try:
    model = create_model({**config.model, 'dtype': config.dtype})
    preprocess = augment.make_preprocess(config.data, stored_shape=data.image_shape,
                                         augment_on_device=not data.host_preprocess)
  except ValueError as e:
    raise CheckpointError(f'{directory}: the config saved in checkpoint {chosen} does not '
                          f'build with this code ({e})') from None
  _check_variables(model, variables, augment.output_shape(config.data, data.image_shape),
                   f'{directory} (step {chosen})')
  forward = make_forward(model, preprocess)
  setting = compiler.resolve(config.get('compiler_options', compiler.DEFAULT),
                             augment.output_shape(config.data, data.image_shape))
  apply = compiler.jit(forward, setting, jax.default_backend(), 'eval', model.block_kind)
  return Predictor(config, chosen, directory, model, jax.device_put(variables), uses_ema, data,
                   forward, apply)


def make_forward(model, preprocess):
  """fn(variables, uint8 or float images (N, H, W, C)) -> float32 logits (N, classes): the
  eval preprocessing (`augment.make_preprocess`, train=False) and the model."""
  def apply(variables, images):
    x = preprocess(images, jax.random.PRNGKey(0), jnp.zeros(images.shape[:1], jnp.int32), False)
    return model.apply(variables, x, train=False).astype(jnp.float32)
  return apply


def _check_variables(model, variables: dict, image_shape, where: str) -> None:
  """CheckpointError when the saved arrays do not fit the model the config builds."""
  expected = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False))
  expected = {'params': expected['params'], 'batch_stats': expected.get('batch_stats', {})}
  mismatch = tree.shape_mismatch(expected, variables)
  if mismatch:
    raise CheckpointError(f'{where}: the saved arrays do not fit the model its config builds '
                          f'({mismatch})')


# --- the host part of the eval preprocessing ------------------------------------------------

def open_image(image, need: Optional[int] = None) -> Image.Image:
  """A loaded PIL image of a path, encoded bytes, file object, PIL image or uint8 array.

  `need`: the shorter side the preprocessing needs. A JPEG much larger than that is decoded at
  a reduced scale (Pillow's `draft`: 1/2, 1/4 or 1/8, keeping the shorter side above
  2 x `need`), so prediction memory is bounded by the model's input, not the file's size."""
  if isinstance(image, Image.Image):
    return image
  if isinstance(image, np.ndarray):
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
      raise DataError(f'an image array must be uint8 (H, W) or (H, W, C); got {array.dtype} '
                      f'{array.shape}')
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
  name = image if isinstance(image, (str, os.PathLike)) else 'image'
  try:
    opened = Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image)
    if need and opened.format == 'JPEG':
      # draft keeps at least the size asked for: one more pixel leaves an image of exactly
      # 2 x REDUCE_TO x `need` whole, as `_reduced` does
      opened.draft(None, (REDUCE_TO * need + 1, REDUCE_TO * need + 1))
    opened.load()   # Pillow closes a file it opened itself once the image is loaded
    return opened
  except FileNotFoundError:
    raise DataError(f'{name}: no such file') from None
  except UnidentifiedImageError:
    raise DataError(f'{name}: not an image Pillow can read (JPEG, PNG, ...)') from None
  except Image.DecompressionBombError as e:
    raise DataError(f'{name}: {e}; if the file is trusted, raise the limit '
                    f'(predict --max-image-pixels)') from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise DataError(f'{name}: cannot be decoded as an image ({type(e).__name__}: {e})') from None


def _reduced(image: Image.Image, need: int) -> Image.Image:
  """`image` box-reduced by an integer factor while its shorter side stays > 2 x `need`
  (an image whose shorter side is at most 4 x `need` is left exactly as it is)."""
  factor = (min(image.size) - 1) // (REDUCE_TO * need)
  if factor < 2:
    return image
  if image.mode not in ('RGB', 'L', 'RGBA', 'I', 'F'):
    image = Image.fromarray(host.to_rgb(image))
  return image.reduce(factor)


def to_array(image: Image.Image, channels: int) -> np.ndarray:
  """uint8 (H, W, channels) of a PIL image of any mode (as the folder source decodes: alpha
  dropped, 16-bit grey scaled to 8 bits); 1 channel: grey (luma of colour images)."""
  rgb = host.to_rgb(image)
  if channels == 3:
    return rgb
  if channels == 1:
    return np.asarray(Image.fromarray(rgb).convert('L'), np.uint8)[..., None]
  raise DataError(f'the model was trained on {channels}-channel images; only 1 (grey) and 3 '
                  f'(RGB) channels can be made from an image file')


def _resize_pil(image: Image.Image, height: int, width: int) -> Image.Image:
  """Bilinear Pillow resize, as the folder source's `data.image_size` resize."""
  if image.size == (width, height):
    return image
  if image.mode not in ('RGB', 'L', 'RGBA'):
    image = Image.fromarray(host.to_rgb(image))
  return image.resize((width, height), Image.Resampling.BILINEAR)


def prepare_image(image, data_cfg, data: DataInfo) -> np.ndarray:
  """uint8 `data.image_shape` of one image: the host part of the eval preprocessing.

  An image far larger than the model needs is first reduced (`open_image`, `_reduced`) to more
  than twice what the preprocessing keeps; images up to 4x that go through unchanged. A run
  whose host back end decoded and resized with OpenCV (`data.image_library`) is prepared with
  OpenCV too, unreduced."""
  height, width, channels = data.image_shape
  preset = data_cfg.preprocess
  fraction = data_cfg.get('eval_crop_fraction', None) or augment.CENTER_CROP_FRACTION
  if data.host_preprocess and data_cfg.get('image_library', 'pillow') == 'opencv':
    return host.eval_image(_opencv_array(image), preset, height, fraction, host.opencv_resize)
  need = (max(height, int(round(height / fraction))) if data.host_preprocess and
          preset == 'imagenet' else max(height, width))
  pil = _reduced(open_image(image, need), need)
  if not data.host_preprocess:     # in-memory sources: the stored size, then the device part
    return to_array(_resize_pil(pil, height, width), channels)
  # the eval branch of the host presets (tf.data, Grain) decode with channels=3
  return host.eval_image(to_array(pil, 3), preset, height, fraction)


def _opencv_array(image) -> np.ndarray:
  """uint8 (H, W, 3) RGB of an image as OpenCV decodes its file (a path or encoded bytes);
  other inputs (PIL images, arrays) are already decoded."""
  if not isinstance(image, (str, os.PathLike, bytes, bytearray)):
    return to_array(open_image(image), 3)
  name = image if isinstance(image, (str, os.PathLike)) else 'image'
  try:
    if name != 'image':
      with open(image, 'rb') as f:
        image = f.read()
    return host.opencv_decode(bytes(image))
  except FileNotFoundError:
    raise DataError(f'{name}: no such file') from None
  except host.BadImage as e:
    raise DataError(f'{name}: {e}') from None


# --- reporting ------------------------------------------------------------------------------

def describe(predictor: Predictor) -> str:
  """One line: which checkpoint, which weights, which input."""
  h, w, c = predictor.input_shape
  weights = 'EMA weights' if predictor.uses_ema else 'weights'
  name = predictor.config.model.name or 'model'
  return (f'checkpoint {predictor.step} in {predictor.directory} ({name}, {weights}; images '
          f'-> {h}x{w}x{c}, preprocess={predictor.config.data.preprocess})')


def predictions_to_json(predictor: Predictor, images: Sequence[str], results: list) -> dict:
  return {'checkpoint': predictor.directory, 'step': predictor.step,
          'ema': predictor.uses_ema,
          'predictions': [{'image': str(image),
                           'top': [{'class': c, 'name': name, 'probability': p}
                                   for c, name, p in top]}
                          for image, top in zip(images, results)]}


def format_predictions(images: Sequence[str], results: list) -> list[str]:
  lines = []
  for image, top in zip(images, results):
    lines.append(f'{image}:')
    for c, name, p in top:
      lines.append(f'  {p:8.4f}  {name} ({c})' if name is not None else f'  {p:8.4f}  class {c}')
  return lines
