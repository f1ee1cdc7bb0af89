"""Image operations of the augmentation policies (RandAugment, TrivialAugment), in JAX.

Each op takes one image, float32 (H, W, C) holding integers 0..255, and returns one in the same
form (rounded and clipped, as an 8-bit image would be after it), with its argument a scalar that
may be traced, so a policy can choose ops and magnitudes per example inside a jitted step. They
follow Pillow's definitions (`ImageOps`, `ImageEnhance`, `Image.transform`), the ones timm's
and torchvision's policies apply (tested: within one level of Pillow):

* geometric: `affine(image, (a, b, c, d, e, f), fill)` reads the output pixel centred at
  (x, y) from the input at (a x + b y + c, d x + e y + f), bilinearly; points outside the image
  take `fill` (one value per channel), as in Pillow. `rotate` (counter-clockwise, in degrees,
  about the centre), `shear_x` / `shear_y`, `translate_x` / `translate_y` (in pixels) are
  affine maps;
* colour: `brightness`, `color` (saturation), `contrast`, `sharpness` blend the image with a
  degenerate one (black; grey; the mean grey level; a 3x3 smoothed copy) by a factor (1: the
  image); `posterize` keeps the high `bits`, `solarize` inverts values >= a threshold,
  `solarize_add` adds to values < 128, `invert`, `auto_contrast` (stretch each channel to
  0..255), `equalize` (Pillow's per-channel histogram equalisation), `identity`.

Grey images (C = 1) are their own grey level; three-channel images use ITU-R 601 luma.
"""

import math

import jax.numpy as jnp

_LUMA = (0.299, 0.587, 0.114)
_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))   # Pillow's SMOOTH, / 13


def to_8bit(x):
  return jnp.clip(jnp.round(x), 0.0, 255.0)


def _grey(image):
  if image.shape[-1] == 3:
    return jnp.round(image @ jnp.asarray(_LUMA, image.dtype))
  return image[..., 0]


def _blend(degenerate, image, factor):
  return to_8bit(degenerate + factor * (image - degenerate))


def identity(image, _=None):
  return image


def brightness(image, factor):
  return _blend(jnp.zeros_like(image), image, factor)


def color(image, factor):
  return _blend(jnp.broadcast_to(_grey(image)[..., None], image.shape), image, factor)


def contrast(image, factor):
  return _blend(jnp.round(jnp.mean(_grey(image))), image, factor)


def sharpness(image, factor):
  """Blend with the image smoothed by Pillow's SMOOTH kernel; the border keeps its pixels."""
  kernel = jnp.asarray(_SMOOTH, image.dtype) / 13.0
  h, w = image.shape[:2]
  smooth = sum(kernel[i, j] * image[i:h - 2 + i, j:w - 2 + j]
               for i in range(3) for j in range(3))
  degenerate = image.at[1:-1, 1:-1].set(to_8bit(smooth))
  return _blend(degenerate, image, factor)


def posterize(image, bits):
  """Keep the `bits` (0..8) high bits of each value."""
  step = 2.0 ** (8.0 - jnp.clip(bits, 0, 8).astype(image.dtype))
  return jnp.floor(image / step) * step


def solarize(image, threshold):
  return jnp.where(image >= threshold, 255.0 - image, image)


def solarize_add(image, add, threshold=128.0):
  return jnp.where(image < threshold, jnp.minimum(image + add, 255.0), image)


def invert(image, _=None):
  return 255.0 - image


def auto_contrast(image, _=None):
  """Each channel's darkest value to 0 and brightest to 255 (unchanged if it is flat)."""
  lo = jnp.min(image, axis=(0, 1))
  hi = jnp.max(image, axis=(0, 1))
  scale = 255.0 / jnp.where(hi > lo, hi - lo, 1.0)
  stretched = jnp.clip(jnp.floor((image - lo) * scale), 0.0, 255.0)
  return jnp.where(hi > lo, stretched, image)


def _equalize_channel(channel):
  values = channel.astype(jnp.int32).ravel()
  histogram = jnp.zeros(256, jnp.int32).at[values].add(1)
  last = histogram[255 - jnp.argmax(histogram[::-1] > 0)]    # the count of the top value
  step = (values.size - last) // 255
  before = jnp.cumsum(histogram) - histogram                 # pixels below each value
  lut = jnp.minimum((step // 2 + before) // jnp.maximum(step, 1), 255)
  return jnp.where(step > 0, lut[values].reshape(channel.shape).astype(channel.dtype), channel)


def equalize(image, _=None):
  """Pillow's histogram equalisation, per channel."""
  return jnp.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def affine(image, matrix, fill):
  """The output pixel centred at (x, y) is the input at (a x + b y + c, d x + e y + f): bilinear
  between the nearest pixels (clamped to the image) when that point lies in the image, `fill`
  when it does not (Pillow's `Image.transform(size, AFFINE, matrix, BILINEAR, fillcolor)`)."""
  a, b, c, d, e, f = matrix
  h, w, _ = image.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                        jnp.arange(w, dtype=jnp.float32) + 0.5, indexing='ij')
  u = a * xs + b * ys + c              # the source point, in pixel-edge coordinates
  v = d * xs + e * ys + f
  inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
  x0, y0 = jnp.floor(u - 0.5), jnp.floor(v - 0.5)
  wx, wy = (u - 0.5 - x0)[..., None], (v - 0.5 - y0)[..., None]

  def at(yy, xx):
    return image[jnp.clip(yy, 0, h - 1).astype(jnp.int32),
                 jnp.clip(xx, 0, w - 1).astype(jnp.int32)]
  top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
  bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
  sampled = top * (1 - wy) + bottom * wy
  return to_8bit(jnp.where(inside[..., None], sampled, jnp.asarray(fill, image.dtype)))


def rotate(image, degrees, fill):
  """Counter-clockwise rotation about the centre (Pillow's `Image.rotate`)."""
  h, w = image.shape[:2]
  angle = -degrees * (math.pi / 180.0)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = w / 2.0, h / 2.0
  return affine(image, (cos, sin, cx - cos * cx - sin * cy,
                        -sin, cos, cy + sin * cx - cos * cy), fill)


def shear_x(image, factor, fill):
  return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image, factor, fill):
  return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x(image, pixels, fill):
  return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill)


def translate_y(image, pixels, fill):
  return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill)


GEOMETRIC = (rotate, shear_x, shear_y, translate_x, translate_y)   # they take `fill`


def apply(op, image, argument, fill):
  """`op(image, argument)`, with `fill` for the geometric ops."""
  if op in GEOMETRIC:
    return op(image, argument, fill)
  return op(image, argument)

