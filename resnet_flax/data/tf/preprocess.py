"""Host-side preprocessing presets of the tf.data back end: encoded image bytes -> uint8 image.

Each preset turns one encoded image (JPEG, PNG, GIF or BMP bytes) into a uint8 (S, S, 3) image
at the final size; normalisation happens on the device (`augment.py`, which leaves these
images alone apart from the mean/std). Grey, palette and RGBA images become 3-channel RGB in
the decoder (`channels=3`: grey is repeated, alpha dropped; 16-bit PNGs are scaled to 8 bits).

Presets (train / eval), as `data.preprocess`:

* `imagenet`: Inception-style random-resized crop -- a box of 8%-100% of the image area with
  aspect ratio 3/4-4/3 (10 attempts; if none fits, the eval center crop instead), decoded and
  cropped in one op for JPEGs (`decode_and_crop_jpeg`, which decodes only the rows it needs),
  resized to S x S (bilinear, antialiased when shrinking; S = image_size, default 224),
  random horizontal flip. Eval: the center crop that "resize the shorter side to S / 0.875,
  then center-crop S x S" keeps, taken from the original image and resized to S x S in one
  step (the same pixels up to interpolation).
* `cifar`: zero-pad by 4 (or `random_crop_pad`) pixels and random-crop back to the stored size,
  random flip. Eval: unchanged.
* `mnist`: zero border up to 32x32 (28x28 digits: 2 pixels), grey repeated to RGB; the same in
  train and eval.
* `none`: decode only (plus `random_crop_pad` / `random_flip` when set).

As on the device (`augment.py`), the random pad-crop and flip act at the stored size; then the
image is resized to S x S when S (`image_size`) differs. Without an image size, the `none`
preset requires every image to have the size of the first one (checked per image).

Randomness is stateless: every random op takes a seed derived from one per-example key
(`tf.random.experimental.stateless_split`), so an example's augmentation is a function of its
key alone -- the same on every run, thread count and resume point.
"""

from typing import Callable

import tensorflow as tf

from resnet_flax.data.augment import CENTER_CROP_FRACTION, MNIST_SIZE, crop_and_flip
# the presets' constants, shared with the TensorFlow-free presets of data/host.py
from resnet_flax.data.host import AREA_RANGE, ASPECT_RANGE, MAX_ATTEMPTS, SIZE_MISMATCH
from resnet_flax.data.source import PRESETS


def decode(data) -> tf.Tensor:
  """uint8 (H, W, 3) of JPEG / PNG / GIF (first frame) / BMP bytes."""
  image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _to_uint8(image) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize(image, size: int) -> tf.Tensor:
  """uint8 (size, size, 3), bilinear; antialiased when shrinking (the identity at the same size).

  Enlarging skips the antialiasing kernel: its result is the same (within one level) and it
  costs about twice as much.
  """
  def resize(antialias):
    return lambda: _to_uint8(tf.image.resize(image, [size, size], method='bilinear',
                                             antialias=antialias))
  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
  shrink = tf.logical_or(shape[0] > size, shape[1] > size)
  out = tf.cond(same, lambda: tf.identity(image),
                lambda: tf.cond(shrink, resize(True), resize(False)))
  out.set_shape([size, size, 3])
  return out


def _decode_window(data, window_fn: Callable) -> tf.Tensor:
  """Decodes the window (y, x, h, w) = window_fn(height, width) of an encoded image.

  JPEGs decode only that window (`decode_and_crop_jpeg`); other formats decode and crop.
  """
  def jpeg():
    shape = tf.io.extract_jpeg_shape(data, output_type=tf.int32)
    y, x, h, w = window_fn(shape[0], shape[1])
    return tf.io.decode_and_crop_jpeg(data, tf.stack([y, x, h, w]), channels=3)

  def other():
    image = decode(data)
    shape = tf.shape(image)
    y, x, h, w = window_fn(shape[0], shape[1])
    return image[y:y + h, x:x + w, :]

  image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def _center_window(size: int, crop_fraction: float = CENTER_CROP_FRACTION):
  """The window that 'shorter side -> round(size / crop_fraction), center crop size' keeps."""
  resized = max(size, int(round(size / crop_fraction)))

  def window(height, width):
    shorter = tf.minimum(height, width)
    side = tf.cast(tf.round(tf.cast(shorter, tf.float32) * (size / resized)), tf.int32)
    side = tf.clip_by_value(side, 1, shorter)
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side
  return window


