"""Model statistics computed without materialising weights: variable counts, MACs, stage table.

* `count_variables`: trainable parameters and BatchNorm statistics, from `jax.eval_shape` of
  `model.init` (abstract shapes only, so even ResNet-1202 answers in seconds).
* `count_macs`: multiply-accumulates per image of one eval-mode forward pass, counted on the
  jaxpr of `model.apply` traced on abstract inputs: every `conv_general_dilated` and
  `dot_general`, including those inside sub-jaxprs (pjit, custom_jvp/vjp, cond, scan...).
* `stage_table`: per part of the network ('stem', 'stage1'...'stageN', 'head' or 'pooling') its
  output shape, parameters and MACs; the rows sum exactly to the whole-model counts.
* `summarize`: all of the above for a registered model name or a model config.
"""

import dataclasses
import math
import re
from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_flax.models.registry import create_model, default_image_size, model_fields

_STAGE_KEY = re.compile(r'^stage(\d+)_')


# ---------------------------------------------------------------------------------------------
# Variables.

def _input_spec(image_size: int, channels: int, batch: int = 1) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((batch, image_size, image_size, channels), jnp.float32)


def variable_shapes(model: nn.Module, image_size: int, channels: int = 3):
  """The abstract variables (`ShapeDtypeStruct` leaves) of `model` for this input size."""
  def init(x):
    return model.init(jax.random.PRNGKey(0), x, train=False)
  return jax.eval_shape(init, _input_spec(image_size, channels))


def _abstract(variables):
  """Variables (concrete or abstract) as a tree of `ShapeDtypeStruct`."""
  return jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), variables)


def _num_elements(tree) -> int:
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def count_variables(model: nn.Module, image_size: int, channels: int = 3) -> dict[str, int]:
  """{'params': trainable parameters, 'batch_stats': BatchNorm running statistics}."""
  shapes = variable_shapes(model, image_size, channels)
  return {'params': _num_elements(shapes.get('params', {})),
          'batch_stats': _num_elements(shapes.get('batch_stats', {}))}


# ---------------------------------------------------------------------------------------------
# MACs from a jaxpr.

def _as_jaxpr(value):
  """The open jaxpr of a Jaxpr or ClosedJaxpr param value, else None (duck-typed)."""
  if hasattr(value, 'eqns') and hasattr(value, 'invars'):
    return value
  inner = getattr(value, 'jaxpr', None)
  if inner is not None and hasattr(inner, 'eqns') and hasattr(inner, 'invars'):
    return inner
  return None


def _conv_macs(eqn) -> int:
  out_shape = eqn.outvars[0].aval.shape
  rhs_shape = eqn.invars[1].aval.shape
  dn = eqn.params['dimension_numbers']
  rhs_spec = dn.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
  kernel_spatial = math.prod(rhs_shape[d] for d in rhs_spec[2:])
  in_per_group = rhs_shape[rhs_spec[1]]  # input channels / feature_group_count
  return math.prod(out_shape) * kernel_spatial * in_per_group


def _dot_macs(eqn) -> int:
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  lhs_shape = eqn.invars[0].aval.shape
  contract = math.prod(lhs_shape[d] for d in lhs_contract)
  return math.prod(eqn.outvars[0].aval.shape) * contract


