"""The `folder` source: listing, labels, slicing, decoding, every bad-data error, the trainer on a
folder tree, and the real CIFAR-10 and Imagenette folders (slow)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_config, unpacked_shared
from resnet_flax import config as configuration
from resnet_flax import data
from resnet_flax.config import base_config
from resnet_flax.data import folder
from resnet_flax.errors import ConfigError, DataError
from resnet_flax.train import loop
CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck']


def _color(label: int, index: int) -> tuple[int, int, int]:
  return (40 * label + 10, 20 * index + 5, 200)


def _save(path, size=(8, 8), color=(10, 20, 30), mode='RGB'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.new('RGB', size, color)
  if mode != 'RGB':
    image = image.convert(mode)
  image.save(path)
  return path


def make_tree(root, classes=('cat', 'dog', 'eel'), per_class=3, split='train', size=(8, 8)):
  """ROOT/split/<class>/NN.png (lossless, colour = _color(label, index)); returns root."""
  for label, name in enumerate(sorted(classes)):
    for i in range(per_class):
      _save(os.path.join(root, split, name, f'{i:02d}.png'), size, _color(label, i))
  return str(root)


# --- listing, labels, order, slicing --------------------------------------------------------

def test_labels_class_names_and_order(tmp_path):
  root = tmp_path / 'data'
  # created out of order, mixed extensions and cases, a grey image and files to ignore
  _save(root / 'train' / 'zebra' / 'b.PNG', color=(1, 2, 3))
  _save(root / 'train' / 'zebra' / 'a.jpg', color=(128, 128, 128))
  _save(root / 'train' / 'ant' / 'c.JPEG', color=(250, 0, 0))
  _save(root / 'train' / 'ant' / 'a.png', color=(90, 90, 90), mode='L')
  _save(root / 'train' / 'moth' / 'x.jpeg', color=(0, 250, 0))
  (root / 'train' / 'ant' / 'notes.txt').write_text('not an image')
  (root / 'train' / 'zebra' / '.DS_Store').write_bytes(b'\0\1\2')
  (root / 'train' / 'README.md').write_text('a file beside the class folders is ignored')

  paths, labels, names = folder.list_folder(str(root), 'train')
  assert names == ['ant', 'moth', 'zebra']
  assert [os.path.relpath(p, root / 'train') for p in paths] == [
      'ant/a.png', 'moth/x.jpeg', 'zebra/a.jpg', 'ant/c.JPEG', 'zebra/b.PNG']   # interleaved
  assert labels.dtype == np.int32 and labels.tolist() == [0, 1, 2, 0, 2]

  ds = folder.load_folder(str(root), 'train')
  assert ds.images.dtype == np.uint8 and ds.images.shape == (5, 8, 8, 3)
  assert ds.labels.tolist() == [0, 1, 2, 0, 2]
  assert ds.num_classes == 3 and ds.class_names == ['ant', 'moth', 'zebra']
  np.testing.assert_array_equal(ds.images[0], np.full((8, 8, 3), 90, np.uint8))   # grey -> RGB
  np.testing.assert_array_equal(ds.images[4], np.broadcast_to([1, 2, 3], (8, 8, 3)))  # PNG
  assert np.abs(ds.images[3].astype(int) - [250, 0, 0]).max() <= 8                 # JPEG


def test_order_is_deterministic_and_slices_follow_it(tmp_path):
  root = make_tree(tmp_path / 'a', per_class=4)
  paths, labels, _ = folder.list_folder(root, 'train')
  assert folder.list_folder(root, 'train')[0] == paths
  full = folder.load_folder(root, 'train')
  np.testing.assert_array_equal(folder.load_folder(root, 'train').images, full.images)
  # each image is where its (rank in class, class) puts it: classes interleaved
  for k, (i, label) in enumerate((i, l) for i in range(4) for l in range(3)):
    np.testing.assert_array_equal(full.images[k, 0, 0], _color(label, i))

  half = folder.load_folder(root, 'train[:50%]')   # class-balanced: 2 of each class
  assert len(half) == 6 and half.labels.tolist() == [0, 1, 2] * 2
  assert half.num_classes == 3 and half.class_names == ['cat', 'dog', 'eel']  # all classes
  np.testing.assert_array_equal(half.images, full.images[:6])
  assert folder.list_folder(root, 'train[:50%]')[0] == paths[:6]

  tail = folder.load_folder(root, 'train[2:]')
  assert len(tail) == 10 and tail.labels.tolist() == labels[2:].tolist()
  np.testing.assert_array_equal(tail.images, full.images[2:])
  assert folder.list_folder(root, 'train[-3:]')[0] == paths[-3:]


@pytest.mark.parametrize('spec', ['train[5:2]', 'train[abc]', 'train[:0%]', 'tr ain'])
def test_bad_split_spec_is_a_data_error_naming_root_and_split(tmp_path, spec):
  root = make_tree(tmp_path / 'a')
  with pytest.raises(DataError) as e:
    folder.list_folder(root, spec)
  assert root in str(e.value) and spec in str(e.value)


# --- bad data ------------------------------------------------------------------------------

def test_missing_root(tmp_path):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(DataError, match='no such folder') as e:
    folder.load_folder(missing, 'train')
  assert missing in str(e.value)


def test_imagenet_preset_on_the_device_is_refused_before_any_image_is_decoded(tmp_path,
                                                                              monkeypatch):
  root = make_tree(tmp_path)
  make_tree(tmp_path, split='val')
  decoded = []
  monkeypatch.setattr(folder, 'load_folder', lambda *a, **k: decoded.append(a))
  cfg = base_config().data
  cfg.update({'source': 'folder', 'dir': root, 'eval_split': 'val', 'preprocess': 'imagenet'})
  for backend in ('auto', 'memory'):
    cfg.backend = backend
    with pytest.raises(ConfigError, match=r"preprocess='imagenet'.*data.backend='grain'"):
      data.load_datasets(cfg)
  assert decoded == []


def test_splits_of_two_sizes_need_the_model_size_stated(tmp_path):
  """Evaluation would resize the test images to the training size, prediction would take them
  at their own: with data.image_size=0 two sizes are refused, a stated size is used."""
  from resnet_flax.train.build import build_run
  make_tree(tmp_path, per_class=6, size=(8, 8))
  make_tree(tmp_path, split='test', size=(16, 16))
  config = tiny_config(**{'data.source': 'folder', 'data.dir': str(tmp_path),
                          'data.image_size': 0, 'data.channels': 0, 'model.num_classes': 3})
  for backend in ('memory', 'grain'):   # in memory, or streamed by a host back end
    config.data.backend = backend
    with pytest.raises(ConfigError, match=r"'train' holds 8x8 images and 'test' 16x16: set "
                                          r"--config.data.image_size"):
      build_run(config)
  config.data.image_size = 8
  assert build_run(config).image_shape == (8, 8, 3)


def test_missing_split_lists_the_existing_ones(tmp_path):
  root = make_tree(tmp_path / 'a', split='train')
  make_tree(tmp_path / 'a', split='val')
  with pytest.raises(DataError) as e:
    folder.list_folder(root, 'test')
  message = str(e.value)
  assert os.path.join(root, 'test') in message and 'train, val' in message


def test_split_without_class_folders(tmp_path):
  split = tmp_path / 'a' / 'train'
  _save(split / 'loose.png')             # images directly in the split folder: no classes
  with pytest.raises(DataError, match='no class sub-folders') as e:
    folder.list_folder(str(tmp_path / 'a'), 'train')
  assert str(split) in str(e.value)


def test_empty_class_folder_errors_or_is_kept_with_skip(tmp_path, capsys):
  root = make_tree(tmp_path / 'a', classes=('cat', 'eel'))
  empty = tmp_path / 'a' / 'train' / 'dog'
  empty.mkdir()
  (empty / 'notes.txt').write_text('no images here')
  with pytest.raises(DataError, match='on_bad_image=skip') as e:
    folder.load_folder(root, 'train')
  assert str(empty) in str(e.value)

  ds = folder.load_folder(root, 'train', on_bad='skip')
  assert ds.class_names == ['cat', 'dog', 'eel'] and ds.num_classes == 3
  assert ds.labels.tolist() == [0, 2, 0, 2, 0, 2]          # eel keeps label 2
  assert str(empty) in capsys.readouterr().err


def test_all_classes_empty_errors_even_with_skip(tmp_path):
  (tmp_path / 'a' / 'train' / 'cat').mkdir(parents=True)
  with pytest.raises(DataError) as e:
    folder.load_folder(str(tmp_path / 'a'), 'train', on_bad='skip')
  assert str(tmp_path / 'a' / 'train' / 'cat') in str(e.value)


def _corrupt_tree(tmp_path):
  root = make_tree(tmp_path / 'a')
  train = tmp_path / 'a' / 'train'
  bad = [train / 'cat' / '00b.jpg', train / 'eel' / 'zz.png']
  bad[0].write_bytes(b'this is not a jpeg')                  # a non-image with an image name
  good = (train / 'dog' / '00.png').read_bytes()
  bad[1].write_bytes(good[:len(good) // 2])                  # a truncated PNG
  return root, [str(p) for p in bad]


def test_corrupt_file_errors_naming_it(tmp_path):
  root, bad = _corrupt_tree(tmp_path)
  with pytest.raises(DataError, match='on_bad_image=skip') as e:
    folder.load_folder(root, 'train')
  assert bad[0] in str(e.value)
  assert len(folder.list_folder(root, 'train')[0]) == 11     # listing does not decode


def test_corrupt_files_are_skipped_and_counted(tmp_path, capsys):
  root, bad = _corrupt_tree(tmp_path)
  ds = folder.load_folder(root, 'train', on_bad='skip')
  assert len(ds) == 9 and sorted(ds.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  err = capsys.readouterr().err
  assert 'skipped 2 unreadable files' in err and bad[0] in err
  assert err.count('\n') == 1                                # one summary line


def test_first_corrupt_file_is_reported_from_the_thread_pool(tmp_path, monkeypatch):
  """With many small chunks decoded in parallel, the error still names the first bad file."""
  monkeypatch.setattr(folder, 'SERIAL_BELOW', 1)
  monkeypatch.setattr(folder, 'MAX_CHUNK', 2)
  monkeypatch.setattr(folder, 'default_workers', lambda: 3)
  root = make_tree(tmp_path / 'a', per_class=8)
  train = tmp_path / 'a' / 'train'
  (train / 'dog' / '03.png').write_bytes(b'garbage')
  (train / 'eel' / '05.png').write_bytes(b'garbage')
  with pytest.raises(DataError) as e:
    folder.load_folder(root, 'train')
  assert str(train / 'dog' / '03.png') in str(e.value)
  ds = folder.load_folder(root, 'train', on_bad='skip')
  assert len(ds) == 22
  np.testing.assert_array_equal(ds.images[:8, 0, 0], [_color(k % 3, k // 3) for k in range(8)])


def test_different_sizes_error_or_resize(tmp_path):
  root = make_tree(tmp_path / 'a')
  odd = _save(tmp_path / 'a' / 'train' / 'dog' / '01b.png', size=(12, 10))
  with pytest.raises(DataError, match='data.image_size') as e:
    folder.load_folder(root, 'train')
  assert str(odd) in str(e.value) and '12x10' in str(e.value)

  ds = folder.load_folder(root, 'train', image_size=6)
  assert ds.images.shape == (10, 6, 6, 3) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.images[0], np.broadcast_to(_color(0, 0), (6, 6, 3)))
  # one size that is not the stored one is kept as stored
  assert folder.load_folder(make_tree(tmp_path / 'b'), 'train').images.shape[1:] == (8, 8, 3)


def test_image_modes_become_rgb(tmp_path):
  train = tmp_path / 'a' / 'train' / 'x'
  train.mkdir(parents=True)
  Image.new('RGBA', (8, 8), (10, 200, 30, 100)).save(train / 'rgba.png')
  palette = Image.new('RGB', (8, 8), (5, 6, 7)).convert('P', palette=Image.Palette.ADAPTIVE)
  palette.save(train / 'p.png')
  Image.new('CMYK', (8, 8), (0, 0, 0, 0)).save(train / 'cmyk.jpg')
  Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(train / 'grey16.png')
  Image.new('1', (8, 8), 1).save(train / 'bw.png')
  Image.new('LA', (8, 8), (77, 255)).save(train / 'la.png')
  ds = folder.load_folder(str(tmp_path / 'a'), 'train')
  names = [os.path.basename(p) for p in folder.list_folder(str(tmp_path / 'a'), 'train')[0]]
  got = {n: ds.images[i, 0, 0].tolist() for i, n in enumerate(names)}
  assert got['rgba.png'] == [10, 200, 30]
  assert got['p.png'] == [5, 6, 7]
  assert min(got['cmyk.jpg']) >= 245                        # CMYK 0,0,0,0 is white
  assert got['grey16.png'] == [255, 255, 255]
  assert got['bw.png'] == [255, 255, 255]
  assert got['la.png'] == [77, 77, 77]
  assert folder.load_folder(str(tmp_path / 'a'), 'train', image_size=4).images.shape == (
      6, 4, 4, 3)


def test_folder_module_needs_no_tensorflow(tmp_path):
  root = make_tree(tmp_path / 'a')
  code = ('import sys; sys.modules["tensorflow"] = None\n'   # any TF import would fail
          'from resnet_flax.data import folder\n'
          f'ds = folder.load_folder({root!r}, "train")\n'
          'assert ds.images.shape == (9, 8, 8, 3)\n'
          'assert not any(m.split(".")[0] == "tensorflow" and sys.modules[m] is not None\n'
          '               for m in sys.modules)\n')
  p = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]


# --- data.load_datasets and the config --------------------------------------------------------

def _data_cfg(**overrides):
  c = base_config().data
  c.source = 'folder'
  c.update(overrides)
  return c


def test_load_datasets_reads_both_splits(tmp_path):
  root = make_tree(tmp_path / 'a', per_class=4)
  make_tree(tmp_path / 'a', per_class=2, split='test')
  train, test = data.load_datasets(_data_cfg(dir=root))
  assert (len(train), len(test)) == (12, 6)
  assert train.class_names == test.class_names == ['cat', 'dog', 'eel']


def test_load_datasets_rejects_different_class_lists(tmp_path):
  root = make_tree(tmp_path / 'a', classes=('cat', 'dog', 'eel'))
  make_tree(tmp_path / 'a', classes=('cat', 'dog', 'fox'), split='test')
  with pytest.raises(DataError) as e:
    data.load_datasets(_data_cfg(dir=root))
  message = str(e.value)
  assert root in message and "only in 'train': eel" in message
  assert "only in 'test': fox" in message


@pytest.mark.parametrize('where', ['', 'missing'])
def test_folder_source_without_a_dir_names_data_dir(tmp_path, where):
  path = str(tmp_path / where) if where else ''
  with pytest.raises(DataError, match='data.dir') as e:
    data.load_datasets(_data_cfg(dir=path))
  if where:
    assert path in str(e.value)
  else:
    assert 'data.source=folder needs data.dir' in str(e.value)


def test_on_bad_image_passes_through_and_is_validated(tmp_path):
  root, bad = _corrupt_tree(tmp_path)
  make_tree(tmp_path / 'a', split='test')
  with pytest.raises(DataError):
    data.load_datasets(_data_cfg(dir=root))
  train, _ = data.load_datasets(_data_cfg(dir=root, on_bad_image='skip'))
  assert len(train) == 9
  c = base_config()
  assert c.data.on_bad_image == 'error'
  c.data.on_bad_image = 'ignore'
  with pytest.raises(ConfigError, match='data.on_bad_image'):
    configuration.validate(c)


def _tiny_config(root):
  """The training tests' ResNet-8 (width 4) on a folder tree of 16x16 images in 4 classes."""
  return tiny_config(**{'model.num_classes': 4, 'data.source': 'folder', 'data.dir': str(root),
                        'data.image_size': 0, 'data.channels': 0})


