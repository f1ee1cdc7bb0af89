"""Writing the ArrayRecord layout (`data/arrayrecord.py`) from an image-folder tree or a prepared
TFDS dataset: the work of `resnet-flax make-arrayrecord`.

Every image is decoded once before it is written (Pillow, on threads), so a file that cannot be
decoded stops the conversion with its name (or, with `on_bad='skip'`, is left out and counted).
The encoded bytes are written unchanged. A split's shards are written in its order, each
holding a contiguous run of records; the metadata file is written last, so an interrupted
conversion leaves no folder that reads as complete. A destination that already holds shards of
a split (or a metadata file) is refused unless `overwrite`, which removes them first.
"""

import concurrent.futures
import json
import math
import os
from typing import Callable, Iterable, Optional

from resnet_flax.data import arrayrecord, folder, host
from resnet_flax.errors import DataError

EXAMPLES_PER_SHARD = 10_000     # default shard size
CHUNK = 256                     # records decoded (checked) together


def _check(item) -> Optional[str]:
  """None when the encoded image decodes, else what is wrong."""
  try:
    host.decode(item[0])
    return None
  except host.BadImage as e:
    return str(e)


def prepare_dest(dest: str, split_names: Iterable[str], overwrite: bool) -> None:
  """Refuses a destination holding shards of these splits (or metadata), unless `overwrite`:
  then removes them."""
  meta = os.path.join(dest, arrayrecord.METADATA)
  found = [p for s in split_names for p in arrayrecord.existing_shards(dest, s)]
  if os.path.exists(meta):
    found.append(meta)
  if found and not overwrite:
    raise DataError(f'{dest}: already holds {len(found)} ArrayRecord file(s) (first: '
                    f'{found[0]}); pass --overwrite to replace them, or choose another --out')
  for path in found:
    os.remove(path)
  os.makedirs(dest, exist_ok=True)


def write_split(dest: str, split: str, items: Iterable[tuple[bytes, int, str]], total: int,
                *, shards: int = 0, on_bad: str = 'error',
                progress: Callable[[str, int, int], None] = lambda *a: None) -> dict:
  """Writes the (encoded image, label, key) items of `split` (`total` of them) into shards;
  returns the split's metadata entry. A bad image raises DataError naming its key, or is
  skipped with `on_bad='skip'`."""
  from array_record.python import array_record_module
  folder.check_on_bad(on_bad)
  if total < 1:
    raise DataError(f'split {split!r} has no images to convert')
  shards = int(shards) or max(1, math.ceil(total / EXAMPLES_PER_SHARD))
  os.makedirs(os.path.join(dest, split), exist_ok=True)
  names = [os.path.join(split, arrayrecord.shard_name(split, i, shards)) for i in range(shards)]
  lengths, skipped = [0] * shards, []
  writer, current, done = None, -1, 0
  items = iter(items)
  with concurrent.futures.ThreadPoolExecutor(folder.default_workers()) as pool:
    try:
      while done < total:
        chunk = [item for _, item in zip(range(CHUNK), items)]
        if not chunk:
          break
        for item, problem in zip(chunk, pool.map(_check, chunk)):
          shard = done * shards // total
          done += 1
          if problem is not None:
            if on_bad != 'skip':
              raise DataError(f'{item[2]}: cannot be decoded as an image ({problem}); delete '
                              f'or replace it, or pass --on-bad-image skip to leave it out')
            skipped.append(item[2])
            continue
          if shard != current:
            if writer is not None:
              writer.close()
            writer = array_record_module.ArrayRecordWriter(
                os.path.join(dest, names[shard]), arrayrecord.WRITER_OPTIONS)
            current = shard
          writer.write(arrayrecord.encode(*item))
          lengths[shard] += 1
        progress(split, done, total)
    finally:
      if writer is not None:
        writer.close()
  for shard in range(shards):   # a shard whose every record was skipped is still a file
    path = os.path.join(dest, names[shard])
    if not os.path.exists(path):
      array_record_module.ArrayRecordWriter(path, arrayrecord.WRITER_OPTIONS).close()
  if skipped and len(skipped) == done:
    raise DataError(f'split {split!r}: none of its {done} images can be decoded (first: '
                    f'{skipped[0]})')
  return {'num_examples': sum(lengths), 'shards': names, 'shard_lengths': lengths,
          'skipped': len(skipped), 'first_skipped': skipped[0] if skipped else None}


