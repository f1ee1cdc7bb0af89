"""Model names -> model config fields, and config fields -> a `ResNet` module.

A model config is a flat mapping (a `ConfigDict` in the training configs, a plain dict works too)
with the fields of `MODEL_DEFAULTS`. `NAMES` is only a table of overrides of those defaults: a
depth sweep sets `depth`, not a name. `create_model` checks every field and raises a `ConfigError`
that names the field and its allowed values. It is the one place where model fields are checked:
the modules it builds trust their arguments.
"""

import difflib
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from resnet_flax import fields
from resnet_flax.errors import ConfigError
from resnet_flax.models import conv, scan
from resnet_flax.models.blocks import (DOWNSAMPLES, FLAVOURS, SHORTCUTS, VERSIONS, BasicBlock,
                                       BottleneckBlock)
from resnet_flax.models.resnet import POOLINGS, STEM_POOLS, STEMS, ResNet

MODEL_DEFAULTS = {
    'name': '',              # a registry name; the fields below define the network (setting
                             # the name on the command line selects that name's fields)
    'family': 'imagenet',    # 'imagenet' (7x7 stem, 4 stages) or 'cifar' (3x3 stem, 3 stages)
    'depth': 50,
    'block': 'auto',         # 'auto', 'basic' or 'bottleneck'
    'stage_sizes': (),       # units per stage; () derives them from depth (when set, depth
                             # only picks the block type of block='auto')
    'version': 'v1.5',       # 'v1', 'v1.5', 'v2'
    'shortcut': 'B',         # 'A', 'B', 'C'
    'residual': True,        # False: the plain network of the same depth
    'width': 0,              # filters of the first stage, doubled per stage; 0 = 64 / 16 (cifar)
    'groups': 1,             # ResNeXt cardinality
    'width_per_group': 64,   # ResNeXt / Wide ResNet bottleneck width
    'num_classes': 1000,
    'include_top': True,
    'pooling': 'avg',        # the last feature map to a vector: 'avg', 'max' or 'none' (with
                             # the top: flattened, H*W*C features, Keras' Flatten(); without
                             # it: the feature map itself)
    'head_hidden': (),       # widths of Dense+ReLU layers before the classifier; (): linear head
    'zero_init_residual': False,
    'dtype': 'float32',      # compute dtype ('bfloat16' for mixed precision)
    'param_dtype': 'float32',
    'bn_momentum': 0.9,
    'bn_epsilon': 1e-5,
    'bn_one_pass': False,    # BatchNorm variance as E[x^2] - E[x]^2 (one read; faster on CPU)
    'bn_group_size': 0,      # 0: statistics over the global batch; k: over groups of k examples
    'flavour': 'torch',      # 'keras': Keras applications' conv biases, padding and V2 strides
    'scan_units': 'auto',    # 'on' | 'off' | 'auto': a stage's identical units as one nn.scan
                             # over stacked parameters ('auto': runs of >= scan.AUTO_MIN_UNITS,
                             # or every run when remat='unit')
    'eval_loop': 'auto',     # 'on' | 'off' | 'auto' (scan.eval_loop): in eval and prediction,
                             # a run of identical unrolled units as one loop
    'remat': 'none',         # 'none' | 'unit': recompute each unit's activations in backward
    'conv_impl': 'auto',     # 'xla' | 'fast' | 'auto' (fast on CPU; for Keras' flavour in
                             # training only): how convs are computed (conv.py); the same
                             # numbers to float32 round-off
    'stem': 'auto',          # 'auto' (the family's: 'imagenet' 7x7 / 'cifar' 3x3) or 'deep'
                             # (three 3x3 convs, ResNet-C/D); 'imagenet' and 'cifar' also allowed
    'stem_pool': 'max',      # strided stems: 'max' (3x3/2 max pool) or 'conv' (3x3/2 conv-BN-ReLU,
                             # ResNet-RS)
    'shortcut_downsample': 'conv',  # projections of strided units: 'conv' (1x1/2) or 'avg' (2x2/2
                             # average pool, then 1x1: ResNet-D)
    'se_ratio': 0.0,         # squeeze-and-excitation on every branch, reduction channels * ratio
                             # (1/16 SE-ResNet, 0.25 ResNet-RS); 0: none
    'drop_path_rate': 0.0,   # stochastic depth in training: the last unit's drop rate, linear
                             # from 0 at the first unit (timm's rule); 0: none
}

