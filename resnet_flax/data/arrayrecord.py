"""The ArrayRecord layout of `resnet-flax make-arrayrecord` (the `arrayrecord` source): sharded
files of encoded images with their labels, and a small metadata file; reading a split of it.

Layout of a destination folder DEST::

    DEST/metadata.json                                  format, class names, per-split counts
    DEST/<split>/<split>-00000-of-00004.array_record    the shards of a split, in order

A record is `MAGIC`, the label (int32, little-endian), the length of the key (uint16) and the
key (UTF-8: the source file's path relative to the tree, or the TFDS record id: what an error
names), then the encoded image bytes exactly as they were (JPEG, PNG: nothing is re-encoded).
Files are written with `group_size:1`, so every record is read on its own (random access for a
global shuffle). The records of a split keep the order of its source: a folder's
class-interleaved order (`folder.list_folder`), so a split slice ('train[:10%]') selects the
same examples as on the folder. Only `array_record` is needed (no TensorFlow).
"""

import json
import os
import re
import struct

import numpy as np

from resnet_flax.data import splits
from resnet_flax.errors import DataError

FORMAT = 'resnet_flax.arrayrecord'
VERSION = 1
METADATA = 'metadata.json'
MAGIC = b'RFX1'
SHARD_SUFFIX = '.array_record'
WRITER_OPTIONS = 'group_size:1'
_HEADER = struct.Struct('<iH')


def encode(image: bytes, label: int, key: str) -> bytes:
  """One record: MAGIC, label, key, encoded image bytes."""
  key_bytes = key.encode('utf-8')[:65535]
  return MAGIC + _HEADER.pack(int(label), len(key_bytes)) + key_bytes + bytes(image)


def decode(record: bytes) -> tuple[bytes, int, str]:
  """(encoded image bytes, label, key) of one record; ValueError if it is not one."""
  if record[:len(MAGIC)] != MAGIC:
    raise ValueError('not a record of this layout (no header)')
  start = len(MAGIC) + _HEADER.size
  label, key_length = _HEADER.unpack(record[len(MAGIC):start])
  key = record[start:start + key_length].decode('utf-8', errors='replace')
  return record[start + key_length:], int(label), key


def shard_name(split: str, index: int, count: int) -> str:
  return f'{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}'


def existing_shards(dest: str, split: str) -> list[str]:
  """The shard files of `split` in DEST (sorted), whatever their count."""
  folder = os.path.join(dest, split)
  if not os.path.isdir(folder):
    return []
  pattern = re.compile(rf'^{re.escape(split)}-\d{{5}}-of-\d{{5}}{re.escape(SHARD_SUFFIX)}$')
  return sorted(os.path.join(folder, n) for n in os.listdir(folder) if pattern.match(n))


def read_metadata(dest: str) -> dict:
  """The metadata of DEST; DataError naming what is missing."""
  if not dest:
    raise DataError('data.source=arrayrecord needs data.dir: the folder make-arrayrecord wrote '
                    '(resnet-flax make-arrayrecord --in ROOT --out DIR)')
  path = os.path.join(dest, METADATA)
  if not os.path.isfile(path):
    hint = ('the folder does not exist' if not os.path.isdir(dest) else
            'it holds no ArrayRecord layout')
    raise DataError(f'{path}: no such file ({hint}); write one with resnet-flax '
                    f'make-arrayrecord --in ROOT --out {dest}')
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: cannot be read ({e}); write the folder again with '
                    f'resnet-flax make-arrayrecord --overwrite') from None
  if meta.get('format') != FORMAT or meta.get('version') != VERSION:
    raise DataError(f'{path}: not a metadata file of this layout (format '
                    f'{meta.get("format")!r}, version {meta.get("version")!r})')
  return meta


class ArrayRecordRecords:
  """The records [first, first + count) of one split of a make-arrayrecord folder."""

  def __init__(self, dest: str, split_spec: str):
    meta = read_metadata(dest)
    try:
      split, _, _ = splits.parse_split(split_spec)
    except ValueError as e:
      raise DataError(f'{dest}: {e}') from None
    known = meta.get('splits', {})
    if split not in known:
      raise DataError(f'{dest}: has no split {split!r}; its splits: '
                      f'{", ".join(sorted(known)) or "none"} (data.train_split / '
                      f'data.eval_split)')
    info = known[split]
    self.files = [os.path.join(dest, name) for name in info['shards']]
    missing = [p for p in self.files if not os.path.isfile(p)]
    if not self.files or missing:
      what = f'{len(missing)} of its {len(self.files)} shards are missing (first: ' \
             f'{missing[0]})' if missing else 'it lists no shards'
      raise DataError(f'{dest}: split {split!r}: {what}; write the folder again with '
                      f'resnet-flax make-arrayrecord --overwrite')
    total = int(info['num_examples'])
    if total == 0:
      raise DataError(f'{dest}: split {split!r} has no examples')
    index = splits.select_examples(split_spec, total, dest)
    self.first, self.count = index.start, len(index)
    self.class_names = list(meta['class_names'])
    self.num_classes = len(self.class_names)
    self.description = f'{dest} {split_spec!r}'
    self.keep = None          # indices into [0, count) left after skipping unreadable records
    self._source = None

  def __len__(self):
    return self.count if self.keep is None else len(self.keep)

  def __getstate__(self):
    return {**self.__dict__, '_source': None}   # each worker process opens its own readers

  def _reader(self):
    if self._source is None:
      from array_record.python import array_record_data_source
      self._source = array_record_data_source.ArrayRecordDataSource(self.files)
      if len(self._source) < self.first + self.count:
        raise DataError(f'{self.description}: the shards hold {len(self._source)} records, '
                        f'fewer than the metadata says; write the folder again with '
                        f'resnet-flax make-arrayrecord --overwrite')
    return self._source

  def _position(self, index: int) -> int:
    return self.first + int(index if self.keep is None else self.keep[index])

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    position = self._position(index)
    try:
      data, label, _ = decode(self._reader()[position])
    except ValueError as e:
      raise DataError(f'{self.key(index)}: {e}; the shards may be damaged: write the folder '
                      f'again with resnet-flax make-arrayrecord --overwrite') from None
    return data, label

  def bad_image(self, index: int, detail: str) -> DataError:
    return DataError(f'{self.key(index)}: cannot be decoded as an image ({detail}); convert '
                     f'the source again, or set data.on_bad_image=skip to leave such records '
                     f'out')

  def key(self, index: int) -> str:
    """What names a record in an error: its source key and its position in the split."""
    position = self._position(index)
    try:
      key = decode(self._reader()[position])[2]
    except ValueError:
      key = '?'
    return f'{self.description}: record {position} ({key})'

  def drop(self, bad: np.ndarray) -> None:
    """Leaves out the records at these indices (into the current list)."""
    current = np.arange(self.count) if self.keep is None else self.keep
    self.keep = np.delete(current, bad)
