"""Residual units: basic (two 3x3) and bottleneck (1x1-3x3-1x1), in three versions.

* `v1`   He et al. 2015: post-activation; a bottleneck strides in its first 1x1 conv.
* `v1.5` as v1, but a bottleneck strides in its 3x3 conv (torchvision, the flax example).
* `v2`   He et al. 2016, "Identity Mappings": pre-activation (BN-ReLU before each conv), nothing
         after the addition; a projection shortcut reads the pre-activated input.

Shortcuts follow the 2015 paper: 'A' identity, subsampled by the stride and zero-padded in
channels where the shape changes (no parameters); 'B' a 1x1 projection only where the shape
changes; 'C' a projection in every unit. A unit whose shape does not change under 'A' or 'B' has
no projection. With `residual=False` the unit is the plain network's: no shortcut, no addition.

`zero_init_residual` zeroes the last layer of the residual branch (the last BN scale in v1/v1.5,
the last conv kernel in v2, where no BN follows it), so the unit starts as ReLU(x) (v1) or as the
identity (v2).

`flavour='keras'` gives Keras applications' units (ResNet50 ... ResNet152V2): a conv bias on every
conv in v1/v1.5, and in v2 on the last branch conv and the shortcut conv (the convs no BN follows
directly); and shortcut 'B' projects only where the channel count changes, so a unit that only
strides (Keras' V2 strides in the last unit of a stage) takes the identity subsampled by the
stride (Keras' 1x1 max pool).

Later variants, each an attribute (off by default):

* `se_ratio` > 0: a squeeze-and-excitation gate (`layers.SqueezeExcite`, submodule `se`) on the
  residual branch, after its last layer and before the addition (SE-ResNet, ResNet-RS; timm's
  placement).
* `shortcut_downsample='avg'`: a projection shortcut of a strided unit average-pools 2x2 with the
  stride first and then projects with a stride-1 1x1 conv (ResNet-D, "Bag of Tricks").
* stochastic depth: with `drop_path=True` (training with a drop-path rate) the branch is dropped
  per example with the rate given to `__call__` (`layers.drop_path`; the randomness comes from
  the 'drop_path' RNG stream). The rate is a call argument, not an attribute, so that the units
  of a stage can share one module definition and receive their rates as inputs.

With `branch_only=True` a unit whose shortcut is the identity (`identity_joined`) returns its
residual branch, and `join(version, act, branch, x)` makes the unit's output from it (the
forward-only loops of `scan.run_looped` join outside their switch).

The units take `conv` and `norm` as injected partials: `conv(features, kernel_size, strides=...,
feature_group_count=..., name=...)` and `norm(name=..., scale_init=...)`.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from resnet_flax.models.layers import (SqueezeExcite, avg_pool_ceil, drop_path,
                                       symmetric_padding)

ModuleDef = Any
VERSIONS = ('v1', 'v1.5', 'v2')
SHORTCUTS = ('A', 'B', 'C')
FLAVOURS = ('torch', 'keras')
DOWNSAMPLES = ('conv', 'avg')


def _needs_projection(shortcut: str, shape_changes: bool) -> bool:
  return shortcut == 'C' or (shortcut == 'B' and shape_changes)


def identity_joined(residual: bool, shortcut: str) -> bool:
  """Whether a unit whose shape does not change adds its input unchanged (no projection), so
  that its branch can be joined with the input outside it (`branch_only`, `join`)."""
  return residual and not _needs_projection(shortcut, shape_changes=False)


def join(version: str, act: Callable, branch, shortcut):
  """A residual unit's output from its branch and its shortcut: v1/v1.5 add, then activate;
  v2 (pre-activation) only adds."""
  y = branch + shortcut
  return y if version == 'v2' else act(y)


def zero_pad_shortcut(x, out_features: int, strides: int):
  """Option A: parameter-free identity, subsampled and zero-padded (at the end) in channels."""
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  extra = out_features - x.shape[-1]
  if extra < 0:
    raise ValueError(f'shortcut A cannot reduce channels ({x.shape[-1]} -> {out_features}); '
                     'use shortcut B or C.')
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return x


class ResidualUnit(nn.Module):
  """Common frame of a unit: the branch is defined by subclasses via `branch_layers`."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  version: str = 'v1.5'
  shortcut: str = 'B'
  residual: bool = True
  zero_init_residual: bool = False
  groups: int = 1
  width_per_group: int = 64
  act: Callable = nn.relu
  flavour: str = 'torch'
  se_ratio: float = 0.0
  shortcut_downsample: str = 'conv'
  drop_path: bool = False
  branch_only: bool = False    # return the residual branch before `join` (identity units only)
  expansion = 1

  def branch_layers(self):
    """[(features, kernel_size, strides, groups)] of the residual branch's convs."""
    raise NotImplementedError

  def _conv(self, spec, index, kernel_init=None, use_bias=False):
    features, k, s, g = spec
    kwargs = {} if kernel_init is None else {'kernel_init': kernel_init}
    if use_bias:
      kwargs['use_bias'] = True
    return self.conv(features, (k, k), strides=(s, s), padding=symmetric_padding(k),
                     feature_group_count=g, name=f'conv{index}', **kwargs)

  def _projection(self, x, out_features: int, bias: dict):
    """The 1x1 projection shortcut of `x` (a strided conv, or average pool then conv)."""
    strides = self.strides
    if self.shortcut_downsample == 'avg':
      if strides > 1:
        x = avg_pool_ceil(x, strides)
      strides = 1
    return self.conv(out_features, (1, 1), strides=(strides, strides),
                     padding=symmetric_padding(1), name='shortcut_conv', **bias)(x)

  def _branch_end(self, y, drop_rate):
    """The SE gate and stochastic depth at the end of the residual branch."""
    if self.se_ratio > 0:
      y = SqueezeExcite(self.conv, self.se_ratio, name='se')(y)
    if self.drop_path:
      y = drop_path(y, drop_rate, self.make_rng('drop_path'))
    return y

  @nn.compact
  def __call__(self, x, drop_rate=0.0):
    """The unit's output; `drop_rate` (a float or a scalar array) is the probability of dropping
    the residual branch of an example when `drop_path` is on (ignored otherwise)."""
    out_features = self.filters * self.expansion
    shape_changes = self.strides != 1 or x.shape[-1] != out_features
    keras = self.flavour == 'keras'
    # Keras: a stride-only change takes the subsampled identity, not a projection
    project = _needs_projection(self.shortcut, x.shape[-1] != out_features if keras
                                else shape_changes)
    if self.branch_only and (project or shape_changes):
      raise ValueError('branch_only: only a unit with an identity shortcut joins outside it')
    layers = self.branch_layers()
    last = len(layers)
    zero = nn.initializers.zeros
    bias = {'use_bias': True} if keras else {}

    if self.version == 'v2':
      pre = self.act(self.norm(name='norm1')(x))
      y = pre
      for i, spec in enumerate(layers, start=1):
        if i > 1:
          y = self.act(self.norm(name=f'norm{i}')(y))
        y = self._conv(spec, i, zero if (i == last and self.zero_init_residual) else None,
                       use_bias=keras and i == last)(y)
      y = self._branch_end(y, drop_rate)
      if not self.residual or self.branch_only:
        return y
      if project:
        sc = self._projection(pre, out_features, bias)
      elif shape_changes:
        sc = zero_pad_shortcut(x, out_features, self.strides)
      else:
        sc = x
      return join(self.version, self.act, y, sc)

    y = x
    for i, spec in enumerate(layers, start=1):
      y = self._conv(spec, i, use_bias=keras)(y)
      scale_init = zero if (i == last and self.zero_init_residual) else nn.initializers.ones
      y = self.norm(name=f'norm{i}', scale_init=scale_init)(y)
      if i < last:
        y = self.act(y)
    y = self._branch_end(y, drop_rate)
    if not self.residual:
      return self.act(y)
    if self.branch_only:
      return y
    if project:
      sc = self.norm(name='shortcut_norm')(self._projection(x, out_features, bias))
    elif shape_changes:
      sc = zero_pad_shortcut(x, out_features, self.strides)
    else:
      sc = x
    return join(self.version, self.act, y, sc)


class BasicBlock(ResidualUnit):
  """Two 3x3 convs; the first strides (ResNet-18/34 and the CIFAR ResNets)."""
  expansion = 1

  def branch_layers(self):
    if self.groups != 1 or self.width_per_group != 64:
      raise ValueError('basic blocks support only groups=1 and width_per_group=64 '
                       '(ResNeXt and Wide ResNet use bottleneck blocks).')
    return [(self.filters, 3, self.strides, 1), (self.filters, 3, 1, 1)]


class BottleneckBlock(ResidualUnit):
  """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4 (ResNet-50 and deeper)."""
  expansion = 4

  def branch_layers(self):
    width = int(self.filters * (self.width_per_group / 64.0)) * self.groups
    s1, s3 = (self.strides, 1) if self.version == 'v1' else (1, self.strides)
    return [(width, 1, s1, 1), (width, 3, s3, self.groups),
            (self.filters * self.expansion, 1, 1, 1)]
