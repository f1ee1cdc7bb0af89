"""PyTorch ResNet state dicts (torchvision's and timm's layout) -> resnet_flax `params` and
`batch_stats`: reading the files, the key of each of our layers, the layout transposes and the
check that a state dict fits a model exactly.

timm's ResNets keep torchvision's names and add their own for the later variants:

  conv1, bn1                          -> stem_conv, stem_norm
  conv1.0 / .1 / .3 / .4 / .6, bn1    -> stem_conv1, stem_norm1, stem_conv2, stem_norm2,
                                         stem_conv3, stem_norm3 (the deep stem's Sequential)
  maxpool.0, maxpool.1                -> stem_pool_conv, stem_pool_norm (ResNet-RS)
  layerL.I.convK, layerL.I.bnK        -> stageL_unit{I+1}/convK, stageL_unit{I+1}/normK
  layerL.I.downsample.0, .1           -> stageL_unit{I+1}/shortcut_conv, shortcut_norm
  layerL.I.downsample.1, .2           -> the same with average-pool shortcuts (.0 is the pool)
  layerL.I.se.fc1, .fc2               -> stageL_unit{I+1}/se/reduce, se/expand
  fc                                  -> head
  BatchNorm weight, bias              -> params scale, bias
  BatchNorm running_mean, running_var -> batch_stats mean, var (num_batches_tracked is unused)
  conv weight (O, I/groups, kH, kW)   -> kernel (kH, kW, I/groups, O), grouped convs included
  fc weight (classes, features)       -> kernel (features, classes)

Every array of the state dict must fill a leaf of the model with the same shape, and every leaf
must be filled; otherwise `WeightsError` names the key and the expected and found shapes (in
torch's layout). `.pth` files are read without torch (`torch_files`), `.safetensors` files
with the `safetensors` package.
"""

import os
from typing import Any, Mapping, Optional

import numpy as np
from flax import traverse_util

from resnet_flax.errors import WeightsError, first_line
from resnet_flax.models import model_fields, scan, unit_layer
from resnet_flax.models.registry import abstract_variables, unrolled
from resnet_flax.weights import torch_files

_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
           'var': 'running_var'}
_UNUSED_SUFFIX = '.num_batches_tracked'
_TOP_LEVEL = {'stem_conv': 'conv1', 'stem_norm': 'bn1', 'stem_conv1': 'conv1.0',
              'stem_norm1': 'conv1.1', 'stem_conv2': 'conv1.3', 'stem_norm2': 'conv1.4',
              'stem_conv3': 'conv1.6', 'stem_norm3': 'bn1', 'stem_pool_conv': 'maxpool.0',
              'stem_pool_norm': 'maxpool.1', 'head': 'fc'}
_UNIT_LAYERS = {'se_reduce': 'se.fc1', 'se_expand': 'se.fc2'}


def library_fields(name: str, names, library: str) -> dict[str, Any]:
  """The model fields of `name`, one of `library`'s network names `names`."""
  if name not in names:
    raise WeightsError(f'{name!r} is not a {library} ResNet; known: {", ".join(names)}')
  return model_fields(name)


