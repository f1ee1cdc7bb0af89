"""Keras applications' ResNets: the `flavour='keras'` models and the weight converter.

Parameter counts and the layer mapping need no TensorFlow; the tests against Keras itself (equal
logits with random weights and random BatchNorm statistics, files saved by Keras) are skipped,
with the reason shown, where TensorFlow is not installed.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_flax.tools import model_stats
from resnet_flax.models import create_model, model_fields, registry
from resnet_flax.errors import WeightsError
from resnet_flax.weights import keras_import
from resnet_flax.weights.keras_import import convert_keras


# Keras' own model.count_params(): trainable weights plus BatchNorm moving mean and variance.
KERAS_COUNT_PARAMS = {
    'keras_resnet50': 25_636_712,
    'keras_resnet101': 44_707_176,
    'keras_resnet152': 60_419_944,
    'keras_resnet50v2': 25_613_800,
    'keras_resnet101v2': 44_675_560,
    'keras_resnet152v2': 60_380_648,
}
IMAGE = 64  # Keras accepts any input_shape >= 32 with weights=None, also with the top


def tree_equal(a, b):
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and
          all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b)))


# ---------------------------------------------------------------------------------------------
# The Keras flavour of the model (no TensorFlow).

@pytest.mark.parametrize('name', sorted(KERAS_COUNT_PARAMS))
def test_keras_count_params(name):
  counts = model_stats.count_variables(create_model(model_fields(name)), 224)
  assert counts['params'] + counts['batch_stats'] == KERAS_COUNT_PARAMS[name]


def test_keras_flavour_conv_biases_and_strides():
  v1 = registry.abstract_variables(model_fields('keras_resnet50'), IMAGE)['params']
  assert 'bias' in v1['stem_conv']
  unit = v1['stage2_unit1']
  assert all('bias' in unit[c] for c in ('conv1', 'conv2', 'conv3', 'shortcut_conv'))

  model = create_model(model_fields('keras_resnet50v2'))
  variables = registry.abstract_variables(model_fields('keras_resnet50v2'), IMAGE)
  v2 = variables['params']
  assert 'bias' in v2['stem_conv'] and 'final_norm' in v2
  for unit in ('stage1_unit1', 'stage2_unit4'):
    assert 'bias' not in v2[unit]['conv1'] and 'bias' not in v2[unit]['conv2']
    assert 'bias' in v2[unit]['conv3']
  # a projection only where the channels change (each stage's first unit); the strided last
  # unit of a stage has none (Keras' 1x1 max pool)
  assert [u for u in v2 if 'shortcut_conv' in v2.get(u, {})] == [
      f'stage{s}_unit1' for s in range(1, 5)]
  # downsampling at the end of stages 1-3: the last stage keeps the resolution
  _, feats = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, return_features=True),
      variables, jax.ShapeDtypeStruct((1, IMAGE, IMAGE, 3), jnp.float32))
  assert [feats[k].shape[1] for k in ('stem', 'stage1', 'stage2', 'stage3', 'stage4')] == [
      16, 8, 4, 2, 2]


def test_keras_flavour_is_validated():
  with pytest.raises(ValueError, match='flavour'):
    create_model({**model_fields('resnet50'), 'flavour': 'caffe'})


# ---------------------------------------------------------------------------------------------
# The converter on a stand-in for a Keras model (no TensorFlow).

class FakeLayer:
  def __init__(self, name, weights):
    self.name, self.weights = name, weights

  def get_weights(self):
    return self.weights


class FakeModel:
  name = 'fake'

  def __init__(self, layers):
    self.layers = layers


def fake_keras_model(name, seed=0, **overrides):
  """Keras-named layers holding random weights for the resnet_flax model `name`."""
  fields = {**model_fields(name), **overrides}
  variables = registry.abstract_variables(fields, IMAGE)
  rng = np.random.default_rng(seed)
  layers = {}
  for collection in ('params', 'batch_stats'):
    flat = jax.tree_util.tree_flatten_with_path(variables[collection])[0]
    for path, leaf in flat:
      keys = tuple(p.key for p in path)
      keras_name = keras_import.keras_layer_name(keys[:-1], fields['version'])
      layers.setdefault(keras_name, {})[keys[-1]] = rng.standard_normal(leaf.shape).astype(
          np.float32)
  order = {'kernel': 0, 'scale': 0, 'bias': 1, 'mean': 2, 'var': 3}
  return FakeModel([FakeLayer(n, [w[k] for k in sorted(w, key=order.get)])
                    for n, w in layers.items()])


@pytest.mark.parametrize('name', ['keras_resnet50', 'keras_resnet50v2'])
def test_convert_fake_model_round_trip(name):
  fake = fake_keras_model(name, num_classes=10)
  fields, params, batch_stats = convert_keras(None, fake)  # name inferred from layer names
  assert fields['name'] == name and fields['num_classes'] == 10 and fields['include_top']
  structure = registry.abstract_variables(fields, IMAGE)
  assert (jax.tree_util.tree_structure({'params': params, 'batch_stats': batch_stats}) ==
          jax.tree_util.tree_structure(dict(structure)))
  by_name = {layer.name: layer.weights for layer in fake.layers}
  np.testing.assert_array_equal(params['stem_conv']['bias'], by_name['conv1_conv'][1])
  np.testing.assert_array_equal(params['head']['kernel'], by_name['predictions'][0])
  if name.endswith('v2'):
    np.testing.assert_array_equal(batch_stats['stage3_unit2']['norm1']['var'],
                                  by_name['conv4_block2_preact_bn'][3])
    np.testing.assert_array_equal(params['stage3_unit2']['norm2']['scale'],
                                  by_name['conv4_block2_1_bn'][0])
  else:
    np.testing.assert_array_equal(batch_stats['stage3_unit2']['norm1']['mean'],
                                  by_name['conv4_block2_1_bn'][2])
  assert tree_equal(convert_keras(name, fake)[1:], (params, batch_stats))


def test_convert_without_top():
  fake = fake_keras_model('keras_resnet50v2', include_top=False)
  fields, params, _ = convert_keras('ResNet50V2', fake)  # Keras' own name is accepted
  assert not fields['include_top'] and 'head' not in params


def test_convert_errors_name_the_layer():
  fake = fake_keras_model('keras_resnet50')
  with pytest.raises(ValueError, match=r'lacks.*conv4_block7_1_conv'):  # a deeper model expected
    convert_keras('keras_resnet101', fake)
  with pytest.raises(ValueError, match=r'keras_resnet50v2.*conv2_block1_preact_bn'):
    convert_keras('keras_resnet50v2', fake)
  with pytest.raises(ValueError, match=r"flavour='keras'.*keras_resnet50"):
    convert_keras('resnet50', fake)

  extra = FakeModel(fake.layers + [FakeLayer('aux_dense', [np.zeros((2, 2))])])
  with pytest.raises(ValueError, match='aux_dense'):
    convert_keras('keras_resnet50', extra)
  bad = fake_keras_model('keras_resnet50')
  layer = next(l for l in bad.layers if l.name == 'conv3_block2_2_conv')
  layer.weights = [layer.weights[0][:, :, :-1], layer.weights[1]]
  with pytest.raises(ValueError, match=r"conv3_block2_2_conv.*kernel.*\(3, 3, 127, 128\)"):
    convert_keras('keras_resnet50', bad)
  with pytest.raises(WeightsError, match='no_such_file'):
    convert_keras('keras_resnet50', 'no_such_file.h5')


# ---------------------------------------------------------------------------------------------
# Against Keras itself (TensorFlow).

@pytest.fixture(scope='module')
def keras():
  pytest.importorskip('tensorflow', reason='TensorFlow is not installed: no Keras to compare with')
  import keras as keras_module  # pylint: disable=import-outside-toplevel
  return keras_module


def randomize(model, seed):
  """Random weights of a moderate scale, BatchNorm statistics included (they must matter)."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    weights = layer.get_weights()
    if not weights:
      continue
    if hasattr(layer, 'moving_variance'):
      n = weights[0].shape
      weights = [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n),
                 rng.uniform(0.5, 2.0, n)]
    else:
      kernel = weights[0]
      weights = [rng.normal(0, np.sqrt(1.0 / np.prod(kernel.shape[:-1])), kernel.shape)] + [
          rng.normal(0, 0.1, w.shape) for w in weights[1:]]
    layer.set_weights([w.astype(np.float32) for w in weights])


