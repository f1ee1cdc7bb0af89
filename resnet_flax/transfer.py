"""Freezing for transfer learning (`config.freeze`): the one owner of what "frozen" means.

`FreezeSpec.create(freeze, param_shapes, stats_shapes, head_modules)` resolves the pattern
('backbone', or a regex over '/'-joined parameter paths such as 'stem|stage1') once, on abstract
shapes, and holds everything the rest of the system needs:

* `mask`: a pytree of bools like the params (True = frozen), and the counts for the log;
* `optimizer(tx)`: `tx` for the trainable leaves, a zero update (no state, no decay) for the
  frozen ones;
* `stop_gradient(params)`: no gradient flows into frozen leaves, so no backward pass runs below
  the lowest trainable layer;
* `keep_frozen(new, old)`: the frozen leaves themselves after the update, bit for bit
  (`w + 0` would turn -0.0 into +0.0);
* `norm_paths` / `norms_in_inference_mode()`: the BatchNorm layers whose parameters are all
  frozen run in inference mode inside the training forward pass (normalise with, and keep,
  their running statistics, as Keras' `trainable=False`); `stats_mask(batch_stats)` marks their
  statistics (the EMA keeps them as they are).
"""

import contextlib
import dataclasses
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import optax

from resnet_flax import tree
from resnet_flax.models import scan
from resnet_flax.errors import ConfigError

FREEZE_BACKBONE = 'backbone'


