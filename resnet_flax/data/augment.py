"""Preprocessing and augmentation of uint8 image batches, in JAX (runs inside the jitted step).

Train: zero-pad-and-random-crop and horizontal flip (preset 'cifar' or the explicit fields), keyed
per example by fold_in(step key, position in the global batch), so the augmentation of an example
is the same on any number of devices. Then resize (when `data.image_size` differs from the stored
size), channel repeat (grey to RGB when the model wants more channels), the per-example policy
(`data.auto_augment`: RandAugment or TrivialAugment, `policies`), normalisation with `data.mean` /
`data.std` on the 0..255 scale, and random erasing (`data.random_erasing`). Eval: the same without
the random parts, at `data.eval_image_size` when set.

A host back end (tf.data, Grain) delivers images already cropped, flipped and at their final size; the
policy and the erasing still run here, on the device, after the host's crop and flip, as in
timm's pipeline (random-resized crop, flip, RandAugment, normalise, erase). So they are one
implementation for every back end, keyed the same way.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from resnet_flax import fields
from resnet_flax.data import image_ops, policies
from resnet_flax.data.source import DATA_DEFAULTS, PRESETS
from resnet_flax.errors import ConfigError


def _random_crop(image, key, pad: int):
  h, w, _ = image.shape
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[-1]))


def _random_flip(image, key):
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1, :], image)


CIFAR_PAD = 4     # the 'cifar' preset's zero padding before the random crop
MNIST_SIZE = 32   # the common transfer-learning recipe pads MNIST's 28x28 to 32x32
IMAGENET_SIZE = 224               # the 'imagenet' preset's default side S
CENTER_CROP_FRACTION = 0.875      # its eval: shorter side resized to S / 0.875, center crop S


def host_output_size(preset: str, image_size: int, stored_size) -> int:
  """The side S of the images the host presets emit (tf.data, Grain; TensorFlow-free here so
  that inference computes it without TensorFlow)."""
  if image_size:
    return int(image_size)
  if preset == 'imagenet':
    return IMAGENET_SIZE
  if not stored_size:
    raise ValueError(f'preset {preset!r} needs the stored image size or an image size')
  return max(int(stored_size), MNIST_SIZE) if preset == 'mnist' else int(stored_size)


def output_shape(data_cfg, stored_shape) -> tuple[int, int, int]:
  """(H, W, C) of the images the model trains on, from the stored shape and the data config:
  S x S for `data.image_size` S, else the images' own H x W ('mnist': at least 32 x 32)."""
  stored_h, stored_w, stored_channels = stored_shape
  preset = data_cfg['preprocess']
  size = int(data_cfg['image_size'])
  if size:
    height = width = size
  elif preset == 'mnist':
    height, width = max(stored_h, MNIST_SIZE), max(stored_w, MNIST_SIZE)
  else:
    height, width = stored_h, stored_w
  channels = int(data_cfg['channels']) or (3 if preset == 'mnist' else stored_channels)
  return height, width, channels


def crop_and_flip(preset: str, random_crop_pad: int, random_flip: bool) -> tuple[int, bool]:
  """(pad, flip) of a preset's training augmentation, for every back end: the zero padding of
  the random crop (`data.random_crop_pad`, else the 'cifar' preset's 4, else none) and whether
  images are flipped (`data.random_flip`, or the 'cifar' and 'imagenet' presets)."""
  pad = int(random_crop_pad) or (CIFAR_PAD if preset == 'cifar' else 0)
  return pad, bool(random_flip) or preset in ('cifar', 'imagenet')


def check_preset_on_device(preset: str, augment_on_device: bool) -> None:
  """ConfigError for the 'imagenet' preset (random-resized crops of JPEGs) on the device: it
  runs in a host back end."""
  if preset == 'imagenet' and augment_on_device:
    raise ConfigError("data.preprocess='imagenet' (random-resized crops) runs in a host back "
                      "end: set data.backend='grain' or data.backend='tfdata'")


