"""Opening a prepared TFDS dataset: the builder, its image and label features, split sizes, and
the message that says how to prepare a dataset that is not there (nothing is downloaded)."""

import difflib

import numpy as np

from resnet_flax.data.tf import tf_message
from resnet_flax.errors import DataError


def open_builder(name: str, data_dir: str = ''):
  """The TFDS builder of `name` reading from `data_dir` (default: TFDS's own)."""
  import tensorflow_datasets as tfds
  if not name:
    raise DataError('data.source=tfds needs data.name: a TFDS dataset name (e.g. cifar10, '
                    'imagenet2012)')
  try:
    return tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    try:   # the datasets that ship with TFDS (the community list would need the network)
      known = tfds.list_builders(with_community_datasets=False)
    except Exception:  # noqa: BLE001 -- a suggestion is optional
      known = []
    close = difflib.get_close_matches(name.split(':')[0].split('/')[0], known, n=3)
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    raise DataError(f'data.name={name!r}: TFDS has no such dataset{hint}') from None


def feature_keys(builder, image_key: str, label_key: str) -> tuple[str, str]:
  import tensorflow_datasets as tfds
  features = builder.info.features
  items = list(features.items())
  images = [k for k, f in items if isinstance(f, tfds.features.Image)]
  labels = [k for k, f in items if isinstance(f, tfds.features.ClassLabel)]
  name = builder.name
  for key, found, kind, field in ((image_key, images, 'Image', 'image_key'),
                                  (label_key, labels, 'ClassLabel', 'label_key')):
    if key and key not in found:
      raise DataError(f'data.{field}={key!r}: {name} has no {kind} feature of that name; its '
                      f'{kind} features: {", ".join(found) or "none"} (all features: '
                      f'{", ".join(k for k, _ in items)})')
    if not found:
      raise DataError(f'{name} has no {kind} feature (features: '
                      f'{", ".join(k for k, _ in items)}); the tf.data source needs images with '
                      f'class labels')
  return image_key or images[0], label_key or labels[0]


def split_size(builder, split: str, image_key: str) -> int:
  """The number of examples of the split `split`; DataError when it or the data is missing."""
  import tensorflow_datasets as tfds
  known = builder.info.splits
  if len(known):
    if split not in known:
      raise DataError(f'{builder.name} has no split {split!r}; its splits: '
                      f'{", ".join(sorted(known.keys()))} (data.train_split / data.eval_split)')
    return int(known[split].num_examples)
  # no split metadata: the dataset is not prepared (or its metadata is mocked): ask the reader
  try:
    ds = builder.as_dataset(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
  except AssertionError:
    raise not_prepared(builder) from None
  except (KeyError, ValueError) as e:
    raise DataError(f'{builder.name}: split {split!r}: {tf_message(e)}') from None
  n = int(ds.cardinality())
  if n < 0:
    n = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
  if n == 0:
    raise DataError(f'{builder.name}: split {split!r} has no examples')
  return n


def not_prepared(builder) -> DataError:
  name, root = builder.name, builder.data_dir_root
  manual = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if manual:
    how = (f'download its files by hand into a manual folder M ({" ".join(manual.split())}) '
           f'and run `tfds build {name} --data_dir={root} --manual_dir=M` (default M: '
           f'{root}/downloads/manual)')
  else:
    how = (f'run `tfds build {name} --data_dir={root}` on a machine with internet access and '
           f'copy {root}/{name} here')
  return DataError(f'TFDS dataset {name!r} is not prepared in data_dir {root} (nothing is '
                   f'downloaded during training); to prepare it, {how}; then set data.dir to '
                   f'that data_dir')