IMAGENET_STAGES = {
    'basic': {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)},
    'bottleneck': {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3),
                   200: (3, 24, 36, 3)},
}
FAMILIES = ('imagenet', 'cifar')
BLOCKS = ('auto', 'basic', 'bottleneck')
DTYPES = ('float32', 'bfloat16', 'float16')


def _imagenet(depth, version='v1.5', **kw):
  return dict(family='imagenet', depth=depth, version=version, **kw)


def _keras(depth, version):
  return _imagenet(depth, version, flavour='keras', bn_epsilon=1.001e-5)


def _cifar(depth, **kw):
  return dict(family='cifar', depth=depth, num_classes=10, **kw)


NAMES: dict[str, dict[str, Any]] = {}
for _d in (18, 34, 50, 101, 152, 200):
  NAMES[f'resnet{_d}'] = _imagenet(_d)
  NAMES[f'resnet{_d}_v1'] = _imagenet(_d, 'v1')
  NAMES[f'resnet{_d}_v2'] = _imagenet(_d, 'v2')
for _d in (50, 101, 152):  # Keras applications' ResNet50 ... ResNet152V2
  NAMES[f'keras_resnet{_d}'] = _keras(_d, 'v1')
  NAMES[f'keras_resnet{_d}v2'] = _keras(_d, 'v2')
for _d in (20, 32, 44, 56, 110, 1202):
  NAMES[f'resnet{_d}'] = _cifar(_d, version='v1', shortcut='A')
NAMES.update({
    'preact_resnet110': _cifar(110, version='v2', block='basic'),
    'preact_resnet164': _cifar(164, version='v2', block='bottleneck'),
    'preact_resnet1001': _cifar(1001, version='v2', block='bottleneck'),
    'plain18': _imagenet(18, 'v1', residual=False),
    'plain34': _imagenet(34, 'v1', residual=False),
    'plain20': _cifar(20, version='v1', residual=False),
    'plain56': _cifar(56, version='v1', residual=False),
    'resnext50_32x4d': _imagenet(50, groups=32, width_per_group=4),
    'resnext101_32x8d': _imagenet(101, groups=32, width_per_group=8),
    'resnext101_64x4d': _imagenet(101, groups=64, width_per_group=4),
    'wide_resnet50_2': _imagenet(50, width_per_group=128),
    'wide_resnet101_2': _imagenet(101, width_per_group=128),
})
# the later variants, with timm's definitions: SE-ResNet(eXt) (SE 1/16 of the block's output
# channels), ResNet-D (deep stem, average-pool shortcuts), ResNet-RS (ResNet-D with SE 0.25 and a
# strided conv instead of the stem's max pool)
SE_RATIO = 1 / 16
RESNET_D = dict(stem='deep', shortcut_downsample='avg')
for _d in (18, 34, 50, 101, 152):
  NAMES[f'seresnet{_d}'] = _imagenet(_d, se_ratio=SE_RATIO)
  NAMES[f'resnet{_d}d'] = _imagenet(_d, **RESNET_D)
NAMES.update({
    'seresnext50_32x4d': _imagenet(50, groups=32, width_per_group=4, se_ratio=SE_RATIO),
    'seresnext101_32x8d': _imagenet(101, groups=32, width_per_group=8, se_ratio=SE_RATIO),
    'resnetrs50': _imagenet(50, stem_pool='conv', se_ratio=0.25, **RESNET_D),
    'resnetrs101': _imagenet(101, stem_pool='conv', se_ratio=0.25, **RESNET_D),
})


