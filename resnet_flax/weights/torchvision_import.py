"""torchvision ResNet, ResNeXt and Wide ResNet weights -> resnet_flax `params` and `batch_stats`.

torchvision's networks are this package's v1.5 ResNets with shortcut B, layer for layer, so the
import renames and transposes:

  conv1, bn1                          -> stem_conv, stem_norm
  layerL.I.convK, layerL.I.bnK        -> stageL_unit{I+1}/convK, stageL_unit{I+1}/normK
  layerL.I.downsample.0, .1           -> stageL_unit{I+1}/shortcut_conv, shortcut_norm
  fc                                  -> head
  BatchNorm weight, bias              -> params scale, bias
  BatchNorm running_mean, running_var -> batch_stats mean, var (num_batches_tracked is unused)
  conv weight (O, I/groups, kH, kW)   -> kernel (kH, kW, I/groups, O), grouped convs included
  fc weight (classes, features)       -> kernel (features, classes)

Every array of the state dict must fill a leaf of the model with the same shape, and every leaf
must be filled; otherwise `WeightsError` names the key and the expected and found shapes (in
torch's layout). `.pth` files are read without torch (`torch_files`), `.safetensors` files
with the `safetensors` package; torch is imported only to download.
"""

import os
import re
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

import numpy as np
from flax import traverse_util

from resnet_flax.models import model_fields, scan, unit_layer
from resnet_flax.models.registry import abstract_variables, unrolled
from resnet_flax.errors import WeightsError, first_line
from resnet_flax.weights import torch_files

# torchvision.models names, all registry names with the same fields
TORCHVISION_NAMES = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
                     'resnext50_32x4d', 'resnext101_32x8d', 'resnext101_64x4d',
                     'wide_resnet50_2', 'wide_resnet101_2')
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
           'var': 'running_var'}
_UNUSED_SUFFIX = '.num_batches_tracked'


def torchvision_fields(name: str) -> dict[str, Any]:
  """The model fields of a torchvision network name."""
  if name not in TORCHVISION_NAMES:
    raise WeightsError(f'{name!r} is not a torchvision ResNet; known: '
                       f'{", ".join(TORCHVISION_NAMES)}')
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


def download(model_or_url: str) -> str:
  """The local copy of the official torchvision weights of a model name (its DEFAULT weights),
  or of a URL, downloaded once into torch.hub's cache. Needs internet, torch (and torchvision
  for a model name)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise WeightsError('downloading weights needs torch (pip install torch)') from None
  url, check_hash = model_or_url, False
  if not urlparse(model_or_url).scheme:
    torchvision_fields(model_or_url)
    try:
      import torchvision  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise WeightsError('--download needs torchvision for the weights\' address (pip install '
                         'torchvision), or pass their URL as --in') from None
    url, check_hash = torchvision.models.get_model_weights(model_or_url).DEFAULT.url, True
  path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(urlparse(url).path))
  if not os.path.isfile(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # torchvision's file names end with a prefix of their sha256, which the download checks
    prefix = re.search(r'-([a-f0-9]{8,})\.', os.path.basename(path)) if check_hash else None
    try:
      torch.hub.download_url_to_file(url, path, prefix[1] if prefix else None)
    except Exception as e:  # noqa: BLE001 - no network, a bad address, a bad hash
      raise WeightsError(f'cannot download {url} ({first_line(e)})') from None
  return path


def _torch_module(path: tuple[str, ...]) -> Optional[str]:
  """torchvision's module name of the resnet_flax module at `path`, or None."""
  if len(path) == 1:
    return {'stem_conv': 'conv1', 'stem_norm': 'bn1', 'head': 'fc'}.get(path[0])
  layer = unit_layer(path)
  if layer is None:
    return None
  block = f'layer{layer.stage}.{layer.unit - 1}'
  if layer.kind in ('shortcut_conv', 'shortcut_norm'):
    return f'{block}.downsample.{0 if layer.kind == "shortcut_conv" else 1}'
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


def _targets(fields: Mapping[str, Any]) -> dict[str, tuple[tuple, tuple[int, ...], Any]]:
  """{torchvision key: (resnet_flax leaf path, torch-layout shape, dtype)} of a model, in the
  unrolled layout (one module per unit, as torchvision names them)."""
  shapes = abstract_variables(unrolled(fields), 224)
  targets = {}
  for path, struct in traverse_util.flatten_dict({k: dict(v) for k, v in shapes.items()}).items():
    module = _torch_module(path[1:-1])
    if module is None or path[-1] not in _LEAVES:
      raise WeightsError(f'{fields["name"]}: {"/".join(path)} has no torchvision counterpart')
    targets[f'{module}.{_LEAVES[path[-1]]}'] = (path, _torch_shape(struct.shape), struct.dtype)
  return targets


def expected_shapes(model_name: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
  """{key: shape} of the state dict of torchvision's `model_name` (without the unused
  num_batches_tracked counters), as the conversion expects it."""
  fields = {**torchvision_fields(model_name), 'num_classes': num_classes}
  return {key: shape for key, (_, shape, _) in _targets(fields).items()}


IMAGENET_CLASSES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'imagenet_classes.txt')


def imagenet_class_names() -> list[str]:
  """The 1000 ImageNet (ILSVRC-2012) class names in label order, the short English names
  torchvision shows (`imagenet_classes.txt`, one per line)."""
  with open(IMAGENET_CLASSES) as f:
    names = [line.rstrip('\n') for line in f]
  if len(names) != 1000:
    raise WeightsError(f'{IMAGENET_CLASSES}: {len(names)} class names, expected 1000')
  return names


def convert_torchvision(model_name: str, state_dict: Mapping[str, Any],
                        ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(model fields, params, batch_stats) of a torchvision state dict, as numpy arrays.

  The number of classes is that of the state dict's `fc` (1000 for ImageNet weights; any other
  for a fine-tuned network). Raises WeightsError when the state dict does not fit `model_name`
  exactly: its first shape mismatch, the keys it lacks, and the keys it has that the model does
  not.
  """
  fields = torchvision_fields(model_name)
  if np.ndim(state_dict.get('fc.weight')) == 2:
    fields['num_classes'] = int(np.shape(state_dict['fc.weight'])[0])
  targets = _targets(fields)
  converted, mismatched = {}, []
  for key, (path, expected, dtype) in targets.items():
    if key not in state_dict:
      continue
    value = np.asarray(state_dict[key])
    if tuple(value.shape) != expected:
      mismatched.append(f'{key} has shape {tuple(value.shape)}, {model_name} expects {expected}')
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
      problems.append(f'keys {model_name} does not have: {_shown(unused)}')
    raise WeightsError(f'the state dict does not fit torchvision {model_name}: '
                       f'{"; ".join(problems)}; are the weights those of --model {model_name}?')
  variables = traverse_util.unflatten_dict(converted)
  layout = abstract_variables(fields, 224)     # scanned stages stacked, as the model has them
  return (fields, scan.restack(variables['params'], layout['params']),
          scan.restack(variables['batch_stats'], layout['batch_stats']))
