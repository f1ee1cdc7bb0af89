"""The one `ResNet` module: a stem, stages of residual units, an optional head.

Everything that varies between the ImageNet, CIFAR, pre-activation, plain, ResNeXt and Wide
variants is a field; the unit type (`BasicBlock` / `BottleneckBlock`) and the conv and norm
layers are injected, so a depth or version sweep never needs a new class.

Stems: 'imagenet' is a 7x7 stride-2 conv then 3x3 stride-2 max pool (BN-ReLU between them in
v1/v1.5; in v2 the first unit pre-activates, as Keras' ResNetV2 and BiT); 'deep' replaces the 7x7
conv by three 3x3 convs of widths w/2, w/2, w (the first strides 2; BN-ReLU after the first two),
w the first stage's width: the ResNet-C/D stem of "Bag of Tricks" as timm's resnet*d; 'cifar' is
a 3x3 stride-1 conv (followed by BN-ReLU in v1/v1.5). `stem_pool='conv'` replaces the max pool of
a strided stem by a 3x3 stride-2 conv-BN-ReLU (ResNet-RS). v2 networks end with BN-ReLU before
pooling.

Stochastic depth (`drop_path_rate` > 0, training only): unit k of the K units (0-based, over all
stages) drops its residual branch with rate `drop_path_rate * k / (K - 1)` (timm's linear rule),
drawn from the 'drop_path' RNG stream (`apply(..., rngs={'drop_path': key})`); evaluation needs
no RNG and is the identity on the residual branch.

`scan_min_units` runs each stage's identical units (all but the first, and in Keras' V2 all but
the striding last) as one `nn.scan` over stacked parameters (`scan.py`), so compile time does not
grow with depth; `remat` recomputes each unit's activations in the backward pass (memory for
compute). `eval_loop` runs the same runs, where they are unrolled, as one loop in forward-only
passes (`train=False`): each iteration applies the next unit with its own parameters
(`scan.run_looped`), so the parameter layout and the numbers stay those of the unrolled pass.

`flavour='keras'` reproduces Keras applications' ResNet50...152 (v1) and ResNet50V2...152V2 (v2):
conv biases (see `blocks`), a stem conv bias, a zero-padded max pool, and in v2 every stage's
downsampling moved to the last unit of the stage before (its 3x3 conv strides, its shortcut is
the subsampled identity), so the last stage does not stride at all.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnet_flax.models import conv as conv_lib
from resnet_flax.models import scan
from resnet_flax.models.blocks import BottleneckBlock, identity_joined, join
from resnet_flax.models.layers import BatchNorm, max_pool, symmetric_padding

ModuleDef = Any
POOLINGS = (None, 'avg', 'max')
STEMS = ('imagenet', 'cifar', 'deep')
STEM_POOLS = ('max', 'conv')


def drop_path_rates(stage_sizes: Sequence[int], rate: float) -> list[float]:
  """Each unit's drop rate, in network order: linear from 0 (first unit) to `rate` (last)."""
  total = sum(stage_sizes)
  return [rate * k / (total - 1) if total > 1 else 0.0 for k in range(total)]