def describe(cfg: Mapping[str, Any]) -> str:
  """The model's name, with the fields that differ from that name's: 'resnet20 with depth=56,
  version=v2' (a depth sweep overrides fields, not the name). '' when there is no name."""
  name = cfg.get('name', '')
  if name not in NAMES:
    return name
  named = model_fields(name)
  changed = [f'{k}={cfg[k]}' for k in ('family', 'depth', 'block', 'version', 'shortcut',
                                       'residual', 'width', 'groups', 'width_per_group',
                                       'flavour', 'stem', 'stem_pool', 'shortcut_downsample',
                                       'se_ratio', 'drop_path_rate') if k in cfg and k in named and
             cfg[k] != named[k]]
  if tuple(cfg.get('stage_sizes') or ()) != tuple(named.get('stage_sizes') or ()):
    changed.append(f'stage_sizes={tuple(cfg["stage_sizes"] or ())}')   # depth then picks
    # only the block type: the units are these
  return f'{name} with {", ".join(changed)}' if changed else name


def check_name(name: str) -> None:
  """ConfigError for a model name that is not registered, with the closest names."""
  if name in NAMES:
    return
  lowered = {n.lower(): n for n in NAMES}
  close = difflib.get_close_matches(str(name).lower(), list(lowered), n=3, cutoff=0.6)
  hint = f'did you mean {", ".join(lowered[c] for c in close)}? ' if close else ''
  raise ConfigError(f'unknown model name {name!r}; {hint}known: {", ".join(sorted(NAMES))}')


def model_fields(name: str) -> dict[str, Any]:
  """All model config fields of a registered name (defaults + the name's overrides)."""
  check_name(name)
  return {**MODEL_DEFAULTS, **NAMES[name], 'name': name}


def resolve_stages(cfg: Mapping[str, Any]) -> tuple[str, tuple[int, ...]]:
  """(block type, units per stage) from `family`, `depth`, `block` and `stage_sizes`."""
  family = fields.choice(cfg, 'model', 'family', FAMILIES)
  block = fields.choice(cfg, 'model', 'block', BLOCKS)
  depth = cfg['depth']
  sizes = cfg['stage_sizes'] or ()
  if not isinstance(sizes, (tuple, list)):
    raise ConfigError(f'model.stage_sizes={sizes!r} must be a tuple of unit counts per stage, '
                      f'e.g. (3, 4, 6, 3), or () to take them from model.depth')
  stage_sizes = tuple(fields.integer(n, 'model.stage_sizes') for n in sizes)
  num_stages = 4 if family == 'imagenet' else 3
  if stage_sizes:
    if len(stage_sizes) != num_stages or min(stage_sizes) < 1:
      raise ConfigError(f'model.stage_sizes={stage_sizes} must list {num_stages} positive unit '
                        f'counts for the {family} family.')
    if block == 'auto':
      block = 'bottleneck' if depth >= 50 and family == 'imagenet' else 'basic'
    return block, stage_sizes
  if family == 'imagenet':
    if block == 'auto':
      if not any(depth in t for t in IMAGENET_STAGES.values()):
        raise ConfigError(f'model.depth={depth} is not an ImageNet ResNet depth; allowed: 18, '
                          '34 (basic), 50, 101, 152, 200 (bottleneck), or set '
                          'model.stage_sizes.')
      block = 'basic' if depth in IMAGENET_STAGES['basic'] else 'bottleneck'
    table = IMAGENET_STAGES[block]
    if depth not in table:
      raise ConfigError(f'model.depth={depth} is not an ImageNet ResNet depth with {block} '
                        f'blocks; allowed: {", ".join(map(str, table))} (or set '
                        f'model.stage_sizes).')
    return block, table[depth]
  per_unit = {'basic': 6, 'bottleneck': 9}
  if block == 'auto':
    block = next((b for b in ('basic', 'bottleneck') if depth > 2 and
                  (depth - 2) % per_unit[b] == 0), None)
    if block is None:
      raise ConfigError(f'model.depth={depth} is not a CIFAR ResNet depth: allowed are 6n+2 '
                        '(basic: 20, 32, 44, 56, 110, 1202) or 9n+2 (bottleneck: 164, 1001).')
  if depth <= 2 or (depth - 2) % per_unit[block]:
    raise ConfigError(f'model.depth={depth} does not fit CIFAR {block} blocks: allowed are '
                      f'{per_unit[block]}n+2 depths.')
  n = (depth - 2) // per_unit[block]
  return block, (n, n, n)