def frozen_mask(params: Any, freeze: str, head_modules=('head',)) -> Any:
  """A pytree of bools like `params`: True = frozen (never updated).

  `freeze`: '' (nothing), 'backbone' (every parameter outside the top-level `head_modules`), or
  a regular expression searched (`re.search`) in each '/'-joined parameter path, e.g.
  'stem|stage1'. A pattern that freezes nothing or everything is a ConfigError naming it.
  """
  paths = tree.leaf_paths(params)
  if freeze == '':
    return jax.tree.map(lambda _: False, paths)
  if freeze == FREEZE_BACKBONE:
    heads = set(head_modules)
    mask = jax.tree.map(lambda p: p.split('/')[0] not in heads, paths)
    what = (f"freeze='backbone' (everything but {', '.join(sorted(heads))})" if heads else
            "freeze='backbone' on a model without a head (model.include_top=False)")
  else:
    try:
      regex = re.compile(freeze)
    except re.error as e:
      raise ConfigError(f'config.freeze={freeze!r} is not a valid regular expression ({e}); '
                        "use '', 'backbone' or a regex over parameter paths such as "
                        "'stem|stage1'") from None
    mask = jax.tree.map(lambda p: _matches(regex, p, freeze), paths)
    what = f'freeze={freeze!r}'
  flags = jax.tree.leaves(mask)
  if not any(flags):
    names = jax.tree.leaves(paths)
    example = ', '.join(dict.fromkeys(names[i * (len(names) - 1) // 3] for i in range(4)))
    scanned = ('; the identical units of a stage are scanned and share one array per layer '
               '(stageS_unitsAtoB): --config.model.scan_units=off names every unit'
               if any('_units' in n for n in names) and '_unit' in freeze else '')
    raise ConfigError(f'config.{what} matches no parameter; parameter paths look like '
                      f'{example}{scanned}')
  if all(flags):
    raise ConfigError(f'config.{what} freezes every parameter, so nothing would train; leave '
                      'some parameters out of the pattern')
  return mask


def _matches(regex, path: str, freeze: str) -> bool:
  """Whether `regex` freezes the parameter at `path`. A scanned run of units (one array per
  layer for all its units) is matched by its own name or by every unit's unrolled name; a
  pattern that names some of its units only is a ConfigError (the run trains as one array)."""
  if regex.search(path) is not None:
    return True
  module, _, rest = path.partition('/')
  units = scan.unit_names(module)
  hits = [regex.search(f'{unit}/{rest}') is not None for unit in units]
  if hits and all(hits):
    return True
  if any(hits):
    raise ConfigError(
        f'config.freeze={freeze!r} names {sum(hits)} of the {len(units)} units of {module}, a '
        f'scanned run whose units share one array per layer: freeze all of them or none, or '
        f'set --config.model.scan_units=off to freeze units one by one')
  return False


def frozen_norm_paths(frozen: Any, batch_stats: Any) -> frozenset:
  """The '/'-joined paths of the layers holding `batch_stats` whose parameters are all frozen
  (a layer only partly frozen keeps training mode)."""
  layers = {p.rsplit('/', 1)[0] for p in jax.tree.leaves(tree.leaf_paths(batch_stats))}
  state: dict[str, bool] = {}
  for path, is_frozen in zip(jax.tree.leaves(tree.leaf_paths(frozen)), jax.tree.leaves(frozen)):
    layer = path.rsplit('/', 1)[0]
    if layer in layers:
      state[layer] = state.get(layer, True) and bool(is_frozen)
  return frozenset(layer for layer, all_frozen in state.items() if all_frozen)


def norms_in_inference_mode(norm_paths) -> contextlib.AbstractContextManager:
  """Within it, the norm layers at `norm_paths` ('/'-joined module paths) of a model applied
  with `train=True` run as with `use_running_average=True`: they normalise with their stored
  statistics and write nothing back. Other layers are untouched."""
  norm_paths = frozenset(norm_paths)
  if not norm_paths:
    return contextlib.nullcontext()

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or '/'.join(module.path) not in norm_paths:
      return next_fun(*args, **kwargs)
    if not hasattr(module, 'use_running_average'):
      raise TypeError(f'{"/".join(module.path)} ({type(module).__name__}) holds batch_stats '
                      'but has no use_running_average attribute; it cannot be frozen')
    # the same layer in inference mode, applied to this layer's own variables
    frozen = module.clone(parent=None, use_running_average=True)
    return frozen.apply(dict(module.variables), *args, **kwargs)

  return nn.intercept_methods(interceptor)


def frozen_paths(mask: Any) -> set:
  """The '/'-joined paths of the frozen leaves of a `frozen_mask`."""
  return {p for p, f in zip(jax.tree.leaves(tree.leaf_paths(mask)), jax.tree.leaves(mask)) if f}


def freeze_optimizer(tx: optax.GradientTransformation,
                     frozen: Any) -> optax.GradientTransformation:
  """`tx` for the trainable leaves and a zero update (no state, no decay) for the frozen ones.

  `frozen` is a pytree of bools like the params (see `frozen_mask`); the labels are matched by
  path, so the optimizer accepts any container type of the same tree.
  """
  paths = frozen_paths(frozen)

  def labels(params):
    return jax.tree.map(lambda p: 'frozen' if p in paths else 'trainable',
                        tree.leaf_paths(params))

  return optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()}, labels)


@dataclasses.dataclass(frozen=True)
class FreezeSpec:
  """What `config.freeze` freezes in one model (see the module docstring)."""
  freeze: str
  mask: Any                       # pytree of bools like the params (True: frozen)
  norm_paths: frozenset           # norm layers kept in inference mode while training
  num_frozen: int                 # frozen parameter values
  num_params: int

  @classmethod
  def create(cls, freeze: str, param_shapes: Any, stats_shapes: Any = None,
             head_modules=('head',)) -> Optional['FreezeSpec']:
    """The spec of `freeze` over abstract (or concrete) params; None when nothing is frozen."""
    if not freeze:
      return None
    mask = frozen_mask(param_shapes, freeze, head_modules)
    frozen = sum(tree.num_elements(x) for x, f in zip(jax.tree.leaves(param_shapes),
                                                      jax.tree.leaves(mask)) if f)
    return cls(freeze, mask, frozen_norm_paths(mask, stats_shapes or {}), frozen,
               tree.num_elements(param_shapes))

  def describe(self) -> str:
    return (f'freeze={self.freeze!r}: {self.num_frozen:,} of {self.num_params:,} parameters '
            f'frozen; {len(self.norm_paths)} BatchNorm layers keep their running statistics')

  def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    return freeze_optimizer(tx, self.mask)

  def stop_gradient(self, params: Any) -> Any:
    return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, self.mask)

  def keep_frozen(self, new_params: Any, old_params: Any) -> Any:
    return jax.tree.map(lambda new, old, f: old if f else new, new_params, old_params, self.mask)

  def stats_mask(self, batch_stats: Any) -> Any:
    """A pytree of bools like `batch_stats`: True for the statistics of the frozen norms."""
    return jax.tree.map(lambda p: p.rsplit('/', 1)[0] in self.norm_paths,
                        tree.leaf_paths(batch_stats))

  def norms_in_inference_mode(self) -> contextlib.AbstractContextManager:
    return norms_in_inference_mode(self.norm_paths)

  def trainable_l2_mask(self, l2_mask: Any) -> Any:
    """A weight-decay mask with the frozen leaves left out (they are not decayed either)."""
    return jax.tree.map(lambda m, f: bool(m) and not f, l2_mask, self.mask)
