"""The ArrayRecord layout (`resnet_flax.data.arrayrecord`, `make-arrayrecord`) read by the Grain
back end: the converter's round trip and refusal, missing shards, bad images, a TFDS input."""

import os
import re

import pytest

pytest.importorskip('grain')

from conftest import command, run_command  # noqa: E402
from grain_trees import CLASSES, assert_same, make_tree, source  # noqa: E402
from resnet_flax.data import arrayrecord  # noqa: E402
from resnet_flax.data.grain.source import GrainSource  # noqa: E402
from resnet_flax.errors import DataError  # noqa: E402


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  return make_tree(tmp_path_factory.mktemp('tree') / 'images')


def test_arrayrecord_round_trip_and_refusal(tree, tmp_path):
  dest = str(tmp_path / 'records')
  p = run_command(command('make_arrayrecord', '--in', tree, '--out', dest, '--shards', 2))
  assert p.returncode == 0, p.stderr[-2000:]
  assert 'train: 27 images in 2 shards' in p.stdout and 'val: 15 images' in p.stdout
  assert re.search(r'train: \[#+\] 27/27 images', p.stderr)          # the progress bar
  meta = arrayrecord.read_metadata(dest)
  assert meta['class_names'] == list(CLASSES)
  assert meta['splits']['train']['shard_lengths'] == [14, 13]
  for split in ('train', 'val[1:12]'):
    ours = GrainSource.from_arrayrecord(dest, split)
    files = source(tree, split)
    assert ours.num_examples == files.num_examples and ours.class_names == files.class_names
    for index in range(ours.num_examples):         # the same bytes, labels and order
      assert ours.records[index] == files.records[index]
    for a, b in zip(ours.eval_batches(4), files.eval_batches(4)):
      assert_same(a, b, ('image', 'label', 'mask'))
  a = GrainSource.from_arrayrecord(dest, 'train', random_flip=True).train_batches(8, 0)
  b = source(tree, random_crop_pad=0).train_batches(8, 0)
  assert_same(a.batch(4), b.batch(4))

  again = run_command(command('make_arrayrecord', '--in', tree, '--out', dest))
  assert again.returncode == 2
  line = again.stderr.strip().splitlines()
  assert len(line) == 1 and line[0].startswith('data error: ') and '--overwrite' in line[0]
  over = run_command(command('make_arrayrecord', '--in', tree, '--out', dest, '--overwrite'))
  assert over.returncode == 0, over.stderr[-2000:]
  assert arrayrecord.read_metadata(dest)['splits']['train']['shard_lengths'] == [27]
  assert len(arrayrecord.existing_shards(dest, 'train')) == 1
  negative = run_command(command('make_arrayrecord', '--in', tree, '--out',
                                 str(tmp_path / 'neg'), '--shards', -2))
  assert negative.returncode == 2 and negative.stderr.count('\n') == 1, negative.stderr
  assert '--shards -2: give a positive number' in negative.stderr
  assert not (tmp_path / 'neg').exists()


def test_arrayrecord_missing_or_empty_shards_are_one_line(tree, tmp_path):
  with pytest.raises(DataError, match=r'metadata.json: no such file \(the folder does not '
                                      r'exist\); write one with resnet-flax make-arrayrecord'):
    GrainSource.from_arrayrecord(str(tmp_path / 'nothing'), 'train')
  dest = str(tmp_path / 'records')
  from resnet_flax.data import arrayrecord_writer
  arrayrecord_writer.from_folder(tree, dest, ['train', 'val'], shards=3)
  with pytest.raises(DataError, match=r"has no split 'test'; its splits: train, val"):
    GrainSource.from_arrayrecord(dest, 'test')
  os.remove(arrayrecord.existing_shards(dest, 'val')[1])
  with pytest.raises(DataError, match=r"split 'val': 1 of its 3 shards are missing .*--overwrite"):
    GrainSource.from_arrayrecord(dest, 'val')
  with pytest.raises(DataError, match='already holds'):
    arrayrecord_writer.from_folder(tree, dest, ['train'])


