"""Layers whose numerics the reference implementations pin down exactly.

* `symmetric_padding`: torchvision's conv padding ((k - 1) // 2 on every side), not flax's
  'SAME', which pads a stride-2 conv on even inputs asymmetrically and changes the numbers.
* `max_pool`: 3x3 stride-2 max pooling padded with -inf, as torch's `MaxPool2d(3, 2, 1)`, or
  with zeros, as Keras applications' `ZeroPadding2D` + `MaxPooling2D`.
* `avg_pool_ceil`: 2x2 average pooling with ceil mode and padding left out of the average, as
  torch's `AvgPool2d(2, s, ceil_mode=True, count_include_pad=False)` in timm's ResNet-D shortcut.
* `BatchNorm`: batch normalisation whose statistics are taken over the whole (global) batch, over a
  named device axis under `pmap`, or over groups of `group_size` examples ("ghost" BatchNorm, the
  per-GPU statistics of the original paper). Parameter and statistic names match flax's
  `nn.BatchNorm` (`scale`, `bias`; `mean`, `var`) so checkpoints are interchangeable.
* `SqueezeExcite`: the squeeze-and-excitation gate of Hu et al. 2018, with timm's reduced width.
* `drop_path`: stochastic depth (Huang et al. 2016) of a residual branch, per example.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def symmetric_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  p = (kernel_size - 1) // 2
  return ((p, p), (p, p))


def _border_counts(size: int, window: int, stride: int, pad: int) -> tuple[int, int]:
  """How many pooled positions at the start and at the end of an axis of `size` inputs have a
  window reaching over the padding."""
  starts = np.arange((size + 2 * pad - window) // stride + 1) * stride - pad
  return int((starts < 0).sum()), int((starts + window > size).sum())


def _at_least_zero(x, axis: int, first: int, last: int):
  """`x` with its `first` leading and `last` trailing positions along `axis` raised to >= 0."""
  n = x.shape[axis]
  for start, count in ((0, first), (n - last, last)):
    if count:
      part = jax.lax.slice_in_dim(x, start, start + count, axis=axis)
      x = jax.lax.dynamic_update_slice_in_dim(x, jnp.maximum(part, 0), start, axis)
  return x


def max_pool(x, window: int = 3, stride: int = 2, zero_pad: bool = False):
  """Max pooling padded with -inf (never wins a max), as torch.nn.MaxPool2d(3, 2, padding=1).

  With `zero_pad=True` the values of pooling the input padded with zeros, as Keras'
  ZeroPadding2D + MaxPooling2D (a zero wins over negative inputs: Keras' ResNetV2 pools the raw
  stem conv), computed as the -inf pool raised to at least 0 where a window reaches over the
  border, without a padded copy of the input (faster on CPU: docs/BENCHMARKS.md). Gradients are
  the padded pool's, except where a border window's maximum is exactly 0 (an input tied with
  the padding), whose share they split differently; a ReLU before the pool (Keras' v1 stem)
  passes no gradient to such inputs either way.
  """
  pads = symmetric_padding(window)
  out = nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)
  if not zero_pad:
    return out
  for axis in (1, 2):
    out = _at_least_zero(out, axis, *_border_counts(x.shape[axis], window, stride, pads[0][0]))
  return out


def avg_pool_ceil(x, stride: int):
  """2x2 average pooling with stride `stride` (NHWC); a window that the ceil mode makes hang over
  the bottom or right edge averages only the pixels it covers."""
  pads = ((0, (-x.shape[1]) % stride), (0, (-x.shape[2]) % stride))
  return nn.avg_pool(x, (2, 2), strides=(stride, stride), padding=pads, count_include_pad=False)


def squeeze_excite_width(channels: int, ratio: float, divisor: int = 8) -> int:
  """The reduced width of an SE gate: channels * ratio rounded to the nearest multiple of
  `divisor`, at least `divisor` (timm's rule: SE-ResNet-18's 64 channels / 16 -> 8)."""
  return max(divisor, int(channels * ratio + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
  """x * sigmoid(expand(relu(reduce(mean over space of x)))): 'reduce' and 'expand' are 1x1
  convs with biases (the injected `conv`), of widths `squeeze_excite_width` and x's channels."""
  conv: Any
  ratio: float

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    s = self.conv(squeeze_excite_width(channels, self.ratio), (1, 1), padding='VALID',
                  use_bias=True, name='reduce')(s)
    s = self.conv(channels, (1, 1), padding='VALID', use_bias=True, name='expand')(nn.relu(s))
    return x * nn.sigmoid(s)


def drop_path(x, rate, key):
  """Per example of the batch, the whole of `x` (a residual branch) is zeroed with probability
  `rate` and otherwise scaled by 1 / (1 - rate), so that its expectation is `x` (timm's
  DropPath). `rate` may be a traced scalar; at rate 0 this is exactly `x`."""
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  kept = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * jnp.where(kept, 1.0 / keep, 0.0).astype(x.dtype)


class BatchNorm(nn.Module):
  """Batch normalisation over the global batch, a pmap axis, or groups of examples.

  Attributes:
    use_running_average: eval mode (normalise with the running statistics, update nothing).
    momentum: running statistic decay (flax convention; torch's momentum 0.1 is 0.9 here).
    epsilon: added to the variance.
    axis_name: under `pmap`, the device axis to average statistics over.
    group_size: when set, statistics are computed per group of this many consecutive examples
      of the batch (ghost BN); the running statistics average the groups' statistics.
    scale_init: initialiser of the scale (zeros for a zero-initialised residual branch).
    one_pass: the batch variance as E[x^2] - E[x]^2 from one read of x (flax's
      `use_fast_variance`) instead of E[(x - E[x])^2] after the mean; faster on CPU, slightly
      less exact for activations with a large mean.

  The output is computed as `x * a + b` with `a = scale / sqrt(var + epsilon)` and
  `b = bias - mean * a` per channel: one multiply-add per element.
  """
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  group_size: Optional[int] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones
  one_pass: bool = False

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (features,), self.param_dtype)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))

    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      x32 = x.astype(jnp.float32)
      if self.group_size:
        n = x32.shape[0]
        if n % self.group_size:
          raise ValueError(f'BatchNorm group_size={self.group_size} does not divide the batch of '
                           f'{n} examples on this device; choose a divisor of the per-device batch.')
        grouped = x32.reshape((n // self.group_size, self.group_size) + x32.shape[1:])
        axes = tuple(range(1, grouped.ndim - 1))
        mean = grouped.mean(axis=axes, keepdims=True)
        var = jnp.square(grouped - mean).mean(axis=axes, keepdims=True)
        y = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x32.shape)
        batch_mean = mean.reshape((-1, features)).mean(axis=0)
        batch_var = var.reshape((-1, features)).mean(axis=0)
        if self.axis_name is not None:
          # normalisation used the local groups; the running statistics (replicated state)
          # average every group of every device, as one device holding the whole batch would
          batch_mean = jax.lax.pmean(batch_mean, self.axis_name)
          batch_var = jax.lax.pmean(batch_var, self.axis_name)
      else:
        axes = tuple(range(x32.ndim - 1))
        if self.one_pass:
          moments = jnp.stack([x32.mean(axis=axes), jnp.square(x32).mean(axis=axes)])
          if self.axis_name is not None:
            moments = jax.lax.pmean(moments, self.axis_name)
          batch_mean = moments[0]
          batch_var = jnp.maximum(moments[1] - jnp.square(batch_mean), 0.0)
        else:
          batch_mean = x32.mean(axis=axes)
          if self.axis_name is not None:
            batch_mean = jax.lax.pmean(batch_mean, self.axis_name)
          batch_var = jnp.square(x32 - batch_mean).mean(axis=axes)
          if self.axis_name is not None:
            batch_var = jax.lax.pmean(batch_var, self.axis_name)
        mean, var = batch_mean, batch_var
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * batch_mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * batch_var
      if self.group_size:
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)

    a = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
    b = bias.astype(jnp.float32) - mean * a
    return (x.astype(jnp.float32) * a + b).astype(self.dtype)