def _check_variants(cfg: Mapping[str, Any]) -> str:
  """Checks the fields of the later variants (stem, SE, ResNet-D, stochastic depth); returns
  the stem."""
  stem = fields.choice(cfg, 'model', 'stem', ('auto',) + STEMS)
  stem = cfg['family'] if stem == 'auto' else stem
  if fields.choice(cfg, 'model', 'stem_pool', STEM_POOLS) != 'max' and stem == 'cifar':
    raise ConfigError(f"model.stem_pool={cfg['stem_pool']!r} needs a strided stem ('imagenet' "
                      "or 'deep'); the 'cifar' stem has no pool.")
  downsample = fields.choice(cfg, 'model', 'shortcut_downsample', DOWNSAMPLES)
  if downsample != 'conv' and cfg['shortcut'] == 'A':
    raise ConfigError(f'model.shortcut_downsample={downsample!r} changes projection shortcuts; '
                      "shortcut 'A' has none (use 'B' or 'C').")
  fields.number(cfg, 'model', 'se_ratio', low=0.0, high=1.0)
  rate = fields.number(cfg, 'model', 'drop_path_rate', low=0.0, high=1.0, high_open=True)
  if rate > 0 and not cfg['residual']:
    raise ConfigError(f'model.drop_path_rate={rate} drops residual branches; the plain network '
                      '(model.residual=False) has none.')
  return stem


def create_model(cfg: Mapping[str, Any], *, bn_axis_name: Optional[str] = None) -> ResNet:
  """The `ResNet` module described by a model config (see `MODEL_DEFAULTS`).

  `bn_axis_name` is set by the pmap wrapper so that BatchNorm averages over devices.
  """
  unknown = sorted(set(cfg) - set(MODEL_DEFAULTS))
  if unknown:
    raise ConfigError(f'unknown model field(s) {", ".join(unknown)}; known: '
                      f'{", ".join(sorted(MODEL_DEFAULTS))}')
  cfg = {**MODEL_DEFAULTS, **dict(cfg)}
  if cfg['name']:
    check_name(cfg['name'])
  block, stage_sizes = resolve_stages(cfg)
  fields.choice(cfg, 'model', 'version', VERSIONS)
  fields.choice(cfg, 'model', 'shortcut', SHORTCUTS)
  fields.choice(cfg, 'model', 'flavour', FLAVOURS)
  fields.choice(cfg, 'model', 'scan_units', scan.SCAN_CHOICES)
  fields.choice(cfg, 'model', 'eval_loop', scan.EVAL_LOOP_CHOICES)
  fields.choice(cfg, 'model', 'remat', scan.REMAT_CHOICES)
  fields.choice(cfg, 'model', 'conv_impl', conv.CONV_IMPLS)
  fields.choice(cfg, 'model', 'dtype', DTYPES)
  fields.choice(cfg, 'model', 'param_dtype', DTYPES)
  pooling = None if cfg['pooling'] in (None, 'none') else cfg['pooling']
  if pooling not in POOLINGS:
    raise ConfigError(f"model.pooling={cfg['pooling']!r}; allowed: 'avg', 'max', 'none'")
  head_hidden = tuple(cfg['head_hidden'] or ())
  if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in head_hidden):
    raise ConfigError(f"model.head_hidden={cfg['head_hidden']!r} must be a tuple of positive "
                      'layer widths, e.g. (1000,), or () for the linear classifier.')
  if head_hidden and not cfg['include_top']:
    raise ConfigError(f'model.head_hidden={head_hidden!r} needs model.include_top=True (it is '
                      'part of the classification head).')
  if block == 'basic' and (cfg['groups'] != 1 or cfg['width_per_group'] != 64):
    raise ConfigError('model.groups/width_per_group need bottleneck blocks (depth >= 50 or '
                      "model.block='bottleneck').")
  for field in ('num_classes', 'groups', 'width_per_group'):
    if int(cfg[field]) < 1:
      raise ConfigError(f'model.{field}={cfg[field]} must be a positive integer.')
  if int(cfg['bn_group_size']) < 0:
    raise ConfigError(f"model.bn_group_size={cfg['bn_group_size']} must be 0 (global) or "
                      'positive.')
  stem = _check_variants(cfg)
  num_stages = len(stage_sizes)
  width = _check_widths(cfg, block, stem)
  fields.number(cfg, 'model', 'bn_momentum', low=0.0, high=1.0, high_open=True)
  fields.number(cfg, 'model', 'bn_epsilon', low=0.0, low_open=True)
  return ResNet(
      stage_sizes=stage_sizes,
      block_cls=BasicBlock if block == 'basic' else BottleneckBlock,
      stage_widths=tuple(width * 2 ** i for i in range(num_stages)),
      stem=stem,
      version=cfg['version'],
      shortcut=cfg['shortcut'],
      residual=bool(cfg['residual']),
      groups=int(cfg['groups']),
      width_per_group=int(cfg['width_per_group']),
      num_classes=int(cfg['num_classes']),
      include_top=bool(cfg['include_top']),
      pooling=pooling,
      head_hidden=head_hidden,
      zero_init_residual=bool(cfg['zero_init_residual']),
      dtype=jnp.dtype(cfg['dtype']),
      param_dtype=jnp.dtype(cfg['param_dtype']),
      bn_momentum=float(cfg['bn_momentum']),
      bn_epsilon=float(cfg['bn_epsilon']),
      bn_axis_name=bn_axis_name,
      bn_group_size=int(cfg['bn_group_size']) or None,
      bn_one_pass=bool(cfg['bn_one_pass']),
      flavour=cfg['flavour'],
      scan_min_units=scan.min_units(cfg['scan_units'], cfg['remat'] == 'unit'),
      eval_loop=scan.eval_loop(cfg['eval_loop'], block),
      remat=cfg['remat'] == 'unit',
      conv_impl=conv.resolve(cfg['conv_impl'], flavour=cfg['flavour']),
      stem_pool=cfg['stem_pool'],
      shortcut_downsample=cfg['shortcut_downsample'],
      se_ratio=float(cfg['se_ratio']),
      drop_path_rate=float(cfg['drop_path_rate']),
  )


