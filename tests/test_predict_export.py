"""Prediction and export from a saved run: predict agrees with evaluate image by image, images
of any size and mode, missing checkpoints, the exported function reloaded without the package,
and the TensorFlow-free port of the tf.data eval preprocessing."""

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, subprocess_env, tiny_config
from resnet_flax.cli import inference as inference_cli
from resnet_flax.data import info as data_info
from resnet_flax.data.info import DataInfo
from resnet_flax.errors import CheckpointError, DataError, ExportError
from resnet_flax.inference import export as exporting
from resnet_flax.inference import predictor as inference
from resnet_flax.train import build, loop
from resnet_flax.train.state import TrainState

NUM_CLASSES = 10


def _numpy_train_state(model, tx, *, seed, image_shape, use_ema):
  """create_train_state with NumPy-drawn weights (He-normal kernels, unit BatchNorm): XLA on
  CPU takes about 10 s to compile the model's own initialisation, which this test does not
  need."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(image_shape)), train=False))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(leaf.dtype)
    return (np.ones if name in ('scale', 'var') else np.zeros)(leaf.shape, leaf.dtype)

  params = jax.tree_util.tree_map_with_path(draw, shapes['params'])
  stats = jax.tree_util.tree_map_with_path(draw, shapes.get('batch_stats', {}))
  copy = lambda tree: jax.tree.map(np.copy, tree)  # noqa: E731
  return TrainState(
      step=np.zeros((), np.int32), params=params, batch_stats=stats,
      opt_state=jax.jit(tx.init)(params), rng=np.asarray(jax.random.PRNGKey(seed)),
      ema_params=copy(params) if use_ema else None,
      ema_batch_stats=copy(stats) if use_ema else None)


@pytest.fixture(scope='module', autouse=True)
def _fast_init():
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(build, 'create_train_state', _numpy_train_state)
    yield


def _write_split(root, split, n, rng, size=8, width=None):
  for i in range(n):
    folder = os.path.join(root, split, f'class{i % NUM_CLASSES}')
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, width or size, 3), dtype=np.uint8)).save(
        os.path.join(folder, f'{i:03d}.png'))


def _config(root, **overrides):
  return tiny_config(**{'data.source': 'folder', 'data.dir': str(root), 'data.image_size': 0,
                        'data.channels': 0, 'data.mean': (120.0, 110.0, 100.0),
                        'data.std': (60.0, 65.0, 70.0), 'ema_decay': 0.9,
                        'num_train_steps': 2, **overrides})


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A 2-step run (ResNet-8, EMA) on a folder of 8x8 PNGs: (workdir, data root, config)."""
  base = tmp_path_factory.mktemp('predict')
  root, workdir = base / 'images', base / 'run'
  rng = np.random.default_rng(0)
  _write_split(root, 'train', 32, rng)
  _write_split(root, 'test', 20, rng)
  config = _config(root)
  loop.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  return workdir, root, config


@pytest.fixture(scope='module')
def predictor(run):
  return inference.load(str(run[0]))


def _script(name, argv):
  """Runs the command NAME (predict, export) in this process; returns its exit code."""
  return getattr(inference_cli, name)([name] + list(argv))


def _test_files(root):
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, 'test'))
                for f in fs)


def test_checkpoint_records_the_data(predictor):
  assert predictor.data.image_shape == (8, 8, 3) and not predictor.data.host_preprocess
  assert predictor.class_names == [f'class{i}' for i in range(NUM_CLASSES)]
  assert predictor.uses_ema   # ema_decay > 0: evaluation uses the EMA, so does prediction
  # a checkpoint without meta['data'] (saved before it existed) derives the same from the config
  assert data_info.from_meta({}, predictor.config.data) == predictor.data
  # ... but not a folder's names when its class count is not the model's (they are not its own)
  assert data_info.from_meta({}, predictor.config.data, NUM_CLASSES + 1).class_names is None


