"""Keras applications' ResNets -> resnet_flax `params` and `batch_stats`.

`convert_keras(model_name, source)` fills the `flavour='keras'` model (`keras_resnet50`,
`keras_resnet101`, `keras_resnet152`, `keras_resnet50v2`, `keras_resnet101v2`,
`keras_resnet152v2`) from Keras' `ResNet50` ... `ResNet152V2`, matching layers by their Keras
names (`conv1_conv`, `conv2_block1_1_conv`, ..., `post_bn`, `predictions`). Every weight of the
model must come from the source and every Keras layer with weights must be used, with equal
shapes; otherwise a `WeightsError` (a `ValueError`) names the layer.

Sources:
* an in-memory Keras model (a model nested in it as a layer is searched too);
* a `.keras` file (loaded with `keras.models.load_model`);
* a `.h5` / `.hdf5` file in the Keras 2 layout: the weights files of the keras-applications
  downloads (`resnet50_weights_tf_dim_ordering_tf_kernels.h5`) or `model.save('m.h5')`. These
  are read with h5py only, without TensorFlow;
* a Keras 3 `.weights.h5` file (`model.save_weights`): its layers are not stored by name, so it
  is loaded into the matching `keras.applications` model first (the model name is required).

Keras and h5py are imported only inside the functions that need them.
"""

import os
import re
from typing import Any, Mapping, Optional, Union

import numpy as np

from resnet_flax.models import MODEL_DEFAULTS, NAMES, model_fields, scan, unit_layer
from resnet_flax.models.registry import abstract_variables, unrolled
from resnet_flax.errors import WeightsError

# registry name -> keras.applications constructor
KERAS_APPLICATIONS = {
    'keras_resnet50': 'ResNet50',
    'keras_resnet101': 'ResNet101',
    'keras_resnet152': 'ResNet152',
    'keras_resnet50v2': 'ResNet50V2',
    'keras_resnet101v2': 'ResNet101V2',
    'keras_resnet152v2': 'ResNet152V2',
}
_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
_BN_ROLES = ('gamma', 'beta', 'moving_mean', 'moving_variance')


# ---------------------------------------------------------------------------------------------
# Reading a source: {Keras layer name: [arrays in Keras' weight order]}.

class _KerasWeights:
  """The weights of a Keras model by layer name, and what the source tells about the model."""

  def __init__(self, layers, description, bn_epsilon=None, pooling=None):
    self.layers = layers            # {name: [np.ndarray, ...]} of the layers with weights
    self.description = description
    self.bn_epsilon = bn_epsilon    # known for in-memory / .keras models
    self.pooling = pooling          # 'avg' / 'max' / 'none' for a model without its top


def _from_model(model, description) -> _KerasWeights:
  layers, epsilons, names = {}, set(), set()

  def visit(container):
    for layer in container.layers:
      names.add(layer.name)
      if hasattr(layer, 'layers') and layer.weights:  # a nested model
        visit(layer)
        continue
      weights = layer.get_weights()
      if not weights:
        continue
      if layer.name in layers:
        raise WeightsError(f'{description}: two layers are named {layer.name!r}')
      layers[layer.name] = [np.asarray(w) for w in weights]
      if hasattr(layer, 'moving_variance') and hasattr(layer, 'epsilon'):
        epsilons.add(float(layer.epsilon))

  if not hasattr(model, 'layers'):
    raise WeightsError(f'{description}: expected a Keras model, got {type(model).__name__}')
  visit(model)
  if len(epsilons) > 1:
    raise WeightsError(f'{description}: BatchNorm layers use different epsilons '
                       f'{sorted(epsilons)}; one model-wide bn_epsilon cannot reproduce them')
  pooling = 'max' if 'max_pool' in names else 'avg' if 'avg_pool' in names else 'none'
  return _KerasWeights(layers, description, epsilons.pop() if epsilons else None, pooling)


def _decode(value):
  return value.decode('utf8') if isinstance(value, bytes) else str(value)


