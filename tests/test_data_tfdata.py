"""The tf.data back end (`resnet_flax.data.tf`): TFDS (mocked, and a tiny
dataset really prepared offline) and image folders, per-process shares, exact resume,
preprocessing presets, bad data, and a short training run.

The tests run offline (no TFDS downloads): `tfds.testing.mock_data` stands in for cifar10 and
imagenet2012. The mock ignores split slicing (every split and slice yields the same
`num_examples` examples), so shares and resume are tested on `resnet_flax_tiny_images`, a
builder defined below and prepared into a temporary data_dir (a real TFRecord dataset, read
through the real TFDS reader).
"""

import collections
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')
PIL_Image = pytest.importorskip('PIL.Image')

from conftest import REPO, subprocess_env, tiny_config  # noqa: E402
from resnet_flax.data.tf import preprocess as tf_preprocess  # noqa: E402
from resnet_flax.data.tf import source as tf_source  # noqa: E402
from resnet_flax.data.tf import tfds as tfds_lib  # noqa: E402
from resnet_flax.errors import DataError  # noqa: E402
from resnet_flax.train import loop  # noqa: E402
from resnet_flax.train.build import build_run  # noqa: E402

TINY = 'resnet_flax_tiny_images'
TINY_SPLITS = {'train': (0, 50), 'test': (50, 73)}   # example ids (= labels) of each split


def _tiny_value(i: int) -> int:
  return (i * 3) % 256        # every pixel of example i (label i)


class ResnetFlaxTinyImages(tfds.core.GeneratorBasedBuilder):
  """Constant-colour JPEGs of odd sizes; label = example id, pixel value = 3 * id."""
  VERSION = tfds.core.Version('1.0.0')
  # TFDS looks for a dotted module's files with importlib_resources (not installed here)
  __module__ = __name__.rsplit('.', 1)[-1]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'id': tfds.features.Text(),
        'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
        'label': tfds.features.ClassLabel(num_classes=100)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {name: self._generate_examples(*ids) for name, ids in TINY_SPLITS.items()}

  def _generate_examples(self, lo, hi):
    rng = np.random.default_rng(lo)
    for i in range(lo, hi):
      h, w = rng.integers(20, 60, 2)
      yield i, {'id': str(i), 'image': np.full((h, w, 3), _tiny_value(i), np.uint8), 'label': i}


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = tfds.builder(TINY, data_dir=data_dir)
  # several files per split, so file shuffling and interleaving take part
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=4))
  assert builder.info.splits['train'].num_shards == 4
  return data_dir


def tiny(data_dir, split='train', **options):
  options.setdefault('preprocess', 'imagenet')
  options.setdefault('image_size', 16)
  return tf_source.TFDataSource.from_tfds(TINY, split, data_dir=data_dir, **options)


def assert_pairs(batch, mask=None):
  """Each tiny-dataset image still shows its own label's colour (JPEG: within a few levels)."""
  keep = np.ones(len(batch['label']), bool) if mask is None else mask > 0
  if not keep.any():
    return
  means = batch['image'][keep].reshape(keep.sum(), -1).mean(axis=1)
  want = [_tiny_value(int(i)) for i in batch['label'][keep]]
  np.testing.assert_allclose(means, want, atol=4)


def epoch_labels(source, seed, process_index, process_count, global_batch):
  tb = source.train_batches(global_batch, seed, process_index, process_count)
  return np.concatenate([tb.batch(k)['label'] for k in range(tb.steps_per_epoch)])


def eval_ids(source, global_batch, process_index, process_count):
  out = []
  for b in source.eval_batches(global_batch, process_index, process_count):
    assert_pairs(b, b['mask'])
    out.extend(b['label'][b['mask'] > 0].tolist())
  return out


# --- TFDS through tfds.testing.mock_data ---------------------------------------------------

def check_batch(batch, batch_size, shape, num_classes, process_index=0):
  assert batch['image'].dtype == np.uint8 and batch['image'].shape == (batch_size,) + shape
  assert batch['label'].dtype == np.int32 and batch['label'].shape == (batch_size,)
  assert batch['label'].min() >= 0 and batch['label'].max() < num_classes
  np.testing.assert_array_equal(
      batch['position'], np.arange(batch_size) + process_index * batch_size)
  assert batch['position'].dtype == np.int32