def test_non_square_images_train_and_predict_at_their_own_size_with_a_flattened_head(tmp_path):
  """data.image_size=0 keeps 8x12 images 8x12 in training, evaluation and prediction, so the
  head on the flattened map (model.pooling='none') has one input size everywhere."""
  rng = np.random.default_rng(1)
  _write_split(tmp_path / 'images', 'train', 32, rng, width=12)
  _write_split(tmp_path / 'images', 'test', 10, rng, width=12)
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(_config(tmp_path / 'images', **{'model.pooling': 'none'}), workdir,
                          devices=jax.devices()[:1])
  wide = inference.load(workdir)
  assert wide.data.image_shape == (8, 12, 3)
  assert wide.variables['params']['head']['kernel'].shape[0] == 2 * 3 * 16  # an 8x12 input
  files = _test_files(tmp_path / 'images')
  top1 = [top[0][0] for top in wide.predict(files, top_k=1, batch_size=4)]
  images = np.stack([np.asarray(Image.open(f)) for f in files])
  assert top1 == list(np.argmax(np.asarray(wide.apply(wide.variables, images)), axis=-1))


def test_a_predictor_compiles_with_the_eval_steps_options(run, monkeypatch):
  from resnet_flax import compiler
  asked, options = [], compiler.options
  monkeypatch.setattr(compiler, 'options', lambda *a: asked.append(a) or options(*a))
  inference.load(str(run[0]))
  assert [a[2:] for a in asked] == [('eval', 'basic')]   # the run's ResNet-20: basic units


def test_predict_top1_equals_evaluate_image_by_image(run, predictor):
  workdir, root, config = run
  files = _test_files(root)
  top1 = [top[0][0] for top in predictor.predict(files, top_k=1, batch_size=8)]
  # an eval split where every image is filed under the class predict gave it: evaluate then
  # scores 100% top-1 exactly when its argmax agrees with predict's on every image
  for c in range(NUM_CLASSES):
    os.makedirs(root / 'bypred' / f'class{c}', exist_ok=True)
  for i, (path, label) in enumerate(zip(files, top1)):
    shutil.copy(path, root / 'bypred' / f'class{label}' / f'{i:03d}.png')
  eval_config = _config(root, **{'data.eval_split': 'bypred', 'data.on_bad_image': 'skip'})
  step, metrics = loop.evaluate_checkpoint(eval_config, str(workdir),
                                              devices=jax.devices()[:1])
  assert step == 2 and metrics['eval_top1'] == 1.0


def test_evaluate_refuses_data_whose_classes_are_not_the_training_ones(run, tmp_path):
  """Another folder with as many classes under other names (train and test alike, so the two
  splits agree with each other): evaluating the checkpoint there would score its labels against
  other classes, so it is refused in one line naming the first class that differs."""
  workdir, root, _ = run
  other = tmp_path / 'other'
  for split in ('train', 'test'):
    for c in range(NUM_CLASSES):
      source = root / split / f'class{c}'
      shutil.copytree(source, other / split / f'kind{(c + 1) % NUM_CLASSES}')
  with pytest.raises(DataError) as e:
    loop.evaluate_checkpoint(_config(other), str(workdir), devices=jax.devices()[:1])
  message = str(e.value)
  assert "class 0 is 'class0' in the checkpoint and 'kind0' there" in message
  assert 'not those the checkpoint was trained on' in message and '\n' not in message