def _from_legacy_h5(root, description) -> _KerasWeights:
  """The Keras 2 HDF5 layout: attribute `layer_names`; per layer, attribute `weight_names`."""
  layers = {}
  for name in map(_decode, root.attrs['layer_names']):
    group = root[name]
    weight_names = [_decode(w) for w in group.attrs.get('weight_names', [])]
    if weight_names:
      layers[name] = [np.asarray(group[w]) for w in weight_names]
  return _KerasWeights(layers, description)


def _import_keras(what):
  try:
    import keras  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise WeightsError(f'reading {what} needs Keras (pip install tensorflow); the Keras 2 .h5 '
                       f'layout can be read without it') from e
  return keras


def _keras_application(keras, app_name, description, **kwargs):
  try:
    return getattr(keras.applications, app_name)(weights=None, classifier_activation=None,
                                                 **kwargs)
  except AttributeError as e:
    raise WeightsError(f'{description}: this Keras has no keras.applications.{app_name}') from e


def _read_source(source, app_name: Optional[str]) -> _KerasWeights:
  if not isinstance(source, (str, os.PathLike)):
    return _from_model(source, f'Keras model {getattr(source, "name", "")!r}')
  path = os.fspath(source)
  description = f'Keras file {path}'
  if not os.path.isfile(path):
    raise WeightsError(f'{description} does not exist (expected a .keras, .h5 or '
                       '.weights.h5 file, or an in-memory Keras model)')
  lower = path.lower()
  if lower.endswith('.keras'):
    keras = _import_keras(description)
    return _from_model(keras.models.load_model(path, compile=False), description)
  if not lower.endswith(('.h5', '.hdf5')):
    raise WeightsError(f'{description}: unsupported file type; expected a .keras, .h5, .hdf5 or '
                       '.weights.h5 file')
  try:
    import h5py  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise WeightsError(f'reading {description} needs h5py (pip install h5py)') from e
  with h5py.File(path, 'r') as f:
    if 'layer_names' in f.attrs:
      return _from_legacy_h5(f, description)
    if 'model_weights' in f and 'layer_names' in f['model_weights'].attrs:
      return _from_legacy_h5(f['model_weights'], description)
    if 'layers' not in f:
      raise WeightsError(f'{description} is not a Keras weights file (neither the Keras 2 '
                         "'layer_names' layout nor the Keras 3 'layers' layout)")
    dense = [k for k in f['layers'] if k == 'dense' or k.startswith('dense_')]
    classes = f['layers'][dense[0]]['vars']['0'].shape[-1] if dense else None
  # Keras 3 .weights.h5: layers are stored by attribute path, not by name; load them into the
  # matching application model, which Keras checks variable by variable.
  if app_name is None:
    raise WeightsError(f'{description} is a Keras 3 .weights.h5 file, whose layers are not stored '
                       f'by name: pass the model name (one of {", ".join(KERAS_APPLICATIONS)})')
  keras = _import_keras(description)
  if classes is None:
    model = _keras_application(keras, app_name, description, include_top=False)
  else:
    model = _keras_application(keras, app_name, description, include_top=True, classes=classes)
  try:
    model.load_weights(path)
  except ValueError as e:
    raise WeightsError(f'{description} does not load into keras.applications.{app_name}: '
                       f'{e}') from e
  return _from_model(model, description)


# ---------------------------------------------------------------------------------------------
# The model: fields, and the Keras name of each of its layers.

def resolve_name(model_name):
  """(fields or None, keras.applications name or None) from a registry name or fields."""
  if model_name is None:
    return None, None
  if isinstance(model_name, Mapping):
    fields, name = {**MODEL_DEFAULTS, **model_name}, model_name.get('name', '')
  else:
    name = str(model_name)
    if name not in NAMES and f'keras_{name.lower()}' in NAMES:  # 'ResNet50V2'
      name = f'keras_{name.lower()}'
    fields = model_fields(name)
  if fields.get('flavour') != 'keras':
    hint = f' (use keras_{name})' if f'keras_{name}' in NAMES else ''
    raise WeightsError(f'model {name or "(fields)"!r} has flavour={fields.get("flavour")!r}; Keras '
                       f"applications' weights need a flavour='keras' model{hint}: "
                       f'{", ".join(KERAS_APPLICATIONS)}')
  return fields, KERAS_APPLICATIONS.get(name)