def test_trainer_runs_on_a_folder_tree(tmp_path):
  classes = ('a', 'b', 'c', 'd')
  root = make_tree(tmp_path / 'data', classes=classes, per_class=8, size=(16, 16))
  make_tree(tmp_path / 'data', classes=classes, per_class=3, split='test', size=(16, 16))
  workdir = tmp_path / 'run'
  results = loop.train_and_evaluate(_tiny_config(root), str(workdir))
  saved = json.load(open(workdir / 'results.json'))
  assert saved['steps'] == results['steps'] == 2
  assert np.isfinite(saved['eval_loss']) and 0.0 <= saved['eval_top1'] <= 1.0


# --- the real folders (slow) ----------------------------------------------------------------

@pytest.mark.slow
def test_cifar10_folder(capsys):
  root = unpacked_shared('cifar10-jpeg')
  counts = {}
  for split, per_class in (('train', 5000), ('test', 1000)):
    paths, labels, names = folder.list_folder(root, split)
    assert names == CIFAR10_CLASSES
    assert len(paths) == 10 * per_class and np.bincount(labels).tolist() == [per_class] * 10
    counts[split] = len(paths)
  assert counts == {'train': 50_000, 'test': 10_000}

  start = time.perf_counter()
  train = folder.load_folder(root, 'train')
  test = folder.load_folder(root, 'test')
  seconds = time.perf_counter() - start
  with capsys.disabled():
    print(f'\ncifar10-jpeg: decoded 60,000 images in {seconds:.1f} s '
          f'({60_000 / seconds:,.0f} images/s, {folder.default_workers()} threads)')
  for ds, n in ((train, 50_000), (test, 10_000)):
    assert ds.images.shape == (n, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.class_names == CIFAR10_CLASSES
  assert 100 < train.images.mean() < 140 and train.images.std() > 40
  np.testing.assert_array_equal(folder.load_folder(root, 'train[:2000]').images,
                                train.images[:2000])
  # the paper's 45k/5k split keeps the class balance (class-interleaved file order)
  labels = folder.list_folder(root, 'train[:45000]')[1]
  assert np.bincount(labels).tolist() == [4500] * 10


@pytest.mark.slow
def test_imagenette_folder():
  root = unpacked_shared('imagenette-128')
  train = folder.list_folder(root, 'train')
  val = folder.list_folder(root, 'val')
  assert (len(train[0]), len(val[0])) == (9469, 3925)
  assert train[2] == val[2] and len(val[2]) == 10 and val[2][0] == 'n01440764'
  ds = folder.load_folder(root, 'val[:64]')
  assert ds.images.shape == (64, 128, 128, 3) and ds.images.dtype == np.uint8
  assert ds.num_classes == 10 and ds.labels.tolist() == (list(range(10)) * 7)[:64]
