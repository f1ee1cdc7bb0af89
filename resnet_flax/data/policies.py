"""Per-example augmentation policies, in JAX (run inside the train step by `augment.py`, for every
data back end, on images at their final size):

* RandAugment (Cubuk et al. 2020) as timm's 'rand-mM-nN-mstdS-inc1': N ops drawn uniformly (with
  replacement) from timm's 15 'increasing' ops, each applied with probability 0.5 at magnitude
  M on timm's 0..10 scale (plus Gaussian noise of std S per op, clipped to 0..10), the signed
  ones (rotate, shear, translate, colour factors) negated half the time;
* TrivialAugment (Muller & Hutter 2021) as torchvision's TrivialAugmentWide: one op of 14
  drawn uniformly, at a magnitude drawn uniformly from 31 bins of its wide range, signed ops
  negated half the time;
* random erasing (Zhong et al. 2020) as timm's RandomErasing in 'pixel' mode: with probability
  p, one box of 2%-33% of the image area and aspect ratio 0.3-3.3 (10 attempts to fit) is
  replaced by standard normal noise; it acts on the normalised image.

Geometric ops fill the uncovered area with `fill`, the data mean rounded to 8 bits (timm's
`img_mean`). The ops are those of `image_ops` (Pillow's definitions, computed in float, so not
bit-identical to a Pillow pipeline). Each example's draws come from its own key: a function of
(seed, step, position in the global batch), as the crop and flip.
"""

import math

import jax
import jax.numpy as jnp

from resnet_flax import fields
from resnet_flax.data import image_ops as ops
from resnet_flax.data.source import AUTO_AUGMENTS
from resnet_flax.errors import ConfigError

LEVEL = 10.0          # timm's magnitude scale
RAND_PROB = 0.5       # timm's probability of applying each chosen op
BINS = 31             # TrivialAugment's magnitude bins
ERASE_AREA = (0.02, 1 / 3)
ERASE_ASPECT = (0.3, 1 / 0.3)
ERASE_ATTEMPTS = 10


def _enhance(m, sign, _):
  return jnp.maximum(0.1, 1.0 + sign * m / LEVEL * 0.9)


def _zero(*_):
  return jnp.float32(0.0)


# RandAugment (timm's increasing set): (op, argument of (magnitude 0..10, sign, (h, w)))
RANDAUGMENT_OPS = (
    (ops.auto_contrast, _zero),
    (ops.equalize, _zero),
    (ops.invert, _zero),
    (ops.rotate, lambda m, s, _: s * m / LEVEL * 30.0),
    (ops.posterize, lambda m, s, _: 4.0 - jnp.floor(m / LEVEL * 4.0)),
    (ops.solarize, lambda m, s, _: 256.0 - jnp.minimum(256.0, jnp.floor(m / LEVEL * 256.0))),
    (ops.solarize_add, lambda m, s, _: jnp.minimum(128.0, jnp.floor(m / LEVEL * 110.0))),
    (ops.color, _enhance),
    (ops.contrast, _enhance),
    (ops.brightness, _enhance),
    (ops.sharpness, _enhance),
    (ops.shear_x, lambda m, s, _: s * m / LEVEL * 0.3),
    (ops.shear_y, lambda m, s, _: s * m / LEVEL * 0.3),
    (ops.translate_x, lambda m, s, hw: s * m / LEVEL * 0.45 * hw[1]),
    (ops.translate_y, lambda m, s, hw: s * m / LEVEL * 0.45 * hw[0]),
)


def _wide(top):
  return lambda b, s, _: s * b / (BINS - 1) * top


def _wide_factor(b, s, _):
  return 1.0 + s * b / (BINS - 1) * 0.99


# TrivialAugmentWide: (op, argument of (bin 0..30, sign, (h, w)))
TRIVIALAUGMENT_OPS = (
    (ops.identity, _zero),
    (ops.shear_x, _wide(0.99)),
    (ops.shear_y, _wide(0.99)),
    (ops.translate_x, _wide(32.0)),
    (ops.translate_y, _wide(32.0)),
    (ops.rotate, _wide(135.0)),
    (ops.brightness, _wide_factor),
    (ops.color, _wide_factor),
    (ops.contrast, _wide_factor),
    (ops.sharpness, _wide_factor),
    (ops.posterize, lambda b, s, _: 8.0 - jnp.round(b / ((BINS - 1) / 6.0))),
    (ops.solarize, lambda b, s, _: 255.0 * (1.0 - b / (BINS - 1))),
    (ops.auto_contrast, _zero),
    (ops.equalize, _zero),
)