def _check_widths(cfg: Mapping[str, Any], block: str, stem: str) -> int:
  """The first stage's width (`model.width`, 0: the family's), checked to give every layer at
  least one channel; ConfigError otherwise."""
  width = fields.integer(cfg['width'], 'model.width')
  if width < 0:
    raise ConfigError(f'model.width={width} must be 0 (the family\'s: 64, or 16 for cifar) or '
                      'positive.')
  width = width or (64 if cfg['family'] == 'imagenet' else 16)
  inner = int(width * (int(cfg['width_per_group']) / 64.0)) * int(cfg['groups'])
  if block == 'bottleneck' and inner < 1:
    raise ConfigError(f"model.width={width} with width_per_group={cfg['width_per_group']} gives "
                      f'bottleneck units of {inner} channels (width * width_per_group / 64 * '
                      f'groups); raise one of them')
  if stem == 'deep' and width < 2:
    raise ConfigError(f"model.width={width}: the 'deep' stem's first convs have width / 2 "
                      'channels; use a width of at least 2')
  return width


def abstract_variables(cfg: Mapping[str, Any], image_size: Optional[int] = None,
                       channels: int = 3) -> dict:
  """The model's variables as shapes (`jax.ShapeDtypeStruct` leaves; nothing is computed), for
  names, shapes and the parameter layout (scanned stages stacked)."""
  model = create_model(cfg)
  size = image_size or default_image_size(cfg)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                        jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32))


def init_variables(model, example: jax.Array, key: Optional[jax.Array] = None) -> dict:
  """`model.init(key, example, train=False)` (key: `PRNGKey(0)` when None) as one compiled
  program. Run op by op, each small op of a network compiles on its own: seconds of every
  run's start-up (docs/BENCHMARKS.md, start-up)."""
  key = jax.random.PRNGKey(0) if key is None else key
  return jax.jit(lambda k, x: model.init(k, x, train=False))(key, example)


def unrolled(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """The same model with every unit its own module (no scan): the layout of per-unit names."""
  return {**MODEL_DEFAULTS, **dict(cfg), 'scan_units': 'off'}


def default_image_size(cfg: Mapping[str, Any]) -> int:
  """224 for the ImageNet family, 32 for the CIFAR family."""
  return 224 if cfg.get('family', 'imagenet') == 'imagenet' else 32