def test_mock_cifar10_batches_and_global_array():
  with tfds.testing.mock_data(num_examples=40):
    train = tf_source.TFDataSource.from_tfds('cifar10', 'train', preprocess='cifar')
    assert train.preprocess == 'cifar' and train.augmented_on_host
    assert train.image_shape == (32, 32, 3) and train.num_classes == 10
    assert train.num_examples == 40
    tb = train.train_batches(16, seed=0)
    assert tb.steps_per_epoch == 2
    batch = tb.batch(0)
    check_batch(batch, 16, (32, 32, 3), 10)
    check_batch(train.train_batches(16, 0, 1, 2).batch(0), 8, (32, 32, 3), 10, process_index=1)
    evals = list(tf_source.TFDataSource.from_tfds('cifar10', 'test', preprocess='cifar')
                 .eval_batches(16))
  assert len(evals) == 3 and sum(b['mask'].sum() for b in evals) == 40
  assert evals[-1]['mask'].tolist() == [1.0] * 8 + [0.0] * 8

  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  images = jax.make_array_from_process_local_data(sharding, batch['image'])
  assert images.shape == (16, 32, 32, 3) and images.dtype == np.uint8
  assert len(images.addressable_shards) == jax.device_count() == 8
  assert {s.device for s in images.addressable_shards} == set(jax.devices())
  assert all(s.data.shape == (2, 32, 32, 3) for s in images.addressable_shards)
  np.testing.assert_array_equal(np.asarray(images), batch['image'])


def test_mock_imagenet2012_at_64px():
  # USE_CODE: no metadata files and no manual ILSVRC tars needed; random JPEGs of 5-50 px
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    source = tf_source.TFDataSource.from_tfds('imagenet2012', 'train', preprocess='imagenet',
                                              image_size=64)
    assert source.preprocess == 'imagenet' and source.image_shape == (64, 64, 3)
    assert source.num_classes == 1000
    tb = source.train_batches(8, seed=3)
    for step in range(3):
      check_batch(tb.batch(step), 8, (64, 64, 3), 1000)
    evals = list(tf_source.TFDataSource.from_tfds('imagenet2012', 'validation',
                                                  preprocess='imagenet',
                                                  image_size=64).eval_batches(16, 0, 2))
  assert len(evals) == 2 and sum(b['mask'].sum() for b in evals) == 12
  assert evals[0]['image'].shape == (8, 64, 64, 3)
  assert evals[0]['position'].tolist() == list(range(8))


# --- a prepared TFDS dataset: shares, resume, errors ---------------------------------------

