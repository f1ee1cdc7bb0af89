"""Preprocessing and augmentation of uint8 image batches, in JAX (runs inside the jitted step).

Train: optional zero-pad-and-random-crop and horizontal flip, keyed per example by
fold_in(step key, position in the global batch), so the augmentation of an example is the same
on any number of devices. Then resize (when `data.image_size` differs from the stored size),
channel repeat (grey to RGB when the model wants more channels), and normalisation with
`data.mean` / `data.std` on the 0..255 scale. Eval: the same without the random parts.
"""

from typing import Callable

import jax
import jax.numpy as jnp


def _random_crop(image, key, pad: int):
  h, w, _ = image.shape
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[-1]))


def _random_flip(image, key):
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1, :], image)


def make_preprocess(data_cfg, *, stored_size: int, stored_channels: int, channels: int,
                    augment_on_device: bool = True) -> Callable:
  """fn(images uint8 (N,H,W,C), key, positions (N,), train: bool) -> float32 (N,S,S,channels).

  `augment_on_device=False` (a source that augments on the host, e.g. tf.data) leaves only the
  deterministic part: resize, channel repeat, normalisation.
  """
  pad = int(data_cfg['random_crop_pad']) if augment_on_device else 0
  flip = bool(data_cfg['random_flip']) and augment_on_device
  size = int(data_cfg['image_size']) or stored_size
  mean = jnp.asarray(data_cfg['mean'], jnp.float32)
  std = jnp.asarray(data_cfg['std'], jnp.float32)
  if channels % stored_channels:
    raise ValueError(f'cannot turn {stored_channels}-channel images into {channels} channels')
  repeat = channels // stored_channels

  def augment_one(image, key):
    crop_key, flip_key = jax.random.split(key)
    if pad:
      image = _random_crop(image, crop_key, pad)
    if flip:
      image = _random_flip(image, flip_key)
    return image

  def preprocess(images, key, positions, train: bool):
    x = images
    if train and (pad or flip):
      keys = jax.vmap(lambda p: jax.random.fold_in(key, p))(positions)
      x = jax.vmap(augment_one)(x, keys)
    x = x.astype(jnp.float32)
    if size != stored_size:
      x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), 'bilinear')
    if repeat > 1:
      x = jnp.tile(x, (1, 1, 1, repeat))
    return (x - mean) / std

  return preprocess