@pytest.fixture(scope='module')
def keras_models(keras):
  models = {}
  for seed, (app, name) in enumerate((('ResNet50', 'keras_resnet50'),
                                      ('ResNet50V2', 'keras_resnet50v2'))):
    model = getattr(keras.applications, app)(weights=None, input_shape=(IMAGE, IMAGE, 3),
                                             classifier_activation=None)
    randomize(model, seed)
    models[name] = model
  return models


@pytest.mark.parametrize('name', ['keras_resnet50', 'keras_resnet50v2'])
def test_logits_equal_keras(keras_models, name):
  keras_model = keras_models[name]
  assert keras_model.count_params() == KERAS_COUNT_PARAMS[name]
  x = np.random.default_rng(7).standard_normal((2, IMAGE, IMAGE, 3)).astype(np.float32)
  expected = np.asarray(keras_model(x, training=False))
  fields, params, batch_stats = convert_keras(name, keras_model)
  assert fields['bn_epsilon'] == 1.001e-5 and fields['num_classes'] == 1000
  model = create_model(fields)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      {'params': params, 'batch_stats': batch_stats}, x)
  assert logits.shape == expected.shape == (2, 1000)
  assert np.abs(expected).max() > 1.0  # not a degenerate comparison
  assert np.abs(np.asarray(logits) - expected).max() <= 1e-4