def _random_window(seed, size: int, crop_fraction: float):
  """Inception random-resized-crop window, or the center window when no attempt fits."""
  center = _center_window(size, crop_fraction)

  def window(height, width):
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([height, width, 3]), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=ASPECT_RANGE, area_range=AREA_RANGE,
        max_attempts=MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
    # the op returns the whole image when no attempt fits: use the center crop then
    whole = tf.logical_and(tf.equal(extent[0], height), tf.equal(extent[1], width))
    cy, cx, ch, cw = center(height, width)
    pick = lambda a, b: tf.where(whole, a, b)  # noqa: E731
    return pick(cy, begin[0]), pick(cx, begin[1]), pick(ch, extent[0]), pick(cw, extent[1])
  return window


def _flip(image, seed) -> tf.Tensor:
  return tf.image.stateless_random_flip_left_right(image, seed=seed)


def _pad_crop(image, seed, pad: int) -> tf.Tensor:
  """Zero-pad by `pad` and crop a random window of the original size."""
  shape = tf.shape(image)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  offset = tf.random.stateless_uniform([2], seed=seed, minval=0, maxval=2 * pad + 1,
                                       dtype=tf.int32)
  return tf.slice(padded, tf.stack([offset[0], offset[1], 0]), shape)


def make(preset: str, *, size: int, train: bool, strict_size: bool = False,
         random_crop_pad: int = 0, random_flip: bool = False,
         crop_fraction: float = CENTER_CROP_FRACTION) -> Callable:
  """fn(encoded bytes, key (2,) int64) -> uint8 (size, size, 3).

  `random_crop_pad` / `random_flip` (the config fields) add a pad-and-crop / flip to the
  `none` and `mnist` presets in training and change the pad of `cifar` (0: 4), as the device
  side does for the in-memory back end. `strict_size` (the `none` preset without an image
  size): images must already be size x size; another size fails the pipeline (an
  InvalidArgumentError) instead of being resized. `crop_fraction` (`data.eval_crop_fraction`):
  the 'imagenet' eval crop S over the resized shorter side.
  """
  if preset not in PRESETS:
    raise ValueError(f'unknown preprocessing preset {preset!r}; allowed: {", ".join(PRESETS)}')
  pad, flip = crop_and_flip(preset, random_crop_pad, random_flip)

  def finish(image):
    image.set_shape([size, size, 3])
    return image

  if preset == 'imagenet':
    def imagenet(data, key):
      if train:
        crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        image = _resize(_decode_window(data, _random_window(crop_key, size, crop_fraction)), size)
        return finish(_flip(image, flip_key) if flip else image)
      return finish(_resize(_decode_window(data, _center_window(size, crop_fraction)), size))
    return imagenet

  def other(data, key):
    image = decode(data)
    if strict_size:
      tf.debugging.assert_equal(
          tf.shape(image)[:2], tf.constant([size, size]),
          message=f'an image {SIZE_MISMATCH} ({size}x{size}); set an image size')
    if train and (pad or flip):       # at the stored size, like the device-side augmentation
      crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
      if pad:
        image = _pad_crop(image, crop_key, pad)
      if flip:
        image = _flip(image, flip_key)
    if preset == 'mnist':             # zero border up to MNIST_SIZE (28x28 -> 32x32)
      shape = tf.shape(image)
      target = tf.maximum(tf.maximum(shape[0], shape[1]), MNIST_SIZE)
      image = tf.image.resize_with_crop_or_pad(image, target, target)
    if strict_size:
      return tf.ensure_shape(image, [size, size, 3])
    return finish(_resize(image, size))
  return other
