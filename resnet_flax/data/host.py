"""Host-side preprocessing in NumPy and Pillow (no TensorFlow): encoded image bytes ->
uint8 (S, S, 3), the presets of `data.preprocess` for the back ends that augment on the host
without TensorFlow (Grain), and the eval windows inference shares with them.

The presets have the semantics of the tf.data ones (`data/tf/preprocess.py`):

* `imagenet`: the Inception random-resized crop of `tf.image.sample_distorted_bounding_box`
  (ported: aspect ratio uniform in 3/4-4/3, then a height uniform over the heights whose area is
  8%-100% of the image, offsets uniform, `MAX_ATTEMPTS` tries, else the eval center crop),
  resized to S x S, random horizontal flip. Eval: the center window that "shorter side ->
  S / eval_crop_fraction, center crop S" keeps (`center_window`), resized to S x S.
* `cifar`: zero-pad by 4 (or `random_crop_pad`) and random-crop back, random flip; eval
  unchanged. `mnist`: zero border up to 32x32. `none`: decode only (plus `random_crop_pad` /
  `random_flip`). As on the device, pad-crop and flip act at the stored size, then the image is
  resized to S x S when S differs; without an image size, `none` requires every image to have
  the size of the first one.

Resizing (`resize`) is Pillow's bilinear filter, antialiased when shrinking, on the cropped
pixels: within one uint8 level of TensorFlow's `tf.image.resize(..., antialias=True)`.
Randomness comes from `numpy.random.default_rng(key)`, `key` a tuple of ints (the back end
passes the seed words, the epoch and the example's index), so an example's augmentation depends
on nothing else: not on threads, processes or the resume point.
"""

import io
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_flax.data.augment import CENTER_CROP_FRACTION, MNIST_SIZE, crop_and_flip
from resnet_flax.data.source import IMAGE_LIBRARIES, PRESETS
from resnet_flax.errors import ConfigError

AREA_RANGE = (0.08, 1.0)          # random-resized crop: fraction of the image area
ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MAX_ATTEMPTS = 10
# the message of a strict-size failure (the `none` preset without an image size)
SIZE_MISMATCH = 'is not the size of the first image'
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class BadImage(ValueError):
  """An image that cannot be decoded (or has the wrong size); the message is the detail."""


def to_rgb(image: Image.Image) -> np.ndarray:
  """A PIL image as uint8 (H, W, 3): grey, palette, CMYK and RGBA become RGB (alpha dropped,
  16-bit grey scaled to 8 bits)."""
  mode = image.mode
  if mode == 'RGB':
    return np.asarray(image, np.uint8)
  if mode in ('I', 'I;16', 'I;16L', 'I;16B', 'I;16N'):
    # 16-bit grey: scale 0..65535 to 0..255 (PIL's own conversion would clip at 255)
    grey = np.asarray(image).astype(np.uint32)
    grey = np.clip((grey + 128) // 257, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode in ('LA', 'La', 'PA') or (mode == 'P' and 'transparency' in image.info):
    image = image.convert('RGBA')
  return np.asarray(image.convert('RGB'), np.uint8)


def describe_error(error: BaseException) -> str:
  """What Pillow's failure to read an image says, in a few words."""
  if isinstance(error, UnidentifiedImageError):
    return 'not an image Pillow can read'
  return f'{type(error).__name__}: {error}'


def open_rgb(data) -> Image.Image:
  """A loaded PIL image in mode RGB of encoded bytes or a path (other modes as `to_rgb`);
  BadImage when Pillow cannot read it."""
  try:
    with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as image:
      image.load()
      if image.mode == 'RGB':
        return image.copy() if image.fp is not None else image
      array = to_rgb(image)
  except DECODE_ERRORS as e:   # UnidentifiedImageError is an OSError
    raise BadImage(describe_error(e)) from None
  if array.ndim != 3 or array.shape[-1] != 3:
    raise BadImage(f'decoded to an unexpected shape {array.shape}')
  return Image.fromarray(array)


def decode(data) -> np.ndarray:
  """uint8 (H, W, 3) of encoded bytes or a path; BadImage when Pillow cannot read it."""
  return np.asarray(open_rgb(data))


def resize(image: np.ndarray, height: int, width: int = 0) -> np.ndarray:
  """uint8 (height, width or height, C): Pillow bilinear, antialiased when shrinking; the
  identity at the same size."""
  width = width or height
  if image.shape[:2] == (height, width):
    return image
  if image.shape[-1] == 1:
    return resize(image[..., 0], height, width)[..., None]
  return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
      (width, height), Image.Resampling.BILINEAR))