def write_keras2_weights_file(full_model_h5, path):
  """The layout of the keras-applications weight downloads: a full-model .h5's weights at root."""
  import h5py  # pylint: disable=import-outside-toplevel
  with h5py.File(full_model_h5, 'r') as src, h5py.File(path, 'w') as dst:
    weights = src['model_weights']
    for key in weights:
      src.copy(weights[key], dst, name=key)
    for key, value in weights.attrs.items():
      dst.attrs[key] = value


@pytest.mark.parametrize('kind', ['h5', 'keras2_weights_h5', 'weights.h5', 'keras'])
def test_keras_files_round_trip(keras_models, tmp_path, kind):
  keras_model = keras_models['keras_resnet50v2']
  expected = convert_keras('keras_resnet50v2', keras_model)
  if kind in ('h5', 'keras2_weights_h5'):
    path = tmp_path / 'model.h5'
    keras_model.save(path)  # Keras' legacy HDF5 format
    if kind == 'keras2_weights_h5':
      path, full = tmp_path / 'weights.h5', path
      write_keras2_weights_file(full, path)
  elif kind == 'weights.h5':
    path = tmp_path / 'model.weights.h5'
    keras_model.save_weights(path)
    with pytest.raises(ValueError, match='pass the model name'):
      convert_keras(None, path)
  else:
    path = tmp_path / 'model.keras'
    keras_model.save(path)
  name = 'keras_resnet50v2' if kind == 'weights.h5' else None
  fields, params, batch_stats = convert_keras(name, str(path))
  assert fields['name'] == 'keras_resnet50v2' and fields['include_top']
  assert tree_equal((params, batch_stats), expected[1:])


@pytest.mark.parametrize('name, mode', [('keras_resnet50', 'resnet'),
                                        ('keras_resnet50v2', 'resnet_v2')])
def test_rgb_pipeline_reproduces_keras_preprocess_input(keras, keras_models, name, mode):
  """Keras feeds `preprocess_input(rgb)` (caffe: BGR minus means; tf: x / 127.5 - 1); the
  converted model with `rgb_input_convention` takes our pipeline's `(rgb - mean) / std`."""
  keras_model = keras_models[name]
  rgb = np.random.default_rng(3).uniform(0, 255, (2, IMAGE, IMAGE, 3)).astype(np.float32)
  preprocess = getattr(keras.applications, mode).preprocess_input
  expected = np.asarray(keras_model(preprocess(rgb.copy()), training=False))
  fields, params, batch_stats = convert_keras(name, keras_model)
  params, mean, std = keras_import.rgb_input_convention(fields, params)
  x = (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  logits = create_model(fields).apply({'params': params, 'batch_stats': batch_stats}, x,
                                      train=False)
  scale = np.abs(expected).max()
  assert scale > 1.0 and np.abs(np.asarray(logits) - expected).max() <= 1e-5 * scale


def test_convert_script_writes_a_keras_checkpoint_with_its_input_convention(keras_models,
                                                                             tmp_path):
  from resnet_flax.cli.weights import convert_weights as convert
  path = tmp_path / 'model.h5'
  keras_models['keras_resnet50'].save(path)
  out = tmp_path / 'converted'
  assert convert(['convert-weights', '--from', 'keras', '--model', 'keras_resnet50', '--in',
                  str(path), '--out', str(out)]) == 0
  from resnet_flax.inference import predictor as inference
  predictor = inference.load(str(out))
  assert tuple(predictor.config.data.mean) == (123.68, 116.779, 103.939)
  assert tuple(predictor.config.data.std) == (1.0, 1.0, 1.0)
  assert predictor.config.model.flavour == 'keras' and predictor.config.model.depth == 50
  # Keras' ImageNet head is in synset order: its class 0 is the tench, as torchvision's
  assert len(predictor.class_names) == 1000 and predictor.class_names[:2] == ['tench', 'goldfish']
  # the stem kernel holds the BGR order: reversed input channels of the Keras kernel
  _, params, _ = convert_keras('keras_resnet50', str(path))
  np.testing.assert_array_equal(predictor.variables['params']['stem_conv']['kernel'],
                                params['stem_conv']['kernel'][:, :, ::-1, :])
  assert convert(['convert-weights', '--from', 'keras', '--model', 'resnet50', '--in',
                  str(path), '--out', str(tmp_path / 'x')]) == 2