def infer_model_name(layer_names) -> str:
  """The registry name of the Keras ResNet with these layer names (depth and V1/V2)."""
  blocks = {}
  for name in layer_names:
    m = re.match(r'conv([2-5])_block(\d+)_', name)
    if m:
      blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]))
  stages = tuple(blocks.get(s, 0) for s in (2, 3, 4, 5))
  if stages not in _DEPTHS:
    raise WeightsError(f'the Keras layers form stages of {stages} blocks, not a Keras ResNet50, '
                       '101 or 152; pass the model name or fields')
  v2 = any(name.endswith('_preact_bn') or name == 'post_bn' for name in layer_names)
  return f'keras_resnet{_DEPTHS[stages]}{"v2" if v2 else ""}'


def keras_layer_name(path, version: str) -> Optional[str]:
  """The Keras name of the resnet_flax layer at `path` (module names), or None if it has none."""
  if len(path) == 1:
    return {'stem_conv': 'conv1_conv', 'stem_norm': 'conv1_bn', 'final_norm': 'post_bn',
            'head': 'predictions'}.get(path[0])
  layer = unit_layer(path)
  if layer is None:
    return None
  prefix, k = f'conv{layer.stage + 1}_block{layer.unit}', layer.index
  if layer.kind in ('shortcut_conv', 'shortcut_norm'):
    return f'{prefix}_0_{"conv" if layer.kind == "shortcut_conv" else "bn"}'
  if layer.kind == 'conv':
    return f'{prefix}_{k}_conv'
  if version == 'v2':  # pre-activation: norm1 before conv1 is Keras' preact_bn
    return f'{prefix}_preact_bn' if k == 1 else f'{prefix}_{k - 1}_bn'
  return f'{prefix}_{k}_bn'