def _unwrap(loaded: Any, path: str) -> dict[str, Any]:
  """The state dict in a loaded `.pth`: the object itself, or its 'state_dict' / 'model' entry
  (training checkpoints), keys stripped of DataParallel's 'module.' prefix."""
  if not isinstance(loaded, Mapping):
    raise WeightsError(f'{path} holds a {type(loaded).__name__}, not a state dict; save '
                       f'model.state_dict()')
  for key in ('state_dict', 'model'):
    if isinstance(loaded.get(key), Mapping):
      loaded = loaded[key]
      break
  if loaded and all(k.startswith('module.') for k in loaded):
    loaded = {k[len('module.'):]: v for k, v in loaded.items()}
  return dict(loaded)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{key: numpy array} of a `.pth` / `.pt` (read without torch, see `torch_files`) or a
  `.safetensors` file."""
  if not os.path.isfile(path):
    raise WeightsError(f'{path}: no such file')
  if path.endswith('.safetensors'):
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise WeightsError(f'reading {path} needs the safetensors package (pip install '
                         f'safetensors, pinned in requirements-test.txt)') from None
    try:
      return dict(load_file(path))
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported in one line
      raise WeightsError(f'{path} is not a readable .safetensors file ({first_line(e)})') from None
  if not path.endswith(('.pth', '.pt')):
    raise WeightsError(f'{path}: unknown weights file type; expected .pth, .pt or .safetensors')
  try:
    loaded = torch_files.load_state_dict(path)
  except torch_files.TorchFileError as e:
    raise WeightsError(f'{path}: {e}') from None
  out = {}
  for key, value in _unwrap(loaded, path).items():
    if not isinstance(value, np.ndarray):
      raise WeightsError(f'{path}: entry {key!r} is a {type(value).__name__}, not a tensor; '
                         f'save the model\'s state_dict()')
    out[key] = value.astype(np.float32) if value.dtype.kind == 'f' else value
  return out


def torch_module(path: tuple[str, ...], avg_shortcut: bool = False) -> Optional[str]:
  """The torch module name (torchvision's / timm's) of the resnet_flax module at `path`, or
  None. `avg_shortcut`: the model's projections average-pool first (timm's `avg_down`)."""
  if len(path) == 1:
    return _TOP_LEVEL.get(path[0])
  layer = unit_layer(path)
  if layer is None:
    return None
  block = f'layer{layer.stage}.{layer.unit - 1}'
  if layer.kind in ('shortcut_conv', 'shortcut_norm'):
    return f'{block}.downsample.{int(avg_shortcut) + (layer.kind == "shortcut_norm")}'
  if layer.kind in _UNIT_LAYERS:
    return f'{block}.{_UNIT_LAYERS[layer.kind]}'
  return f'{block}.{"conv" if layer.kind == "conv" else "bn"}{layer.index}'


def _to_flax(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)   # (O, I/g, kH, kW) -> (kH, kW, I/g, O)
  if array.ndim == 2:
    return array.T                       # (out, in) -> (in, out)
  return array


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch layout of a flax shape (the inverse of `_to_flax`)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape)) if len(shape) == 2 else tuple(shape)


def _shown(keys, limit=3) -> str:
  keys = sorted(keys)
  return ', '.join(keys[:limit]) + (f' ... ({len(keys)} in all)' if len(keys) > limit else '')


def _targets(fields: Mapping[str, Any], library: str,
             ) -> dict[str, tuple[tuple, tuple[int, ...], Any]]:
  """{torch key: (resnet_flax leaf path, torch-layout shape, dtype)} of a model, in the
  unrolled layout (one module per unit, as torch names them)."""
  shapes = abstract_variables(unrolled(fields), 224)
  avg = fields.get('shortcut_downsample') == 'avg'
  targets = {}
  for path, struct in traverse_util.flatten_dict({k: dict(v) for k, v in shapes.items()}).items():
    module = torch_module(path[1:-1], avg)
    if module is None or path[-1] not in _LEAVES:
      raise WeightsError(f'{fields["name"]}: {"/".join(path)} has no {library} counterpart')
    targets[f'{module}.{_LEAVES[path[-1]]}'] = (path, _torch_shape(struct.shape), struct.dtype)
  return targets


def expected_shapes(fields: Mapping[str, Any], library: str) -> dict[str, tuple[int, ...]]:
  """{key: shape} of the state dict of a model with these fields (without the unused
  num_batches_tracked counters), as the conversion expects it."""
  return {key: shape for key, (_, shape, _) in _targets(fields, library).items()}


def convert_state_dict(fields: dict[str, Any], state_dict: Mapping[str, Any], library: str,
                       ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(model fields, params, batch_stats) of a torch state dict of `library` ('torchvision',
  'timm'), as numpy arrays.

  The number of classes is that of the state dict's `fc` (1000 for ImageNet weights; any other
  for a fine-tuned network). Raises WeightsError when the state dict does not fit the model
  exactly: its first shape mismatch, the keys it lacks, and the keys it has that the model does
  not.
  """
  fields = dict(fields)
  name = fields['name']
  if np.ndim(state_dict.get('fc.weight')) == 2:
    fields['num_classes'] = int(np.shape(state_dict['fc.weight'])[0])
  targets = _targets(fields, library)
  converted, mismatched = {}, []
  for key, (path, expected, dtype) in targets.items():
    if key not in state_dict:
      continue
    value = np.asarray(state_dict[key])
    if tuple(value.shape) != expected:
      mismatched.append(f'{key} has shape {tuple(value.shape)}, {name} expects {expected}')
    else:
      converted[path] = np.ascontiguousarray(_to_flax(value), dtype=dtype)
  missing = [f'{key} {shape}' for key, (_, shape, _) in targets.items() if key not in state_dict]
  unused = [k for k in state_dict if k not in targets and not k.endswith(_UNUSED_SUFFIX)]
  if mismatched or missing or unused:
    problems = []
    if mismatched:
      problems.append(mismatched[0] + (f' (and {len(mismatched) - 1} more shape mismatches)'
                                       if len(mismatched) > 1 else ''))
    if missing:
      problems.append(f'missing keys: {_shown(missing)}')
    if unused:
      problems.append(f'keys {name} does not have: {_shown(unused)}')
    raise WeightsError(f'the state dict does not fit {library} {name}: '
                       f'{"; ".join(problems)}; are the weights those of --model {name}?')
  variables = traverse_util.unflatten_dict(converted)
  layout = abstract_variables(fields, 224)     # scanned stages stacked, as the model has them
  return (fields, scan.restack(variables['params'], layout['params']),
          scan.restack(variables['batch_stats'], layout['batch_stats']))