def test_arrayrecord_bad_images_are_named_or_skipped(tmp_path, capsys):
  """The converter names a bad file (or leaves it out, counted); a record that does not decode
  when read is named by its position and source key (or is left out with on_bad='skip')."""
  from array_record.python import array_record_module
  from resnet_flax.data import arrayrecord_writer
  root = make_tree(tmp_path / 'tree', per_class=(3, 1))
  with open(os.path.join(root, 'train', 'bee', '02.png'), 'wb') as f:
    f.write(b'not an image')
  dest = str(tmp_path / 'converted')
  with pytest.raises(DataError, match=r'^train/bee/02\.png: cannot be decoded as an image .*'
                                      r'--on-bad-image skip'):
    arrayrecord_writer.from_folder(root, dest, ['train'])
  meta = arrayrecord_writer.from_folder(root, dest, ['train'], on_bad='skip', overwrite=True)
  entry = meta['splits']['train']
  assert entry['num_examples'] == 8 and entry['skipped'] == 1
  assert entry['first_skipped'] == 'train/bee/02.png'
  assert GrainSource.from_arrayrecord(dest, 'train').num_examples == 8

  # shards holding an undecodable record, as a damaged or foreign writer would leave them
  dest = str(tmp_path / 'damaged')
  os.makedirs(os.path.join(dest, 'train'))
  name = os.path.join('train', arrayrecord.shard_name('train', 0, 1))
  writer = array_record_module.ArrayRecordWriter(os.path.join(dest, name),
                                                 arrayrecord.WRITER_OPTIONS)
  good = open(os.path.join(root, 'train', 'ant', '01.png'), 'rb').read()
  for i in range(4):
    writer.write(arrayrecord.encode(b'garbage' if i == 2 else good, i % 3, f'img{i}.png'))
  writer.close()
  arrayrecord_writer.write_metadata(dest, list(CLASSES), {'train': {
      'num_examples': 4, 'shards': [name], 'shard_lengths': [4]}}, 'test')
  records = GrainSource.from_arrayrecord(dest, 'train', image_size=12)
  with pytest.raises(DataError, match=r"damaged 'train': record 2 \(img2\.png\): cannot be "
                                      r"decoded as an image .*data\.on_bad_image=skip"):
    list(records.eval_batches(4))
  capsys.readouterr()
  skipping = GrainSource.from_arrayrecord(dest, 'train', on_bad='skip', image_size=12)
  assert "skipped 1 unreadable image (first: " in capsys.readouterr().err
  batch = next(iter(skipping.eval_batches(4)))
  assert batch['mask'].tolist() == [1, 1, 1, 0] and batch['label'][:3].tolist() == [0, 1, 0]


def test_arrayrecord_from_a_tfds_dataset(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  from resnet_flax.data import arrayrecord_writer
  dest = str(tmp_path / 'records')
  with tfds.testing.mock_data(num_examples=10):
    meta = arrayrecord_writer.from_tfds('cifar10', '', dest, ['train', 'test'])
  assert meta['splits']['train']['num_examples'] == 10 and len(meta['class_names']) == 10
  train = GrainSource.from_arrayrecord(dest, 'train', preprocess='cifar')
  batch = next(iter(train.eval_batches(4)))
  assert batch['image'].shape == (4, 32, 32, 3) and batch['label'].max() < 10
  assert re.search(r"'train': record 0 \(cifar10-train\S+\)$", train.records.key(0))


def test_labels_outside_the_classes_stop_training_and_evaluation(tmp_path):
  """An unlabelled split (TFDS writes -1 for imagenet2012 'test'): training and evaluation
  stop in one line naming the label, where the loss would have scored it without a word."""
  import jax
  from array_record.python import array_record_module
  from conftest import tiny_config
  from resnet_flax.data import arrayrecord_writer
  from resnet_flax.train import loop
  root = make_tree(tmp_path / 'tree', per_class=(3, 1))
  good = open(os.path.join(root, 'train', 'ant', '01.png'), 'rb').read()
  dest = str(tmp_path / 'records')
  splits = {}
  for split, labels in (('train', [0, 1, 2, 0, 1, 2, 0, 1]), ('unlabelled', [0, 1, -1, 2])):
    os.makedirs(os.path.join(dest, split))
    name = os.path.join(split, arrayrecord.shard_name(split, 0, 1))
    writer = array_record_module.ArrayRecordWriter(os.path.join(dest, name),
                                                   arrayrecord.WRITER_OPTIONS)
    for i, label in enumerate(labels):
      writer.write(arrayrecord.encode(good, label, f'{split}{i}.png'))
    writer.close()
    splits[split] = {'num_examples': len(labels), 'shards': [name],
                     'shard_lengths': [len(labels)]}
  arrayrecord_writer.write_metadata(dest, list(CLASSES), splits, 'test')
  config = tiny_config(**{'data.source': 'arrayrecord', 'data.dir': dest, 'batch_size': 8,
                          'data.eval_split': 'unlabelled', 'data.image_size': 12,
                          'model.num_classes': 3, 'num_train_steps': 1})
  with pytest.raises(DataError, match=r"the eval split: label -1 is outside \[0, 3\)"):
    loop.train_and_evaluate(config, str(tmp_path / 'run'), devices=jax.devices()[:1])
  config.data.train_split, config.data.eval_split = 'unlabelled', 'train'
  config.batch_size = 4
  with pytest.raises(DataError,
                     match=r"the training split 'unlabelled': label -1 is outside \[0, 3\)"):
    loop.train_and_evaluate(config, str(tmp_path / 'run2'), devices=jax.devices()[:1])