def center_window(height: int, width: int, size: int,
                  crop_fraction: float = CENTER_CROP_FRACTION) -> tuple[int, int, int, int]:
  """(y, x, h, w) that 'shorter side -> round(size / crop_fraction), center crop size' keeps
  (as the tf.data preset's window, in float32 with round-half-to-even)."""
  resized = max(size, int(round(size / crop_fraction)))
  shorter = min(height, width)
  side = int(np.round(np.float32(shorter) * np.float32(size / resized)))
  side = min(max(side, 1), shorter)
  return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def _try_crop(height: int, width: int, aspect: float, rng):
  """One attempt of TensorFlow's GenerateRandomCrop: (y, x, h, w) or None."""
  min_area, max_area = AREA_RANGE[0] * width * height, AREA_RANGE[1] * width * height
  h = int(np.rint(np.sqrt(min_area / aspect)))
  max_h = int(np.rint(np.sqrt(max_area / aspect)))
  if np.rint(max_h * aspect) > width:
    max_h = int((width + 0.5 - 1e-7) / aspect)
    if np.rint(max_h * aspect) > width:
      max_h -= 1
  max_h = min(max_h, height)
  h = min(h, max_h)
  if h < max_h:
    h += int(rng.integers(max_h - h + 1))
  w = int(np.rint(h * aspect))
  area = w * h
  if area < min_area:
    h += 1
    w = int(np.rint(h * aspect))
    area = w * h
  if area > max_area:
    h -= 1
    w = int(np.rint(h * aspect))
    area = w * h
  if area < min_area or area > max_area or w > width or h > height or w <= 0 or h <= 0:
    return None
  y = int(rng.integers(height - h)) if h < height else 0
  x = int(rng.integers(width - w)) if w < width else 0
  return y, x, h, w


def random_window(height: int, width: int, rng, size: int,
                  crop_fraction: float = CENTER_CROP_FRACTION) -> tuple[int, int, int, int]:
  """The Inception random-resized-crop window, or the center window when no attempt fits."""
  for _ in range(MAX_ATTEMPTS):
    window = _try_crop(height, width, rng.uniform(*ASPECT_RANGE), rng)
    if window is not None:
      return window
  return center_window(height, width, size, crop_fraction)


def pad_to_square(image: np.ndarray, minimum: int) -> np.ndarray:
  """Zero border (centered) to a square of max(h, w, minimum), as
  tf.image.resize_with_crop_or_pad in the 'mnist' preset."""
  h, w, c = image.shape
  target = max(h, w, minimum)
  out = np.zeros((target, target, c), image.dtype)
  top, left = (target - h) // 2, (target - w) // 2
  out[top:top + h, left:left + w] = image
  return out


def pad_crop(image: np.ndarray, rng, pad: int) -> np.ndarray:
  """Zero-pad by `pad` and crop a random window of the original size."""
  h, w, _ = image.shape
  dy, dx = rng.integers(0, 2 * pad + 1, 2)
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  return padded[dy:dy + h, dx:dx + w]


def eval_image(image: np.ndarray, preset: str, size: int,
               crop_fraction: float = CENTER_CROP_FRACTION, fit: Callable = resize) -> np.ndarray:
  """The eval branch of a preset on a decoded uint8 (H, W, 3) image: uint8 (size, size, 3)
  (`fit(image, size)`: the resize)."""
  if preset == 'imagenet':
    y, x, h, w = center_window(image.shape[0], image.shape[1], size, crop_fraction)
    image = image[y:y + h, x:x + w]
  elif preset == 'mnist':
    image = pad_to_square(image, MNIST_SIZE)
  return fit(image, size)