def test_predict_script_any_size_and_mode_without_tensorflow(run, predictor, tmp_path):
  _, root, _ = run
  rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  images = {'grey.png': Image.fromarray(rgb[..., 0]).resize((13, 9)),
            'rgba.png': Image.fromarray(np.dstack([rgb, np.full((8, 8), 90, np.uint8)])),
            'palette.png': Image.fromarray(rgb).convert('P'),
            'odd.jpg': Image.fromarray(rgb).resize((21, 17)),
            'grey16.png': Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).convert('I;16')}
  paths = []
  for name, image in images.items():
    image.save(tmp_path / name)
    paths.append(str(tmp_path / name))
  # TensorFlow hidden: `import tensorflow` fails in the subprocess
  code = ('import runpy, sys; sys.modules["tensorflow"] = None; '
          f'sys.argv = ["predict.py"] + {["--workdir", str(run[0]), "--json"] + paths!r}; '
          f'runpy.run_path({os.path.join(REPO, "scripts", "predict.py")!r}, run_name="__main__")')
  p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                     cwd=tmp_path, env=subprocess_env())
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(p.stdout)
  assert out['step'] == 2 and out['ema'] and len(out['predictions']) == len(paths)
  for entry in out['predictions']:
    probs = [t['probability'] for t in entry['top']]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert all(t['name'] == f'class{t["class"]}' for t in entry['top'])
  # the RGBA image is its RGB pixels (alpha dropped), as the folder source decodes it
  rgba_top = out['predictions'][1]['top']
  expected = predictor.predict([rgb])[0]
  assert [t['class'] for t in rgba_top] == [c for c, _, _ in expected]
  np.testing.assert_allclose([t['probability'] for t in rgba_top],
                             [p for _, _, p in expected], rtol=1e-5)


def test_predict_script_text_output(run, capsys):
  files = _test_files(run[1])[:2]
  assert _script('predict', ['--workdir', str(run[0]), '--top-k', '3'] + files) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith('checkpoint 2 in ') and 'EMA weights' in lines[0]
  assert lines[1] == f'{files[0]}:' and len(lines) == 1 + 2 * 4
  assert lines[2].strip().split()[1].startswith('class')


def test_missing_checkpoint_is_one_line_and_exit_code_2(run, tmp_path, capsys):
  p = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'predict.py'), '--workdir',
                      str(tmp_path / 'no-such-run'), 'x.png'], capture_output=True, text=True,
                     cwd=tmp_path, env=subprocess_env())
  assert p.returncode == 2 and p.stdout == ''
  assert p.stderr.strip().splitlines() == [
      f'checkpoint error: {tmp_path / "no-such-run"}: no such folder (expected a run workdir, '
      f'its checkpoints folder or a checkpoint folder)']
  (tmp_path / 'empty').mkdir()
  for argv, message in ((['--workdir', str(tmp_path / 'empty')], 'holds no complete checkpoint'),
                        (['--workdir', str(run[0]), '--step', '7'], 'no checkpoint at step 7'),
                        (['--checkpoint', str(run[0] / 'checkpoints')], 'no such file')):
    assert _script('predict', argv + [str(tmp_path / 'missing.png')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
  with pytest.raises(CheckpointError, match='no such folder'):
    inference.load(str(tmp_path / 'nowhere'))


# the reload snippet of docs/INFERENCE.md, in a process where resnet_flax cannot be imported
_RELOAD = '''
import sys
sys.modules['resnet_flax'] = None   # `import resnet_flax` fails from here on
import jax, numpy as np
exported = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))
for name in sys.argv[2:]:
  np.save(name + '.logits.npy', np.asarray(exported.call(np.load(name + '.npy'))))
'''


def test_exported_function_reloads_without_the_package(run, predictor, tmp_path, capsys):
  out = tmp_path / 'export' / 'model.jax'
  assert _script('export', ['--workdir', str(run[0]), '--out', str(out)]) == 0
  assert f'wrote {out}' in capsys.readouterr().out
  info = json.loads((tmp_path / 'export' / 'model.jax.json').read_text())
  assert info['input_shape'] == ['batch', 8, 8, 3] and info['input_dtype'] == 'uint8'
  assert info['class_names'][3] == 'class3' and info['step'] == 2
  rng = np.random.default_rng(2)
  batches = {'three': rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8),
             'five': rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)}
  for name, batch in batches.items():
    np.save(tmp_path / f'{name}.npy', batch)
  (tmp_path / 'reload.py').write_text(_RELOAD)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  p = subprocess.run([sys.executable, 'reload.py', str(out), *batches], capture_output=True,
                     text=True, cwd=tmp_path, env={**env, 'JAX_PLATFORMS': 'cpu'})
  assert p.returncode == 0, p.stderr[-3000:]
  for name, batch in batches.items():
    logits = np.load(tmp_path / f'{name}.logits.npy')
    assert logits.shape == (len(batch), NUM_CLASSES)
    np.testing.assert_allclose(logits, predictor.logits(batch), atol=1e-5, rtol=0)


