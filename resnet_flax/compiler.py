"""XLA compiler options per back end (`config.compiler_options`), passed to each `jax.jit`
compilation of the train, eval and predict steps.

* 'auto': on the CPU back end, XLA's YNNPACK library fusions
  (`xla_cpu_experimental_ynn_fusion_type`) chosen per kind of step (`STEPS`) and unit type
  (`BLOCKS`, the model's `block_kind`), the fastest measured (docs/BENCHMARKS.md): the train
  step fuses dots, element-wise ops and reductions in bottleneck networks, dots and reductions
  in networks of basic units (with `model.conv_impl='fast'` the 1x1 convs are dots); the eval
  and predict steps fuse element-wise ops and reductions in networks of basic units, reductions
  only in bottleneck networks (with the element-wise type XLA draws their large 1x1 convs into
  library fusions, slower than its own dots; the dot type slowed the forward passes at 224 px).
  Nothing on GPU and TPU.
  An option the user sets in `XLA_FLAGS` is left to the user's value, and a jaxlib that does
  not know an option compiles without it (a warning says so once).
* 'none': XLA's defaults everywhere.

'auto' leaves out the CPU fusions for images smaller than `MIN_IMAGE_SIZE` pixels a side
(`resolve`): on 8x8 digits (the quick start) they made the train step 1.14x slower, on 32 px
CIFAR images 0.69x (docs/BENCHMARKS.md).

The options change how XLA groups operations, not what is computed: results agree with the
defaults to float32 round-off (tests/test_compiler.py). `pmap` compilations take no options
(`jax.pmap` has no such argument); they run with XLA's defaults or `XLA_FLAGS`.
"""

import functools
import logging
import os
from typing import Mapping

import jax

CHOICES = ('auto', 'none')
DEFAULT = 'auto'
MIN_IMAGE_SIZE = 16

STEPS = ('train', 'eval')     # 'eval': the eval and predict steps (forward only)
BLOCKS = ('basic', 'bottleneck')
DEFAULT_BLOCK = 'basic'        # a step compiled without a model's unit type

_YNN = 'xla_cpu_experimental_ynn_fusion_type'
_DOT, _ELTWISE, _REDUCE = (f'LIBRARY_FUSION_TYPE_{t}' for t in ('DOT', 'ELTWISE', 'REDUCE'))
# (back end, step, unit type) -> the options of 'auto'; a key not listed compiles with XLA's
# defaults
PLATFORM_OPTIONS = {
    ('cpu', 'train', 'basic'): {_YNN: f'{_DOT},{_REDUCE}'},
    ('cpu', 'train', 'bottleneck'): {_YNN: f'{_DOT},{_ELTWISE},{_REDUCE}'},
    ('cpu', 'eval', 'basic'): {_YNN: f'{_ELTWISE},{_REDUCE}'},
    ('cpu', 'eval', 'bottleneck'): {_YNN: _REDUCE},
}


def user_flags() -> str:
  return os.environ.get('XLA_FLAGS', '')


@functools.lru_cache(maxsize=None)
def _accepted(platform: str, items: tuple) -> bool:
  """Whether this jaxlib compiles a tiny function with the options on `platform`."""
  try:
    device = jax.devices(platform)[0]
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(
        jax.device_put(jax.numpy.zeros(()), device)).compile()
    return True
  except Exception as e:  # noqa: BLE001 - any refusal means: compile without them
    logging.warning('XLA compiler options %s are not supported by this jaxlib (%s); compiling '
                    'with the defaults', sorted(dict(items)), str(e).splitlines()[0][:200])
    return False


def resolve(setting: str, image_shape) -> str:
  """The setting to compile a model for images of `image_shape` (H, W, C) with."""
  if setting == 'auto' and min(image_shape[:2]) < MIN_IMAGE_SIZE:
    return 'none'
  return setting


def options(setting: str, platform: str, step: str,
            block: str = DEFAULT_BLOCK) -> Mapping[str, str]:
  """The compiler options of `setting` ('auto' | 'none') for a back end ('cpu', 'gpu', ...),
  a kind of step (`STEPS`) and the network's unit type (`BLOCKS`)."""
  if setting not in CHOICES:
    raise ValueError(f'compiler_options={setting!r}: choose one of {CHOICES}')
  if step not in STEPS:
    raise ValueError(f'step={step!r}: choose one of {STEPS}')
  if block not in BLOCKS:
    raise ValueError(f'block={block!r}: choose one of {BLOCKS}')
  if setting == 'none':
    return {}
  flags = user_flags()
  chosen = {k: v for k, v in PLATFORM_OPTIONS.get((platform, step, block), {}).items()
            if k not in flags}
  if chosen and not _accepted(platform, tuple(sorted(chosen.items()))):
    return {}
  return chosen


def jit(fn, setting: str, platform: str, step: str, block: str = DEFAULT_BLOCK, **kwargs):
  """`jax.jit(fn, **kwargs)` with the compiler options of `setting` on `platform` for `step`
  of a network of `block` units."""
  chosen = options(setting, platform, step, block)
  return jax.jit(fn, compiler_options=dict(chosen), **kwargs) if chosen else jax.jit(fn, **kwargs)
