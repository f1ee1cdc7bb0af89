"""In-memory sources (digits, npz, synthetic) and the split slicing every source shares."""


import numpy as np
import pytest

from conftest import shared_data, tiny_config
from resnet_flax.config import base_config
from resnet_flax.data import arrays, splits
from resnet_flax.errors import ConfigError, DataError
from resnet_flax.train.build import build_run


def _data_cfg(**fields):
  c = base_config().data
  c.update(fields)
  return c


def test_mnist_npz_has_60000_train_and_10000_test_examples():
  cfg = _data_cfg(source='npz', dir=shared_data('mnist.npz'))
  train, test = arrays.load(cfg, 'train'), arrays.load(cfg, 'test')
  assert (len(train), len(test)) == (60_000, 10_000)
  assert train.images.shape == (60_000, 28, 28, 1) and train.images.dtype == np.uint8
  assert train.num_classes == test.num_classes == 10
  np.testing.assert_array_equal(np.bincount(test.labels), [980, 1135, 1032, 1010, 982, 892,
                                                           958, 1028, 974, 1009])


def test_digits_split_is_fixed_and_disjoint():
  cfg = _data_cfg(source='digits')
  train, test = arrays.load(cfg, 'train'), arrays.load(cfg, 'test')
  assert (len(train), len(test)) == (1348, 449)
  train_rows = {row.tobytes() for row in train.images}
  assert sum(row.tobytes() in train_rows for row in test.images) < 10   # few exact duplicates
  again = arrays.load(cfg, 'test')
  np.testing.assert_array_equal(again.images, test.images)


@pytest.mark.parametrize('spec,n,expected', [
    ('train', 50_000, (0, 50_000)), ('train[:45000]', 50_000, (0, 45_000)),
    ('train[45000:]', 50_000, (45_000, 50_000)), ('train[:10%]', 50_000, (0, 5_000)),
    ('test[-1000:]', 10_000, (9_000, 10_000)), ('val[2:5]', 10, (2, 5))])
def test_split_slicing(spec, n, expected):
  name, index = splits.select(spec, n)
  assert name == spec.split('[')[0]
  assert (index.start, index.stop) == expected


@pytest.mark.parametrize('spec', ['train[', 'train[a:b]', 'train[5:5]'])
def test_bad_split_strings_are_errors(spec):
  with pytest.raises(ValueError, match='split'):
    splits.select(spec, 10)


@pytest.mark.parametrize('spec,bound', [('train[:45000]', '45000'), ('train[:150%]', '150%'),
                                        ('train[-20000:]', '-20000'), ('train[12000:]', '12000')])
def test_a_bound_beyond_the_examples_is_an_error_not_a_shorter_split(spec, bound):
  with pytest.raises(ValueError, match=rf'bound {bound} lies outside the 10000 examples'):
    splits.select(spec, 10_000)
  assert len(splits.select('train[:10000]', 10_000)[1]) == 10_000       # the edge is inside
  assert len(splits.select('train[-10000:]', 10_000)[1]) == 10_000


def test_a_fractional_bound_and_an_overlong_in_memory_split_are_one_line_errors():
  with pytest.raises(ValueError, match=r"bound '4.5' is neither a whole number"):
    splits.select('train[:4.5]', 10)
  with pytest.raises(DataError, match=r"data.source=digits: split 'test\[2000:\]': the bound "
                                      r"2000 lies outside the 449 examples"):
    arrays.load(_data_cfg(source='digits'), 'test[2000:]')


def _npz(path, y_train, y_test):
  np.savez(path, x_train=np.zeros((len(y_train), 4, 4), np.uint8), y_train=np.asarray(y_train),
           x_test=np.zeros((len(y_test), 4, 4), np.uint8), y_test=np.asarray(y_test))
  return str(path)


def test_a_single_npy_array_and_a_mean_per_other_channel_count_are_one_line_errors(tmp_path):
  np.save(tmp_path / 'x.npy', np.zeros((4, 4), np.uint8))
  with pytest.raises(DataError, match=r'x.npy: cannot be read as .npz \(a single array, not an '
                                      r'.npz archive'):
    arrays.load(_data_cfg(source='npz', dir=str(tmp_path / 'x.npy')), 'train')
  path = _npz(tmp_path / 'grey.npz', list(range(10)) * 2, list(range(10)))
  config = tiny_config(**{'data.source': 'npz', 'data.dir': path, 'data.image_size': 0,
                          'data.channels': 0, 'data.random_crop_pad': 0,
                          'data.mean': (1.0, 2.0, 3.0), 'data.std': (1.0, 1.0, 1.0)})
  with pytest.raises(ConfigError, match=r'have 3 values for 1-channel images: give 1 value, or '
                                        r'1 per channel'):
    build_run(config)


def test_negative_npz_label_names_the_file(tmp_path):
  path = _npz(tmp_path / 'bad.npz', [0, 1, -1], [0, 1])
  with pytest.raises(DataError, match='bad.npz.*negative label'):
    arrays.load(_data_cfg(source='npz', dir=path), 'train')


def test_npz_label_beyond_the_model_classes_is_a_config_error(tmp_path):
  """A label 10 in data meant for 10 classes: the run stops before compiling, naming the first
  example that does not fit and the fix (num_classes)."""
  import jax
  path = _npz(tmp_path / 'eleven.npz', list(range(10)) * 3 + [10] * 2, list(range(10)))
  config = tiny_config(**{'data.source': 'npz', 'data.dir': path, 'data.image_size': 0,
                          'data.channels': 0, 'data.random_crop_pad': 0})
  with pytest.raises(ConfigError, match=r'example 30 .*has label 10, outside \[0, 10\).*'
                                        r'num_classes=11 if the data has 11 classes'):
    build_run(config, devices=jax.devices()[:1])


def test_missing_npz_and_missing_arrays(tmp_path):
  with pytest.raises(DataError, match='no such .npz file'):
    arrays.load(_data_cfg(source='npz', dir=str(tmp_path / 'nope.npz')), 'train')
  path = _npz(tmp_path / 'ok.npz', [0, 1], [0, 1])
  with pytest.raises(DataError, match='x_validation'):
    arrays.load(_data_cfg(source='npz', dir=path), 'validation')


def test_synthetic_labels_out_of_range_are_rejected():
  with pytest.raises(DataError, match='outside'):
    arrays.ArrayDataset(np.zeros((2, 2, 2, 1), np.uint8), np.array([0, 5], np.int32), 5)