def test_one_channel_models_get_grey_images():
  data = DataInfo((8, 8, 1), False)
  config = tiny_config().data
  grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
  rgba = Image.fromarray(np.dstack([grey] * 3 + [np.zeros_like(grey)]), 'RGBA')
  for image in (grey, Image.fromarray(grey), rgba, Image.fromarray(grey).convert('RGB')):
    np.testing.assert_array_equal(inference.prepare_image(image, config, data), grey[..., None])
  big = Image.fromarray(np.full((20, 30, 3), 200, np.uint8))
  np.testing.assert_array_equal(inference.prepare_image(big, config, data),
                                np.full((8, 8, 1), 200, np.uint8))
  with pytest.raises(DataError, match='not an image'):
    inference.prepare_image(b'not a png', config, data)


def test_tf_data_eval_presets_without_tensorflow_match_tensorflow():
  """The NumPy/JAX port of the tf.data eval branch equals tf_preprocess on PNGs (to 1 level)."""
  if importlib.util.find_spec('tensorflow') is None:
    pytest.skip('TensorFlow is not installed')
  import tensorflow as tf
  from resnet_flax.data.tf import preprocess as tf_preprocess
  rng = np.random.default_rng(3)
  config = tiny_config().data
  for preset, size, fraction in (('imagenet', 24, 0.875), ('imagenet', 24, 224 / 232),
                                 ('mnist', 32, 0.875), ('cifar', 16, 0.875)):
    config.preprocess, config.eval_crop_fraction = preset, fraction
    fn = tf_preprocess.make(preset, size=size, train=False, crop_fraction=fraction)
    for h, w, mode in ((37, 53, 'RGB'), (61, 29, 'L'), (24, 24, 'RGBA'), (10, 13, 'RGB')):
      y, x = np.mgrid[0:h, 0:w]
      pixels = np.stack([x * 255 // w, y * 255 // h, (x * y) % 256, np.full_like(x, 77)], -1)
      pixels = np.clip(pixels + rng.integers(-20, 21, pixels.shape), 0, 255).astype(np.uint8)
      image = Image.fromarray(pixels, 'RGBA').convert(mode)
      buffer = io.BytesIO()
      image.save(buffer, 'PNG')
      reference = fn(tf.constant(buffer.getvalue()), tf.constant([0, 0], tf.int64)).numpy()
      ours = inference.prepare_image(buffer.getvalue(), config,
                                     DataInfo((size, size, 3), True))
      assert ours.shape == reference.shape
      assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1, (preset, h, w, mode)


def test_saved_model_via_jax2tf(predictor, tmp_path):
  if importlib.util.find_spec('tensorflow') is None:
    with pytest.raises(ExportError, match='needs TensorFlow'):
      exporting.save_saved_model(predictor, str(tmp_path / 'saved'))
    return
  import tensorflow as tf
  exporting.save_saved_model(predictor, str(tmp_path / 'saved'))
  serving = tf.saved_model.load(str(tmp_path / 'saved')).signatures['serving_default']
  for n in (2, 3):
    batch = np.random.default_rng(n).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(serving(images=tf.constant(batch))['logits'].numpy(),
                               predictor.logits(batch), atol=1e-5, rtol=0)
