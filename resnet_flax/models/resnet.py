"""The one `ResNet` module: a stem, stages of residual units, an optional head.

Everything that varies between the ImageNet, CIFAR, pre-activation, plain, ResNeXt and Wide
variants is a field; the unit type (`BasicBlock` / `BottleneckBlock`) and the conv and norm
layers are injected, so a depth or version sweep never needs a new class.

Stems: 'imagenet' is a 7x7 stride-2 conv then 3x3 stride-2 max pool (BN-ReLU between them in
v1/v1.5; in v2 the first unit pre-activates, as Keras' ResNetV2 and BiT); 'cifar' is a 3x3
stride-1 conv (followed by BN-ReLU in v1/v1.5). v2 networks end with BN-ReLU before pooling.

`scan_min_units` runs each stage's identical units (all but the first, and in Keras' V2 all but
the striding last) as one `nn.scan` over stacked parameters (`scan.py`), so compile time does not
grow with depth; `remat` recomputes each unit's activations in the backward pass (memory for
compute).

`flavour='keras'` reproduces Keras applications' ResNet50...152 (v1) and ResNet50V2...152V2 (v2):
conv biases (see `blocks`), a stem conv bias, a zero-padded max pool, and in v2 every stage's
downsampling moved to the last unit of the stage before (its 3x3 conv strides, its shortcut is
the subsampled identity), so the last stage does not stride at all.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnet_flax.models import scan
from resnet_flax.models.layers import BatchNorm, max_pool, symmetric_padding

ModuleDef = Any
POOLINGS = (None, 'avg', 'max')


class ResNet(nn.Module):
  """A residual (or plain) network.

  Call with `train=True` to use batch statistics and update `batch_stats` (pass
  `mutable=['batch_stats']`), `train=False` to use the running statistics. With
  `return_features=True` the call returns `(output, features)` where `features` maps 'stem',
  'stage1'...'stageN' and (when the network pools: with the top, or pooling 'avg'/'max')
  'pre_logits' to their activations.
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = 'imagenet'
  version: str = 'v1.5'
  shortcut: str = 'B'
  residual: bool = True
  groups: int = 1
  width_per_group: int = 64
  num_classes: int = 1000
  include_top: bool = True
  pooling: Optional[str] = None
  head_hidden: Sequence[int] = ()   # MLP head: Dense(w) + ReLU per width, then the classifier
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None
  flavour: str = 'torch'
  scan_min_units: int = 0           # scan runs of at least this many identical units (0: never)
  remat: bool = False               # recompute each unit's activations in the backward pass

  @property
  def head_names(self) -> tuple[str, ...]:
    """The top-level modules of the head: 'head_hidden1'... (one per `head_hidden` width), then
    the classifier 'head' (the plain linear head keeps its name); () without the top."""
    if not self.include_top:
      return ()
    return tuple(f'head_hidden{i}' for i in range(1, len(self.head_hidden) + 1)) + ('head',)

  @nn.compact
  def __call__(self, x, train: bool = True, return_features: bool = False):
    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'))
    norm = functools.partial(
        BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
        group_size=self.bn_group_size or None, dtype=self.dtype, param_dtype=self.param_dtype)
    pre_act = self.version == 'v2'
    keras = self.flavour == 'keras'
    stem_bias = {'use_bias': True} if keras else {}
    features = {}

    x = jnp.asarray(x, self.dtype)
    if self.stem == 'imagenet':
      x = conv(self.stage_widths[0], (7, 7), strides=(2, 2), padding=symmetric_padding(7),
               name='stem_conv', **stem_bias)(x)
      if not pre_act:
        x = nn.relu(norm(name='stem_norm')(x))
      x = max_pool(x, zero_pad=keras)
    elif self.stem == 'cifar':
      x = conv(self.stage_widths[0], (3, 3), padding=symmetric_padding(3), name='stem_conv',
               **stem_bias)(x)
      if not pre_act:
        x = nn.relu(norm(name='stem_norm')(x))
    else:
      raise ValueError(f"stem={self.stem!r}; allowed: 'imagenet', 'cifar'")
    features['stem'] = x

    num_stages = len(self.stage_sizes)
    stride_at_end = keras and pre_act  # Keras' ResNetV2 strides in a stage's last unit
    block = nn.remat(self.block_cls) if self.remat else self.block_cls
    for i, (num_units, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      if stride_at_end:
        strides = [2 if (i < num_stages - 1 and j == num_units - 1) else 1
                   for j in range(num_units)]
      else:
        strides = [2 if (i > 0 and j == 0) else 1 for j in range(num_units)]
      for segment in scan.stage_segments(strides, self.scan_min_units):
        unit_cls = self.block_cls if segment.scanned else block
        unit = unit_cls(
            filters=width, strides=strides[segment.start], conv=conv, norm=norm,
            version=self.version, shortcut=self.shortcut, residual=self.residual,
            zero_init_residual=self.zero_init_residual, groups=self.groups,
            width_per_group=self.width_per_group, flavour=self.flavour,
            name=segment.name(i + 1))
        if segment.scanned:
          x = scan.run_scanned(unit, x, segment.stop - segment.start, remat=self.remat)
        else:
          x = unit(x)
      features[f'stage{i + 1}'] = x

    if pre_act:
      x = nn.relu(norm(name='final_norm')(x))

    if self.include_top:
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      features['pre_logits'] = x
      for name, width in zip(self.head_names[:-1], self.head_hidden):
        x = nn.relu(nn.Dense(int(width), dtype=jnp.float32, param_dtype=self.param_dtype,
                             name=name)(x))
      x = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype,
                   name='head')(x)
    elif self.pooling == 'avg':
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      features['pre_logits'] = x
    elif self.pooling == 'max':
      x = jnp.max(x.astype(jnp.float32), axis=(1, 2))
      features['pre_logits'] = x
    elif self.pooling is not None:
      raise ValueError(f"pooling={self.pooling!r}; allowed: None, 'avg', 'max'")
    return (x, features) if return_features else x