def jaxpr_macs(jaxpr) -> int:
  """MACs of the convolutions and dot products of a (closed) jaxpr, sub-jaxprs included.

  Sub-jaxprs are found generically among the equations' params. A `scan` body counts `length`
  times; of several alternative branches (`cond`) the costliest counts; a `while` body once.
  """
  jaxpr = _as_jaxpr(jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      total += _conv_macs(eqn)
      continue
    if name == 'dot_general':
      total += _dot_macs(eqn)
      continue
    for key, value in eqn.params.items():
      if isinstance(value, (tuple, list)):
        subs = [s for s in map(_as_jaxpr, value) if s is not None]
        if subs:
          counts = [jaxpr_macs(s) for s in subs]
          total += max(counts) if key == 'branches' else sum(counts)
        continue
      sub = _as_jaxpr(value)
      if sub is not None:
        count = jaxpr_macs(sub)
        if name == 'scan':
          count *= int(eqn.params.get('length', 1))
        total += count
  return total


def count_macs(model: nn.Module, variables: Optional[Any] = None, image_size: int = 224,
               channels: int = 3) -> int:
  """MACs per image of one eval-mode forward pass (batch 1, nothing materialised).

  `variables` may be the variables, their abstract shapes, or None (then derived from `model`).
  """
  if variables is None:
    variables = variable_shapes(model, image_size, channels)
  variables = _abstract(variables)

  def forward(v, x):
    return model.apply(v, x, train=False)
  return jaxpr_macs(jax.make_jaxpr(forward)(variables, _input_spec(image_size, channels)))


# ---------------------------------------------------------------------------------------------
# Per-part table.

def _part_of(key: str, num_stages: int, include_top: bool) -> str:
  """The table row a top-level submodule (or param tree key) belongs to."""
  if key.startswith('stem_'):
    return 'stem'
  m = _STAGE_KEY.match(key)
  if m:
    return f'stage{int(m.group(1))}'
  if key == 'final_norm':
    return f'stage{num_stages}'
  if key == 'head' or key.startswith('head_hidden'):   # the classifier and its MLP layers
    return 'head' if include_top else 'pooling'
  raise ValueError(f'cannot attribute top-level module {key!r} to a part of the network')


def _module_key(module: nn.Module, x) -> tuple:
  fields = tuple((f.name, repr(getattr(module, f.name))) for f in dataclasses.fields(module)
                 if f.name not in ('parent', 'name'))
  return (type(module).__qualname__, fields, tuple(x.shape), str(x.dtype))


def _trace_parts(model: nn.Module, variables, image_size: int, channels: int):
  """One eval-mode trace of the whole model that also records its top-level submodule calls.

  Returns (MACs of the whole jaxpr, abstract output, abstract features, calls) where calls are
  (top-level module name, unbound standalone copy of the module, abstract input).
  """
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == '__call__' and len(module.path) == 1 and args:
      x = args[0]
      calls.append((module.name, module.clone(parent=None),
                    jax.ShapeDtypeStruct(x.shape, x.dtype)))
    return next_fun(*args, **kwargs)

  def forward(v, x):
    with nn.intercept_methods(interceptor):
      return model.apply(v, x, train=False, return_features=True)
  jaxpr, (output, features) = jax.make_jaxpr(forward, return_shape=True)(
      variables, _input_spec(image_size, channels))
  return jaxpr_macs(jaxpr), output, features, calls


def _stage_table(model: nn.Module, variables, image_size: int, channels: int):
  """(rows, whole-model MACs of the same trace); see `stage_table`."""
  total_macs, output, features, calls = _trace_parts(model, variables, image_size, channels)
  num_stages = len(model.stage_sizes)
  names = ['stem'] + [f'stage{i + 1}' for i in range(num_stages)]
  names.append('head' if model.include_top else 'pooling')
  rows = {n: {'name': n, 'output_shape': None, 'params': 0, 'macs': 0} for n in names}
  for n in names[:-1]:
    rows[n]['output_shape'] = tuple(features[n].shape[1:])
  rows[names[-1]]['output_shape'] = tuple(output.shape[1:])

  for key, tree in variables.get('params', {}).items():
    rows[_part_of(key, num_stages, model.include_top)]['params'] += _num_elements(tree)

  cache: dict[tuple, int] = {}  # identical units on identical inputs are traced once
  for name, module, x in calls:
    key = _module_key(module, x)
    if key not in cache:
      sub = {col: tree[name] for col, tree in variables.items() if name in tree}
      cache[key] = jaxpr_macs(jax.make_jaxpr(lambda v, x_, m=module: m.apply(v, x_))(sub, x))
    rows[_part_of(name, num_stages, model.include_top)]['macs'] += cache[key]
  return [rows[n] for n in names], total_macs


def stage_table(model: nn.Module, image_size: int, channels: int = 3,
                variables: Optional[Any] = None) -> list[dict[str, Any]]:
  """One row per part: {'name', 'output_shape' (no batch dim), 'params', 'macs'}.

  Parts are 'stem', 'stage1'...'stageN' (a v2 network's final BN-ReLU counts with the last
  stage) and 'head' ('pooling' without the top). The MACs of a part are those of its top-level
  submodules, each traced on its own on the abstract input it receives inside the model; the
  network's other operations (pooling, means) do no multiply-accumulates. `variables` (or their
  shapes, of the unrolled model) saves re-deriving them. Raises if the rows do not add up to the
  whole model. A model with scanned stages is tabled unit by unit (the same network unrolled:
  the same parameters and MACs).
  """
  model = model.clone(scan_min_units=0, eval_loop=False)   # every unit called as a module
  if variables is None:
    variables = variable_shapes(model, image_size, channels)
  variables = _abstract(variables)
  rows, total_macs = _stage_table(model, variables, image_size, channels)
  _check_totals(rows, _num_elements(variables.get('params', {})), total_macs)
  return rows


def _check_totals(rows, params: int, macs: int):
  for field, total in (('params', params), ('macs', macs)):
    parts = sum(row[field] for row in rows)
    if parts != total:
      raise AssertionError(f'stage table {field} add up to {parts}, not the model total {total}')


# ---------------------------------------------------------------------------------------------
# Everything at once.

def summarize(name_or_cfg: Union[str, Mapping[str, Any]],
              image_size: Optional[int] = None, channels: int = 3) -> dict[str, Any]:
  """{'name', 'image_size', 'params', 'batch_stats', 'macs', 'stages'} of a model.

  `name_or_cfg` is a registered name or a model config mapping. Raises if the stage table does
  not add up to the whole-model counts.
  """
  cfg = model_fields(name_or_cfg) if isinstance(name_or_cfg, str) else dict(name_or_cfg)
  model = create_model(cfg).clone(scan_min_units=0, eval_loop=False)   # the table names every unit
  image_size = int(image_size or default_image_size(cfg))
  variables = _abstract(variable_shapes(model, image_size, channels))
  stages, macs = _stage_table(model, variables, image_size, channels)
  params = _num_elements(variables.get('params', {}))
  _check_totals(stages, params, macs)
  return {'name': cfg.get('name') or '', 'image_size': image_size, 'params': params,
          'batch_stats': _num_elements(variables.get('batch_stats', {})), 'macs': macs,
          'stages': stages}