def test_tfds_shares_are_disjoint_and_cover_the_split(tiny_dir):
  # the prepared files hold the examples in a shuffled order: train[:5] is 5 examples of any id
  first5 = eval_ids(tiny(tiny_dir, 'train[:5]'), 5, 0, 1)
  for split, global_batch in (('test', 8), ('train[5:]', 4)):   # 23 and 45: uneven shares
    source = tiny(tiny_dir, split)
    expected = (list(range(*TINY_SPLITS['test'])) if split == 'test' else
                sorted(set(range(*TINY_SPLITS['train'])) - set(first5)))
    n = len(expected)
    assert source.num_examples == n
    shares = [eval_ids(source, global_batch, p, 2) for p in range(2)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == expected                # each example once
    assert [len(s) for s in shares] == [n // 2, n - n // 2]
    # eval: both processes yield the same number of batches
    counts = [len(list(source.eval_batches(global_batch, p, 2))) for p in range(2)]
    assert counts[0] == counts[1] == -(-(n - n // 2) // (global_batch // 2))
    # train: each process reads only its own share
    for p in range(2):
      labels = epoch_labels(source, 0, p, 2, global_batch)
      assert set(labels) <= set(shares[p]) and len(set(labels)) == len(labels)
      tb = source.train_batches(global_batch, 0, p, 2)
      assert tb.steps_per_epoch == (n // 2) // (global_batch // 2) == n // global_batch


def test_tfds_resume_and_seeds(tiny_dir):
  source = tiny(tiny_dir, shuffle_buffer=16)
  tb = source.train_batches(8, seed=1)
  assert tb.steps_per_epoch == 6
  run = [tb.batch(k) for k in range(9)]                  # into the second epoch
  for b in run:
    check_batch(b, 8, (16, 16, 3), 100)
    assert_pairs(b)
  for k in (0, 4, 6, 8):                                 # a fresh source jumps to step k
    fresh = tiny(tiny_dir, shuffle_buffer=16).train_batches(8, seed=1).batch(k)
    for key in ('image', 'label', 'position'):
      np.testing.assert_array_equal(fresh[key], run[k][key])
  np.testing.assert_array_equal(tb.batch(2)['image'], run[2]['image'])   # backwards, too
  np.testing.assert_array_equal(tb.batch(3)['label'], run[3]['label'])   # and on from there
  assert not np.array_equal(run[0]['label'], run[6]['label'])            # epochs differ
  other = tiny(tiny_dir, shuffle_buffer=16).train_batches(8, seed=2)
  assert not np.array_equal(np.concatenate([other.batch(k)['label'] for k in range(3)]),
                            np.concatenate([b['label'] for b in run[:3]]))
  # each epoch uses steps_per_epoch * batch distinct examples
  epoch0 = np.concatenate([b['label'] for b in run[:6]])
  assert len(set(epoch0)) == 48 and set(epoch0) <= set(range(50))


def test_tfds_cache_gives_the_same_stream_on_resume(tiny_dir):
  cached = tiny(tiny_dir, split='train[:40]', cache=True, shuffle_buffer=10)
  tb = cached.train_batches(8, seed=0, process_index=1, process_count=2)
  run = [tb.batch(k)['label'] for k in range(7)]
  again = tiny(tiny_dir, split='train[:40]', cache=True, shuffle_buffer=10).train_batches(
      8, seed=0, process_index=1, process_count=2)
  for k in (6, 1):
    np.testing.assert_array_equal(again.batch(k)['label'], run[k])
  assert sorted(eval_ids(cached, 8, 0, 2) + eval_ids(cached, 8, 1, 2)) == sorted(
      eval_ids(tiny(tiny_dir, split='train[:40]'), 8, 0, 1))


def test_tfds_errors(tiny_dir, tmp_path):
  with pytest.raises(DataError, match=r'not prepared in data_dir .*tfds build '
                                      r'resnet_flax_tiny_images'):
    tiny(str(tmp_path))
  with pytest.raises(DataError, match=r'ILSVRC2012_img_train\.tar.*tfds build imagenet2012 '
                                      r'--data_dir=.* --manual_dir='):
    tf_source.TFDataSource.from_tfds('imagenet2012', 'train', data_dir=str(tmp_path))
  with pytest.raises(DataError, match=r"no split 'validation'; its splits: test, train"):
    tiny(tiny_dir, 'validation')
  with pytest.raises(DataError, match=r"selects no examples"):
    tiny(tiny_dir, 'train[50:]')
  with pytest.raises(DataError, match=r"bound 60 lies outside the 50 examples"):
    tiny(tiny_dir, 'train[60:]')
  with pytest.raises(DataError, match=r"data.name='cifar_10': .*did you mean cifar10"):
    tfds_lib.open_builder('cifar_10')
  with pytest.raises(DataError, match=r"data.image_key='picture'.*Image features: image"):
    tiny(tiny_dir, image_key='picture')
  with pytest.raises(ValueError, match='fewer than one batch'):
    tiny(tiny_dir, 'test').train_batches(32, 0)


# --- image folders -------------------------------------------------------------------------

CLASS_VALUES = {'ant': 40, 'bee': 120, 'cat': 200}


def make_folder(root, per_class=(7, 5), size=None):
  """ROOT/{train,val}/<class>/: PNG and JPEG files of odd sizes, grey, RGB and RGBA."""
  rng = np.random.default_rng(0)
  for split, n in zip(('train', 'val'), per_class):
    for name, value in CLASS_VALUES.items():
      os.makedirs(os.path.join(root, split, name))
      for i in range(n):
        h, w = (size, size) if size else rng.integers(12, 40, 2)
        image = PIL_Image.fromarray(np.full((h, w, 3), value, np.uint8))
        kind = i % 3
        if kind == 1:
          image = image.convert('L')
        path = os.path.join(root, split, name, f'{i:02d}')
        if kind == 2:
          image.convert('RGBA').save(path + '.png')
        else:
          image.save(path + ('.jpg' if i % 2 else '.png'))
  return str(root)


def assert_class_colours(batch, mask=None):
  keep = np.ones(len(batch['label']), bool) if mask is None else mask > 0
  names = sorted(CLASS_VALUES)
  want = np.array([CLASS_VALUES[names[i]] for i in batch['label'][keep]])
  got = batch['image'][keep].reshape(keep.sum(), -1, 3).mean(axis=1)
  np.testing.assert_allclose(got, np.repeat(want[:, None], 3, 1), atol=4)


def test_folder_batches_shares_and_resume(tmp_path):
  root = make_folder(tmp_path / 'tree')
  train = tf_source.TFDataSource.from_folder(root, 'train', image_size=16)
  assert train.num_examples == 21 and train.class_names == sorted(CLASS_VALUES)
  assert train.image_shape == (16, 16, 3) and train.preprocess == 'none'
  tb = train.train_batches(4, seed=0, process_index=1, process_count=2)
  assert tb.steps_per_epoch == 5        # shares of 10 and 11 examples, local batch 2
  run = [tb.batch(k) for k in range(12)]
  for b in run:
    check_batch(b, 2, (16, 16, 3), 3, process_index=1)
    assert_class_colours(b)
  fresh = tf_source.TFDataSource.from_folder(root, 'train', image_size=16).train_batches(
      4, seed=0, process_index=1, process_count=2)
  for k in (11, 5, 7):
    np.testing.assert_array_equal(fresh.batch(k)['image'], run[k]['image'])
  cached = tf_source.TFDataSource.from_folder(root, 'train', image_size=16, cache=True,
                                           shuffle_buffer=4)
  tb = cached.train_batches(4, seed=0, process_index=1, process_count=2)
  run = [tb.batch(k)['label'] for k in range(7)]
  again = tf_source.TFDataSource.from_folder(root, 'train', image_size=16, cache=True,
                                          shuffle_buffer=4).train_batches(4, 0, 1, 2)
  np.testing.assert_array_equal(again.batch(6)['label'], run[6])
  share = collections.Counter(l for b in cached.eval_batches(4, 1, 2)
                              for l, m in zip(b['label'], b['mask']) if m)
  epoch0 = collections.Counter(np.concatenate(run[:5]).tolist())
  assert sum(share.values()) == 11 and sum(epoch0.values()) == 10
  assert not epoch0 - share                 # the epoch draws from this process's share only

  val = tf_source.TFDataSource.from_folder(root, 'val', preprocess='imagenet', image_size=8)
  seen = []
  for p in range(2):
    batches = list(val.eval_batches(4, p, 2))
    assert len(batches) == 4                         # ceil(8 / 2): 15 examples -> 7 and 8
    for b in batches:
      assert_class_colours(b, b['mask'])
      seen.extend(b['label'][b['mask'] > 0].tolist())
  assert sorted(seen) == [0] * 5 + [1] * 5 + [2] * 5


def test_folder_bad_files(tmp_path):
  root = make_folder(tmp_path / 'tree', size=12)
  bad = os.path.join(root, 'train', 'bee', '03.jpg')
  with open(bad, 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0 truncated, not a JPEG')
  source = tf_source.TFDataSource.from_folder(root, 'train')     # decodes nothing yet
  assert source.image_shape == (12, 12, 3)
  with pytest.raises(DataError, match=rf'{re.escape(bad)}: cannot be decoded as an image '
                                      r'.*on_bad_image=skip'):
    tb = source.train_batches(21, seed=0)
    tb.batch(0)
  with pytest.raises(DataError, match=rf'{re.escape(bad)}: cannot be decoded'):
    list(source.eval_batches(6))

  skipping = tf_source.TFDataSource.from_folder(root, 'train', on_bad='skip')
  assert skipping.num_examples == 20
  labels = np.concatenate([b['label'] for b in skipping.eval_batches(20)])
  assert sorted(labels) == [0] * 7 + [1] * 6 + [2] * 7

  os.remove(bad)
  PIL_Image.new('RGB', (13, 12)).save(os.path.join(root, 'train', 'cat', '99.png'))
  with pytest.raises(DataError, match=r'99\.png: is 13x12, but the images of this split are '
                                      r'12x12.*data.image_size'):
    list(tf_source.TFDataSource.from_folder(root, 'train').eval_batches(7))
  assert tf_source.TFDataSource.from_folder(root, 'train', image_size=12).num_examples == 21


# --- presets -------------------------------------------------------------------------------

def _png(array) -> bytes:
  return tf.io.encode_png(array).numpy()


def _run(preset, encoded, train, size, key=(1, 2), **options):
  fn = tf_preprocess.make(preset, size=size, train=train, **options)
  return fn(tf.constant(encoded), tf.constant(key, tf.int64)).numpy()


def test_presets():
  # imagenet eval keeps the central 0.875: a 4-pixel black frame around white disappears
  framed = np.zeros((90, 90, 3), np.uint8)
  framed[4:-4, 4:-4] = 255
  jpeg = tf.io.encode_jpeg(framed, quality=100).numpy()
  for encoded, lowest in ((_png(framed), 255), (jpeg, 235)):   # JPEG: ringing at the frame
    out = _run('imagenet', encoded, train=False, size=16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out.min() >= lowest
  # data.eval_crop_fraction=1 keeps the whole image: the frame stays, darkening the border
  whole = _run('imagenet', _png(framed), train=False, size=16, crop_fraction=1.0)
  assert whole[0].max() < 128 and whole[:, 0].max() < 128 and whole[8, 8].min() == 255
  # imagenet train: random crops, the same for the same key, different for others
  ramp = np.tile(np.arange(0, 240, 3, dtype=np.uint8)[None, :, None], (60, 1, 3))
  jpeg = tf.io.encode_jpeg(ramp).numpy()
  outs = [_run('imagenet', jpeg, True, 24, key=(0, k)) for k in range(6)]
  assert all(o.shape == (24, 24, 3) for o in outs)
  np.testing.assert_array_equal(outs[0], _run('imagenet', jpeg, True, 24, key=(0, 0)))
  assert len({o.tobytes() for o in outs}) == 6
  # PNG and JPEG bytes of one image get the same window (the pixels differ by compression)
  png = _run('imagenet', _png(ramp), True, 24, key=(0, 3)).astype(int)
  assert np.abs(png - outs[3]).mean() < 3

  # cifar: pad 4 and crop back; eval unchanged; grey becomes RGB
  image = np.random.default_rng(0).integers(1, 256, (32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(_run('cifar', _png(image), False, 32), image)
  crops = [_run('cifar', _png(image), True, 32, key=(5, k)) for k in range(8)]
  assert all(c.shape == (32, 32, 3) for c in crops)
  assert any((c == 0).all(axis=-1).any() for c in crops)        # some window hits the padding
  grey = np.full((28, 28, 1), 77, np.uint8)
  mnist = _run('mnist', _png(grey), True, 32)
  assert mnist.shape == (32, 32, 3) and (mnist[2:30, 2:30] == 77).all()
  assert mnist[:2].max() == 0 and mnist[:, 30:].max() == 0
  rgba = np.concatenate([image, np.zeros((32, 32, 1), np.uint8)], axis=-1)
  np.testing.assert_array_equal(_run('none', _png(rgba), False, 32), image)


# --- wiring --------------------------------------------------------------------------------

def test_package_import_does_not_import_tensorflow():
  code = ('import sys, resnet_flax, resnet_flax.data, resnet_flax.train.loop, '
          'resnet_flax.cli.train; print(sorted(m for m in sys.modules if m.split(".")[0] in '
          '("tensorflow", "tensorflow_datasets")))')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                       check=True, env=subprocess_env())
  assert out.stdout.strip() == '[]'


def _tfds_config(name, **overrides):
  config = tiny_config(**{'data.source': 'tfds', 'data.name': name, 'data.random_crop_pad': 0,
                          'data.random_flip': False, **overrides})
  if 'backend' in config.data:
    config.data.backend = 'auto'
  return config


def test_train_steps_on_mock_cifar10():
  config = _tfds_config('cifar10', **{'data.preprocess': 'cifar'})   # 32 px -> 8 px on the host
  with tfds.testing.mock_data(num_examples=48):
    run = build_run(config)
    assert run.plan.steps_per_epoch == run.train_batches.steps_per_epoch == 3
    state = run.state
    for step in range(2):
      state, metrics = run.p_train(state, run.par.put_batch(run.train_batches.batch(step)))
    assert np.isfinite(float(run.par.host_metrics(metrics)['loss_sum']))
    result = loop.evaluate(state, run.p_eval, run.par, run.eval_ds, 16)
  assert np.isfinite(result['eval_loss']) and 0.0 <= result['eval_top1'] <= 1.0


def test_train_and_evaluate_on_a_prepared_tfds_dataset(tiny_dir, tmp_path):
  # a real (not mocked) TFDS dataset: mock_data swaps the file system while it builds a
  # pipeline, which would race with the trainer's asynchronous checkpoint writes
  config = _tfds_config(TINY, **{'data.dir': tiny_dir, 'data.preprocess': 'imagenet',
                                 'data.eval_split': 'test', 'model.num_classes': 100})
  results = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['steps'] == 2
  assert np.isfinite(results['eval_loss']) and 0.0 <= results['eval_top1'] <= 1.0