def _opencv():
  try:
    import cv2
  except ImportError:
    raise ConfigError("data.image_library='opencv' needs OpenCV (pip install "
                      "opencv-python-headless); or set data.image_library='pillow'") from None
  cv2.setNumThreads(1)   # one image per thread: the pipeline runs the images in parallel
  return cv2


def opencv_decode(data) -> np.ndarray:
  """uint8 (H, W, 3) RGB of encoded bytes by OpenCV; BadImage when it cannot decode them. The
  EXIF orientation is not applied, as Pillow (every other path, prediction included) does not."""
  cv2 = _opencv()
  array = cv2.imdecode(np.frombuffer(data, np.uint8),
                       cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
  if array is None:
    raise BadImage('not an image OpenCV can decode')
  return array


def opencv_resize(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (size, size, 3): bilinear when enlarging, area averaging when shrinking."""
  if image.shape[:2] == (size, size):
    return image
  cv2 = _opencv()
  shrink = image.shape[0] > size or image.shape[1] > size
  return cv2.resize(np.ascontiguousarray(image), (size, size),
                    interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def make(preset: str, *, size: int, train: bool, strict_size: bool = False,
         random_crop_pad: int = 0, random_flip: bool = False,
         crop_fraction: float = CENTER_CROP_FRACTION, library: str = 'pillow') -> Callable:
  """fn(encoded bytes, key: tuple of ints) -> uint8 (size, size, 3); BadImage on bytes that
  do not decode (or, with `strict_size`, an image that is not size x size).

  The options are those of `data/tf/preprocess.make` (the config fields of the same names);
  `library` (`data.image_library`): 'pillow', or 'opencv' (faster decoding and resizing; its
  shrinking averages areas instead of Pillow's antialiased bilinear filter).
  """
  if preset not in PRESETS:
    raise ValueError(f'unknown preprocessing preset {preset!r}; allowed: {", ".join(PRESETS)}')
  if library not in IMAGE_LIBRARIES:
    raise ConfigError(f'data.image_library={library!r}; allowed: {", ".join(IMAGE_LIBRARIES)}')
  pad, flip = crop_and_flip(preset, random_crop_pad, random_flip)
  if library == 'opencv':
    _opencv()
    read, fit = opencv_decode, opencv_resize
  elif preset == 'imagenet':
    return _pillow_imagenet(size, train, flip, crop_fraction)
  else:
    read, fit = decode, resize

  def fn(data, key: Sequence[int]) -> np.ndarray:
    image = _checked(read(data), size, strict_size)
    if not train:
      return eval_image(image, preset, size, crop_fraction, fit)
    rng = np.random.default_rng(list(key))
    if preset == 'imagenet':
      y, x, h, w = random_window(image.shape[0], image.shape[1], rng, size, crop_fraction)
      image = fit(image[y:y + h, x:x + w], size)
    elif pad:
      image = pad_crop(image, rng, pad)
    if flip and rng.random() < 0.5:
      image = image[:, ::-1]
    if preset == 'mnist':
      image = pad_to_square(image, MNIST_SIZE)
    return fit(image, size)
  return fn


def _pillow_imagenet(size: int, train: bool, flip: bool, crop_fraction: float) -> Callable:
  """The 'imagenet' preset on PIL images (crop, resize, flip; one conversion to an array)."""
  def imagenet(data, key: Sequence[int]) -> np.ndarray:
    image = open_rgb(data)
    width, height = image.size
    if train:
      rng = np.random.default_rng(list(key))
      y, x, h, w = random_window(height, width, rng, size, crop_fraction)
    else:
      y, x, h, w = center_window(height, width, size, crop_fraction)
    image = image.crop((x, y, x + w, y + h))
    if image.size != (size, size):
      image = image.resize((size, size), Image.Resampling.BILINEAR)
    if train and flip and rng.random() < 0.5:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(image)
  return imagenet


def _checked(image: np.ndarray, size: int, strict: bool) -> np.ndarray:
  if strict and image.shape[:2] != (size, size):
    raise BadImage(f'is {image.shape[1]}x{image.shape[0]}: an image {SIZE_MISMATCH} '
                   f'({size}x{size})')
  return image