def write_metadata(dest: str, class_names: list, split_entries: dict, source: str) -> str:
  path = os.path.join(dest, arrayrecord.METADATA)
  meta = {'format': arrayrecord.FORMAT, 'version': arrayrecord.VERSION, 'source': source,
          'class_names': list(class_names), 'num_classes': len(class_names),
          'splits': split_entries}
  with open(path + '.tmp', 'w') as f:
    json.dump(meta, f, indent=1)
  os.replace(path + '.tmp', path)
  return path


def _read(path: str, label: int, key: str) -> tuple[bytes, int, str]:
  with open(path, 'rb') as f:
    return f.read(), label, key


def from_folder(root: str, dest: str, split_names: list[str], *, shards: int = 0,
                on_bad: str = 'error', overwrite: bool = False,
                progress=lambda *a: None) -> dict:
  """Converts splits of the image-folder tree at `root` (ROOT/<split>/<class>/*.jpg, in the
  folder source's class-interleaved order); returns the metadata written."""
  listed = {s: folder.list_folder(root, s, on_bad=on_bad) for s in split_names}
  first = split_names[0]
  for s in split_names[1:]:
    folder.check_same_classes(root, first, listed[first][2], s, listed[s][2])
  prepare_dest(dest, split_names, overwrite)
  entries = {}
  for s, (paths, labels, _) in listed.items():
    items = (_read(p, int(l), os.path.relpath(p, root)) for p, l in zip(paths, labels))
    entries[s] = write_split(dest, s, items, len(paths), shards=shards, on_bad=on_bad,
                             progress=progress)
  write_metadata(dest, listed[first][2], entries, f'folder {root}')
  return arrayrecord.read_metadata(dest)


def from_tfds(name: str, data_dir: str, dest: str, split_names: list[str], *, shards: int = 0,
              on_bad: str = 'error', overwrite: bool = False, image_key: str = '',
              label_key: str = '', progress=lambda *a: None) -> dict:
  """Converts splits of a prepared TFDS dataset (its encoded images, undecoded); needs
  tensorflow_datasets."""
  import tensorflow_datasets as tfds
  from resnet_flax.data.tf import tfds as tfds_lib
  builder = tfds_lib.open_builder(name, data_dir)
  image_key, label_key = tfds_lib.feature_keys(builder, image_key, label_key)
  sizes = {s: tfds_lib.split_size(builder, s, image_key) for s in split_names}
  prepare_dest(dest, split_names, overwrite)
  entries = {}
  for s in split_names:
    ds = builder.as_dataset(split=s, decoders={image_key: tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(add_tfds_id=True))

    def items(ds=ds, s=s):
      for i, ex in enumerate(tfds.as_numpy(ds)):
        key = ex.get('tfds_id', b'')
        key = key.decode() if isinstance(key, bytes) and key else f'{name} {s} #{i}'
        yield bytes(ex[image_key]), int(ex[label_key]), key
    entries[s] = write_split(dest, s, items(), sizes[s], shards=shards, on_bad=on_bad,
                             progress=progress)
  names = list(builder.info.features[label_key].names)
  write_metadata(dest, names, entries, f'tfds {name}')
  return arrayrecord.read_metadata(dest)


def default_splits(source: str, root: str = '', name: str = '', data_dir: str = '') -> list:
  """Every split of a folder tree (its sub-folders) or of a TFDS dataset."""
  if source == 'tfds':
    from resnet_flax.data.tf import tfds as tfds_lib
    return sorted(tfds_lib.open_builder(name, data_dir).info.splits.keys())
  if not os.path.isdir(root):
    raise DataError(f'{root}: no such folder; --in must be an image-folder tree '
                    f'ROOT/<split>/<class>/*.jpg')
  found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith('.'))
  if not found:
    raise DataError(f'{root}: has no split folders (expected ROOT/<split>/<class>/*.jpg)')
  return found