def _one_of(table, index, image, magnitude, sign, fill):
  """Op `index` of `table` at this magnitude and sign (all ops are evaluated under vmap)."""
  hw = image.shape[:2]
  branches = [lambda img, m, s, op=op, arg=arg: ops.apply(op, img, arg(m, s, hw), fill)
              for op, arg in table]
  return jax.lax.switch(index, branches, image, magnitude, sign)


def _sign(key):
  return jnp.where(jax.random.bernoulli(key), -1.0, 1.0).astype(jnp.float32)


def randaugment(num_ops: int, magnitude: float, magnitude_std: float, fill):
  """fn(image float (H, W, C) 0..255, key) -> image: RandAugment as described above."""
  def augment(image, key):
    for layer_key in jax.random.split(key, num_ops):
      k_op, k_apply, k_mag, k_sign = jax.random.split(layer_key, 4)
      m = jnp.float32(magnitude)
      if magnitude_std > 0:
        m = jnp.clip(m + magnitude_std * jax.random.normal(k_mag), 0.0, LEVEL)
      index = jax.random.randint(k_op, (), 0, len(RANDAUGMENT_OPS))
      out = _one_of(RANDAUGMENT_OPS, index, image, m, _sign(k_sign), fill)
      image = jnp.where(jax.random.uniform(k_apply) < RAND_PROB, out, image)
    return image
  return augment


def trivialaugment(fill):
  """fn(image float (H, W, C) 0..255, key) -> image: TrivialAugment (wide) as described above."""
  def augment(image, key):
    k_op, k_bin, k_sign = jax.random.split(key, 3)
    index = jax.random.randint(k_op, (), 0, len(TRIVIALAUGMENT_OPS))
    b = jax.random.randint(k_bin, (), 0, BINS).astype(jnp.float32)
    return _one_of(TRIVIALAUGMENT_OPS, index, image, b, _sign(k_sign), fill)
  return augment


def random_erasing(prob: float):
  """fn(normalised image (H, W, C), key) -> image with at most one box of normal noise."""
  def erase(image, key):
    h, w, _ = image.shape
    k_apply, k_area, k_aspect, k_top, k_left, k_noise = jax.random.split(key, 6)
    areas = jax.random.uniform(k_area, (ERASE_ATTEMPTS,), minval=ERASE_AREA[0],
                               maxval=ERASE_AREA[1]) * (h * w)
    aspects = jnp.exp(jax.random.uniform(k_aspect, (ERASE_ATTEMPTS,),
                                         minval=math.log(ERASE_ASPECT[0]),
                                         maxval=math.log(ERASE_ASPECT[1])))
    heights = jnp.round(jnp.sqrt(areas * aspects)).astype(jnp.int32)
    widths = jnp.round(jnp.sqrt(areas / aspects)).astype(jnp.int32)
    fits = (heights < h) & (widths < w)
    first = jnp.argmax(fits)                      # the first attempt that fits
    eh, ew = heights[first], widths[first]
    top = jnp.floor(jax.random.uniform(k_top) * (h - eh + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(k_left) * (w - ew + 1)).astype(jnp.int32)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    erased = (jax.random.uniform(k_apply) < prob) & jnp.any(fits)
    noise = jax.random.normal(k_noise, image.shape, image.dtype)
    return jnp.where((box & erased)[..., None], noise, image)
  return erase


def check_fields(data_cfg) -> None:
  """ConfigError naming the first augmentation field of `data_cfg` that cannot work."""
  fields.choice(data_cfg, 'data', 'auto_augment', AUTO_AUGMENTS)
  if fields.integer(data_cfg['randaugment_num_ops'], 'data.randaugment_num_ops') < 1:
    raise ConfigError(f"data.randaugment_num_ops={data_cfg['randaugment_num_ops']} must be a "
                      'positive number of ops.')
  fields.number(data_cfg, 'data', 'randaugment_magnitude', low=0.0, high=LEVEL)
  fields.number(data_cfg, 'data', 'randaugment_magnitude_std', low=0.0)
  fields.number(data_cfg, 'data', 'random_erasing', low=0.0, high=1.0)


def make(data_cfg, fill):
  """(policy fn(image 0..255, key) or None, erasing fn(normalised image, key) or None) of the
  data config's `auto_augment` and `random_erasing` fields."""
  check_fields(data_cfg)
  name = data_cfg['auto_augment']
  policy = None
  if name == 'randaugment':
    policy = randaugment(int(data_cfg['randaugment_num_ops']),
                         float(data_cfg['randaugment_magnitude']),
                         float(data_cfg['randaugment_magnitude_std']), fill)
  elif name == 'trivialaugment':
    policy = trivialaugment(fill)
  erasing = float(data_cfg['random_erasing'])
  return policy, (random_erasing(erasing) if erasing > 0 else None)