class ResNet(nn.Module):
  """A residual (or plain) network.

  Call with `train=True` to use batch statistics and update `batch_stats` (pass
  `mutable=['batch_stats']`), `train=False` to use the running statistics. With
  `return_features=True` the call returns `(output, features)` where `features` maps 'stem',
  'stage1'...'stageN' and (with the top, or without it when pooling 'avg'/'max') 'pre_logits' to
  their activations.
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
  pooling: Optional[str] = 'avg'    # 'avg' | 'max' | None: flattened with the top, else the map
  head_hidden: Sequence[int] = ()   # MLP head: Dense(w) + ReLU per width, then the classifier
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  bn_group_size: Optional[int] = None
  bn_one_pass: bool = False         # BatchNorm variance in one pass (layers.BatchNorm)
  flavour: str = 'torch'
  scan_min_units: int = 0           # scan runs of at least this many identical units (0: never)
  eval_loop: bool = False           # forward-only passes: runs of unrolled units as loops
  remat: bool = False               # recompute each unit's activations in the backward pass
  conv_impl: str = 'xla'            # 'xla' | 'fast' | 'fast-train' (conv.resolve)
  stem_pool: str = 'max'
  shortcut_downsample: str = 'conv'
  se_ratio: float = 0.0
  drop_path_rate: float = 0.0

  @property
  def block_kind(self) -> str:
    """'bottleneck' or 'basic': the unit type (the CPU compiler options depend on it)."""
    return 'bottleneck' if self.block_cls is BottleneckBlock else 'basic'

  @property
  def head_names(self) -> tuple[str, ...]:
    """The top-level modules of the head: 'head_hidden1'... (one per `head_hidden` width), then
    the classifier 'head' (the plain linear head keeps its name); () without the top."""
    if not self.include_top:
      return ()
    return tuple(f'head_hidden{i}' for i in range(1, len(self.head_hidden) + 1)) + ('head',)

  def _stem(self, x, conv, norm):
    """The stem: 'imagenet' (7x7), 'deep' (3x 3x3) or 'cifar' (3x3) convs, then the pool."""
    pre_act = self.version == 'v2'
    bias = {'use_bias': True} if self.flavour == 'keras' else {}
    width = self.stage_widths[0]
    if self.stem == 'deep':
      for k, (w, s) in enumerate(((width // 2, 2), (width // 2, 1)), start=1):
        x = conv(w, (3, 3), strides=(s, s), padding=symmetric_padding(3),
                 name=f'stem_conv{k}', **bias)(x)
        x = nn.relu(norm(name=f'stem_norm{k}')(x))
      names = ('stem_conv3', 'stem_norm3')
      x = conv(width, (3, 3), padding=symmetric_padding(3), name=names[0], **bias)(x)
    elif self.stem in ('imagenet', 'cifar'):
      k, s = (7, 2) if self.stem == 'imagenet' else (3, 1)
      names = ('stem_conv', 'stem_norm')
      x = conv(width, (k, k), strides=(s, s), padding=symmetric_padding(k), name=names[0],
               **bias)(x)
    else:
      raise ValueError(f'stem={self.stem!r}; allowed: {", ".join(STEMS)}')
    if not pre_act:
      x = nn.relu(norm(name=names[1])(x))
    if self.stem == 'cifar':
      return x
    if self.stem_pool == 'conv':
      x = conv(width, (3, 3), strides=(2, 2), padding=symmetric_padding(3),
               name='stem_pool_conv', **bias)(x)
      return nn.relu(norm(name='stem_pool_norm')(x))
    return max_pool(x, zero_pad=self.flavour == 'keras')

  @nn.compact
  def __call__(self, x, train: bool = True, return_features: bool = False):
    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        conv_general_dilated=conv_lib.conv_function(self.conv_impl, train),
        kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'))
    norm = functools.partial(
        BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
        group_size=self.bn_group_size or None, one_pass=self.bn_one_pass, dtype=self.dtype,
        param_dtype=self.param_dtype)
    pre_act = self.version == 'v2'
    keras = self.flavour == 'keras'
    features = {}

    x = self._stem(jnp.asarray(x, self.dtype), conv, norm)
    features['stem'] = x

    num_stages = len(self.stage_sizes)
    stochastic = train and self.drop_path_rate > 0
    rates = iter(drop_path_rates(self.stage_sizes, self.drop_path_rate))
    stride_at_end = keras and pre_act  # Keras' ResNetV2 strides in a stage's last unit
    block = nn.remat(self.block_cls) if self.remat else self.block_cls
    for i, (num_units, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      if stride_at_end:
        strides = [2 if (i < num_stages - 1 and j == num_units - 1) else 1
                   for j in range(num_units)]
      else:
        strides = [2 if (i > 0 and j == 0) else 1 for j in range(num_units)]
      unit_kwargs = dict(
          filters=width, conv=conv, norm=norm, version=self.version, shortcut=self.shortcut,
          residual=self.residual, zero_init_residual=self.zero_init_residual,
          groups=self.groups, width_per_group=self.width_per_group, flavour=self.flavour,
          se_ratio=self.se_ratio, shortcut_downsample=self.shortcut_downsample,
          drop_path=stochastic)
      layout = scan.stage_segments(strides, self.scan_min_units)
      looped = self.eval_loop and not train and not self.is_initializing()
      for segment in scan.stage_segments(strides, 2) if looped else layout:
        unit_rates = [next(rates) for _ in range(segment.start, segment.stop)]
        if looped and segment.scanned and segment not in layout:
          names = segment.unit_names(i + 1)
          missing = [n for n in names if n not in self.variables.get('params', {})]
          if missing:
            raise KeyError(f'eval_loop: no parameters for {", ".join(missing)}; the variables '
                           'are not in this model\'s layout (see models.scan.restack)')
          outside = identity_joined(self.residual, self.shortcut)
          unit = self.block_cls(strides=1, parent=None, branch_only=outside, **unit_kwargs)
          x = scan.run_looped(
              unit, x,
              [{c: self.variables[c][n] for c in self.variables if n in self.variables[c]}
               for n in names],
              functools.partial(join, unit.version, unit.act) if outside else None)
          continue
        unit_cls = self.block_cls if segment.scanned else block
        unit = unit_cls(strides=strides[segment.start], name=segment.name(i + 1), **unit_kwargs)
        if segment.scanned:
          x = scan.run_scanned(unit, x, unit_rates, remat=self.remat)
        else:
          x = unit(x, unit_rates[0])
      features[f'stage{i + 1}'] = x

    if pre_act:
      x = nn.relu(norm(name='final_norm')(x))

    if self.pooling == 'avg':
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    elif self.pooling == 'max':
      x = jnp.max(x.astype(jnp.float32), axis=(1, 2))
    elif self.pooling is not None:
      raise ValueError(f"pooling={self.pooling!r}; allowed: None, 'avg', 'max'")
    elif self.include_top:
      x = x.astype(jnp.float32).reshape(x.shape[0], -1)     # Keras' Flatten: H * W * C features
    if self.pooling is not None or self.include_top:
      features['pre_logits'] = x
    if self.include_top:
      for name, width in zip(self.head_names[:-1], self.head_hidden):
        x = nn.relu(nn.Dense(int(width), dtype=jnp.float32, param_dtype=self.param_dtype,
                             name=name)(x))
      x = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype,
                   name='head')(x)
    return (x, features) if return_features else x