def make_preprocess(data_cfg, *, stored_shape, augment_on_device: bool = True) -> Callable:
  """fn(images uint8 (N,H,W,C), key, positions (N,), train: bool) -> float32 images of
  `output_shape` (evaluation: S x S for `data.eval_image_size` S).

  Presets (`data.preprocess`): 'none' (only `random_crop_pad` / `random_flip`), 'cifar' (pad 4
  or `random_crop_pad`, random crop, flip), 'mnist' (zero-pad to 32x32, grey -> 3 channels).
  'imagenet' (random-resized crops of JPEGs) belongs to the host back ends (tf.data, Grain).
  `augment_on_device=False` (a source that augments on the host, e.g. Grain) leaves only the
  deterministic part, resize, channel repeat, normalisation, and the policy and erasing.
  """
  data_cfg = fields.merged(data_cfg, DATA_DEFAULTS, 'data')
  preset = data_cfg['preprocess']
  if preset not in PRESETS:
    raise ConfigError(f'data.preprocess={preset!r}; allowed: {", ".join(PRESETS)}')
  check_preset_on_device(preset, augment_on_device)
  stored_channels = stored_shape[2]
  height, width, channels = output_shape(data_cfg, stored_shape)
  pad, flip = crop_and_flip(preset, data_cfg['random_crop_pad'], data_cfg['random_flip'])
  if not augment_on_device:
    pad, flip = 0, False
  border = [max(MNIST_SIZE - side, 0) // 2 if preset == 'mnist' and augment_on_device else 0
            for side in stored_shape[:2]]
  mean = jnp.asarray(data_cfg['mean'], jnp.float32)
  std = jnp.asarray(data_cfg['std'], jnp.float32)
  if channels % stored_channels:
    raise ConfigError(f'data.channels={channels}: cannot turn {stored_channels}-channel images '
                      f'into {channels} channels')
  repeat = channels // stored_channels
  if len(data_cfg['mean']) not in (1, channels):
    raise ConfigError(f'data.mean={tuple(data_cfg["mean"])} and data.std have '
                      f'{len(data_cfg["mean"])} values for {channels}-channel images: give 1 '
                      f'value, or 1 per channel')
  eval_size = int(data_cfg['eval_image_size'])
  eval_hw = (eval_size, eval_size) if eval_size else (height, width)
  fill = image_ops.to_8bit(jnp.broadcast_to(jnp.asarray(data_cfg['mean'], jnp.float32),
                                            (channels,)))
  policy, erase = policies.make(data_cfg, tuple(float(v) for v in fill))

  def augment_one(image, key):
    crop_key, flip_key = jax.random.split(key)
    if pad:
      image = _random_crop(image, crop_key, pad)
    if flip:
      image = _random_flip(image, flip_key)
    return image

  def preprocess(images, key, positions, train: bool):
    x = images
    keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(positions)
    if train and (pad or flip):
      x = jax.vmap(augment_one)(x, keys)
    if any(border):
      x = jnp.pad(x, ((0, 0), (border[0],) * 2, (border[1],) * 2, (0, 0)))
    x = x.astype(jnp.float32)
    hw = (height, width) if train else eval_hw
    if tuple(x.shape[1:3]) != hw:
      x = jax.image.resize(x, (x.shape[0],) + hw + (x.shape[-1],), 'bilinear')
    if repeat > 1:
      x = jnp.tile(x, (1, 1, 1, repeat))
    if train and policy is not None:   # per example keys of their own: fold_in(key, 2)
      x = jax.vmap(policy)(image_ops.to_8bit(x), jax.vmap(
          lambda k: jax.random.fold_in(k, 2))(keys))
    x = (x - mean) / std
    if train and erase is not None:
      x = jax.vmap(erase)(x, jax.vmap(lambda k: jax.random.fold_in(k, 3))(keys))
    return x

  return preprocess