def _modules(tree, prefix=()):
  """{module path: {leaf name: abstract leaf}} of a variables collection."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      for path, leaves in _modules(value, prefix + (key,)).items():
        out.setdefault(path, {}).update(leaves)
    else:
      out.setdefault(prefix, {})[key] = value
  return out


def _natural_order(key):
  """Sort key putting unit2 before unit10 (a module path or a layer name)."""
  text = '/'.join(key) if isinstance(key, tuple) else key
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text)]


def _first(items, n=5):
  return ', '.join(items[:n]) + (f' and {len(items) - n} more' if len(items) > n else '')


def _set(tree, path, name, value):
  for key in path:
    tree = tree.setdefault(key, {})
  tree[name] = value


# ---------------------------------------------------------------------------------------------
# Conversion.

def convert_keras(model_name: Union[str, Mapping[str, Any], None], source,
                  ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """Keras applications' ResNet weights as resnet_flax variables.

  Args:
    model_name: a registry name of a `flavour='keras'` model (`keras_resnet50` ...
      `keras_resnet152v2`; Keras' own `ResNet50V2` etc. are accepted too), a mapping of model
      fields with `flavour='keras'`, or None to infer the name from the Keras layer names.
    source: an in-memory Keras model, or the path of a `.keras`, `.h5`/`.hdf5` or `.weights.h5`
      file.

  Returns:
    `(model_fields, params, batch_stats)`: the model's fields (the registry's, with
    `include_top` and `num_classes` taken from the source; for an in-memory or `.keras` model
    without its top also `pooling`, and `bn_epsilon` from its BatchNorm layers), and nested dicts
    of numpy arrays for `model.apply({'params': params, 'batch_stats': batch_stats}, ...)`.

  Raises:
    WeightsError (a ValueError): naming the layer, when a Keras layer has no counterpart in the
      model, a layer of the model is not in the source, or shapes differ; also for an unreadable
      source or a missing Keras / h5py.
  """
  fields, app_name = resolve_name(model_name)
  weights = _read_source(source, app_name)
  if fields is None:
    fields, _ = resolve_name(infer_model_name(weights.layers))
  fields = dict(fields)
  name = fields.get('name') or '(fields)'
  top = weights.layers.get('predictions')
  fields['include_top'] = top is not None
  if top is not None:
    fields['num_classes'] = int(top[0].shape[-1])
    fields['pooling'] = 'avg'                       # Keras' top always averages
  elif weights.pooling is not None:
    fields['pooling'] = weights.pooling
  if weights.bn_epsilon is not None:
    fields['bn_epsilon'] = weights.bn_epsilon

  shapes = abstract_variables(unrolled(fields))    # one module per unit, as Keras names them
  param_modules = _modules(dict(shapes['params']))
  stat_modules = _modules(dict(shapes.get('batch_stats', {})))
  paths = sorted(set(param_modules) | set(stat_modules), key=_natural_order)
  keras_names = {}
  for path in paths:
    keras_names[path] = keras_layer_name(path, fields.get('version', 'v1'))
    if keras_names[path] is None:
      raise WeightsError(f'{name} layer {"/".join(path)} has no Keras applications counterpart')
  missing = [f'{keras_names[p]} ({"/".join(p)})' for p in paths
             if keras_names[p] not in weights.layers]
  if missing:
    raise WeightsError(f'{weights.description} lacks the Keras layer(s) that {name} needs: '
                       f'{_first(missing)} (a different depth or version?)')

  params, batch_stats, used = {}, {}, set()
  for path in paths:
    leaves = {**param_modules.get(path, {}), **stat_modules.get(path, {})}
    where, keras_name = '/'.join(path), keras_names[path]
    arrays = weights.layers[keras_name]
    if 'mean' in leaves:  # BatchNorm
      targets = [('params', 'scale'), ('params', 'bias'), ('batch_stats', 'mean'),
                 ('batch_stats', 'var')]
      roles = _BN_ROLES
    else:  # conv or dense: kernel (+ bias)
      targets = [('params', 'kernel')] + ([('params', 'bias')] if 'bias' in leaves else [])
      roles = ('kernel', 'bias')[:len(targets)]
    if len(arrays) != len(targets) or set(leaves) != {leaf for _, leaf in targets}:
      raise WeightsError(f'Keras layer {keras_name!r} has {len(arrays)} weights; {name} layer '
                         f'{where} expects {len(targets)} ({", ".join(roles)})')
    for (collection, leaf), role, value in zip(targets, roles, arrays):
      expected = leaves[leaf]
      if tuple(value.shape) != tuple(expected.shape):
        raise WeightsError(f'Keras layer {keras_name!r} {role} has shape {tuple(value.shape)}; '
                           f'{name} layer {where} {leaf} expects {tuple(expected.shape)}')
      _set(params if collection == 'params' else batch_stats, path, leaf,
           np.asarray(value).astype(expected.dtype))
    used.add(keras_name)

  unused = sorted(set(weights.layers) - used, key=_natural_order)
  if unused:
    raise WeightsError(f'{weights.description} has layer(s) with weights that {name} does not '
                       f'have: {_first(unused)} (a deeper network, or another architecture?)')
  layout = abstract_variables(fields)     # scanned stages stacked, as the model has them
  return (fields, scan.restack(params, layout['params']),
          scan.restack(batch_stats, layout.get('batch_stats', {})))


# Keras applications' `preprocess_input`: ResNet50/101/152 use 'caffe' mode (RGB -> BGR, minus
# the ImageNet BGR means, no scaling), the V2 models 'tf' mode (x / 127.5 - 1).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def rgb_input_convention(fields: Mapping[str, Any], params: Mapping[str, Any]
                         ) -> tuple[dict[str, Any], tuple, tuple]:
  """Keras' input convention in our pipeline's terms: `(params, mean, std)` such that the model
  with these params on `(rgb - mean) / std` computes what Keras computes on
  `preprocess_input(rgb)`. For the v1 models the BGR channel order moves into the stem kernel
  (its input channels reversed), so the data pipeline stays RGB."""
  params = dict(params)
  if fields['version'] == 'v2':
    return params, (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)
  stem = dict(params['stem_conv'])
  stem['kernel'] = np.ascontiguousarray(np.asarray(stem['kernel'])[:, :, ::-1, :])
  params['stem_conv'] = stem
  return params, tuple(reversed(CAFFE_BGR_MEAN)), (1.0, 1.0, 1.0)
