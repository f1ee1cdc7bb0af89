"""The `folder` source: an image-folder tree decoded into host memory as an `ArrayDataset`.

Layout (the usual image-folder convention, as read by TFDS `ImageFolder`, Keras
`image_dataset_from_directory` and torchvision `ImageFolder`)::

    ROOT/<split>/<class>/<any name>.jpg | .jpeg | .png     (extensions in any case)

The classes of a split are its sorted sub-folder names and a label is the index of its class in
that list. Files with other extensions (`.txt`, `.DS_Store`, ...) are ignored, and so are hidden
entries (names starting with '.', e.g. `.ipynb_checkpoints` folders or macOS `._x.jpg` files).

`split_spec` uses the TFDS slicing syntax ('train', 'train[:10%]', 'val[2:]') applied to the
split's file list in a fixed class-interleaved order: the first file (by name) of every class in
class order, then the second of every class, and so on. A slice is therefore deterministic and
keeps the class balance: 'train[:45000]' of CIFAR-10 holds 4,500 images of each class (sorted
by class instead, it would hold nine classes). The label numbering (and `num_classes`) always
comes from all class folders of the split.

`list_folder` only lists (cheap), `split_classes` only reads the class folder names (used with
`check_same_classes` to compare the train and eval splits); `load_folder` decodes the selected files (after slicing) with
Pillow into uint8 RGB (N, H, W, 3): grey, palette, CMYK and RGBA images become RGB (alpha is
dropped, 16-bit grey is scaled to 8 bits, EXIF orientation is not applied, as in TFDS). All
images must have one size unless `image_size` > 0, which resizes every image to
image_size x image_size (bilinear); images of one size keep it (the on-device preprocessing
resizes when data.image_size differs).

Decoding runs in a thread pool sized to the CPU count. Pillow releases the GIL while it
decodes, so threads scale on larger images (128 px JPEGs on 2 cores: 1.6-2.3x serial, and
faster than a process pool, which pays for pickling the pixels). For 32 px JPEGs (CIFAR-10)
Pillow's Python-level header parsing dominates (about 120 us of CPU per image) and threads run
at about serial speed (5-7k images/s on 2 cores, 60,000 images in 9-11 s); a process pool was
up to 1.9x faster there but would need an `if __name__ == '__main__'` guard in every calling
script (spawn) or would fork a process that has already started JAX (fork).

Problems raise `DataError` naming the path and the fix. With `on_bad='skip'`, unreadable files
are skipped (one summary line on stderr) and empty class folders are kept as classes (so labels
stay stable) with a warning line. No TensorFlow is needed.
"""

import concurrent.futures
import itertools
import os
import sys
from typing import Optional

import numpy as np
from PIL import Image

from resnet_flax.data import host, splits
from resnet_flax.data.arrays import ArrayDataset
from resnet_flax.data.source import ON_BAD_IMAGE
from resnet_flax.errors import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
SERIAL_BELOW = 256          # decode fewer files than this without a pool
MAX_CHUNK = 512             # files per pool task


def _warn(message: str) -> None:
  print(f'folder source: {message}', file=sys.stderr, flush=True)


def _visible_entries(path: str) -> list[os.DirEntry]:
  with os.scandir(path) as it:
    return [e for e in it if not e.name.startswith('.')]


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _split_dir(root: str, split: str) -> str:
  if not root:
    raise DataError('the folder source needs a root folder (data.dir): ROOT/<split>/<class>/*.jpg')
  if not os.path.isdir(root):
    raise DataError(f'{root}: no such folder; data.dir must be an image-folder root '
                    f'ROOT/<split>/<class>/*.jpg')
  path = os.path.join(root, split)
  if not os.path.isdir(path):
    found = sorted(e.name for e in _visible_entries(root) if e.is_dir())
    hint = (f'the split folders there are: {", ".join(found)}' if found else
            'it has no sub-folders (expected ROOT/<split>/<class>/*.jpg)')
    raise DataError(f'{path}: no folder for split {split!r}; {hint}; '
                    f'set data.train_split / data.eval_split to one of them')
  return path


def _class_names(split_path: str) -> list[str]:
  names = sorted(e.name for e in _visible_entries(split_path) if e.is_dir())
  if not names:
    raise DataError(f'{split_path}: has no class sub-folders; expected '
                    f'{split_path}/<class>/*.jpg (one sub-folder per class)')
  return names


def _scan_split(root: str, split: str, on_bad: str):
  """All image files of a split, class-interleaved (file k of every class, for k = 0, 1, ...;
  files sorted by name within a class): (paths, labels, class_names)."""
  split_path = _split_dir(root, split)
  class_names = _class_names(split_path)
  per_class, empty = [], []
  for label, name in enumerate(class_names):
    class_path = os.path.join(split_path, name)
    files = sorted(e.name for e in _visible_entries(class_path)
                   if _is_image_name(e.name) and e.is_file())
    if not files:
      empty.append(class_path)
    per_class.append([(os.path.join(class_path, f), label) for f in files])
  if empty:
    what = (f'{len(empty)} class folders have no images (.jpg, .jpeg, .png), first: {empty[0]}'
            if len(empty) > 1 else f'{empty[0]}: class folder has no images (.jpg, .jpeg, .png)')
    if on_bad != 'skip' or len(empty) == len(class_names):
      raise DataError(f'{what}; add images, remove the folder, or set data.on_bad_image=skip '
                      f'to keep it as an empty class')
    _warn(f'{what}; kept as empty classes so the label numbering stays stable')
  ordered = [item for rank in itertools.zip_longest(*per_class) for item in rank if item]
  paths = [path for path, _ in ordered]
  labels = [label for _, label in ordered]
  return paths, np.asarray(labels, np.int32), class_names


def check_on_bad(on_bad: str) -> None:
  if on_bad not in ON_BAD_IMAGE:
    raise DataError(f'on_bad={on_bad!r}: allowed: {", ".join(map(repr, ON_BAD_IMAGE))} '
                    f'(config.data.on_bad_image)')


def list_folder(root: str, split_spec: str, *, on_bad: str = 'error'
                ) -> tuple[list[str], np.ndarray, list[str]]:
  """(paths, int32 labels, class_names) of `split_spec` of the tree at `root`; decodes nothing.

  `on_bad='skip'` keeps empty class folders as classes (with a warning) instead of failing.
  """
  check_on_bad(on_bad)
  try:
    split, _, _ = splits.parse_split(split_spec)
  except ValueError as e:
    raise DataError(f'{root}: {e}') from None
  paths, labels, class_names = _scan_split(root, split, on_bad)
  index = splits.select_examples(split_spec, len(paths), os.path.join(root, split))
  return paths[index.start:index.stop], labels[index.start:index.stop], class_names


def split_classes(root: str, split_spec: str) -> list[str]:
  """The sorted class folder names of the split of `split_spec` (lists no files)."""
  try:
    split, _, _ = splits.parse_split(split_spec)
  except ValueError as e:
    raise DataError(f'{root}: {e}') from None
  return _class_names(_split_dir(root, split))


# --- decoding -------------------------------------------------------------------------------

def _decode(path: str, image_size: int):
  """uint8 (H, W, 3) array, or an error string for an unreadable file."""
  try:
    with Image.open(path) as image:
      image.load()
      if image_size and image.size != (image_size, image_size):
        if image.mode not in ('RGB', 'L', 'RGBA'):
          image = Image.fromarray(host.to_rgb(image))
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
      array = host.to_rgb(image)
  except host.DECODE_ERRORS as e:
    return host.describe_error(e)
  if array.ndim != 3 or array.shape[-1] != 3:
    return f'decoded to an unexpected shape {array.shape}'
  return array


def _decode_chunk(paths: list[str], shape: tuple[int, int], image_size: int):
  """(uint8 (n, H, W, 3) block, problems): problems are (offset, 'bad' | 'size', detail)."""
  block = np.zeros((len(paths),) + shape + (3,), np.uint8)
  problems = []
  for i, path in enumerate(paths):
    result = _decode(path, image_size)
    if isinstance(result, str):
      problems.append((i, 'bad', result))
    elif result.shape[:2] != shape:
      problems.append((i, 'size', result.shape[:2]))
    else:
      block[i] = result
  return block, problems


def default_workers() -> int:
  """The decoding threads: the CPUs this process may run on."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not on Linux
    return max(1, os.cpu_count() or 1)


def _bad_file_error(path: str, detail: str) -> DataError:
  return DataError(f'{path}: cannot be decoded as an image ({detail}); delete or replace the '
                   f'file, or set data.on_bad_image=skip to skip unreadable files')


def _size_error(path: str, size, first_path: str, first_size) -> DataError:
  h, w = size
  fh, fw = first_size
  return DataError(f'{path}: is {w}x{h} but {first_path} is {fw}x{fh}; the images of a folder '
                   f'source must all have one size, or set data.image_size (e.g. '
                   f'data.image_size={max(fh, fw)}) to resize every image to that size')


def _decode_all(paths: list[str], on_bad: str, image_size: int,
                num_workers: Optional[int] = None):
  """(uint8 (n, H, W, 3) of the readable files, keep mask, list of (path, detail) skipped)."""
  skipped = []   # (path, why)
  # the reference size: the given one, or that of the first readable file
  first, shape = 0, (image_size, image_size)
  while not image_size:
    result = _decode(paths[first], 0)
    if not isinstance(result, str):
      shape = result.shape[:2]
      break
    if on_bad != 'skip':
      raise _bad_file_error(paths[first], result)
    skipped.append((paths[first], result))
    first += 1
    if first == len(paths):
      return np.zeros((0, 1, 1, 3), np.uint8), np.zeros(len(paths), bool), skipped
  out = np.empty((len(paths),) + shape + (3,), np.uint8)
  keep = np.ones(len(paths), bool)
  keep[:first] = False

  workers = num_workers or default_workers()
  todo = len(paths) - first
  chunk = max(1, min(MAX_CHUNK, -(-todo // (4 * workers))))
  starts = range(first, len(paths), chunk)

  def handle(start, block, problems):
    out[start:start + len(block)] = block
    for offset, kind, detail in problems:
      index = start + offset
      if kind == 'size':
        raise _size_error(paths[index], detail, paths[first], shape)
      if on_bad != 'skip':
        raise _bad_file_error(paths[index], detail)
      keep[index] = False
      skipped.append((paths[index], detail))

  if todo < SERIAL_BELOW or workers == 1:
    for start in starts:
      handle(start, *_decode_chunk(paths[start:start + chunk], shape, image_size))
  else:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      futures = [pool.submit(_decode_chunk, paths[s:s + chunk], shape, image_size)
                 for s in starts]
      try:
        for start, future in zip(starts, futures):   # in file order: the first problem wins
          handle(start, *future.result())
      except BaseException:
        for future in futures:
          future.cancel()
        raise
  return out, keep, skipped


def load_folder(root: str, split_spec: str, *, on_bad: str = 'error',
                image_size: int = 0) -> ArrayDataset:
  """The images of `split_spec` of the tree at `root`, decoded: uint8 (N, H, W, 3) + labels."""
  paths, labels, class_names = list_folder(root, split_spec, on_bad=on_bad)
  image_size = int(image_size or 0)
  if image_size < 0:
    raise DataError(f'image_size={image_size}: must be 0 (keep the stored size) or positive '
                    f'(data.image_size)')
  images, keep, skipped = _decode_all(paths, on_bad, image_size)
  split_path = os.path.join(root, splits.parse_split(split_spec)[0])
  if skipped:
    _warn(f'skipped {len(skipped)} unreadable file{"s" if len(skipped) > 1 else ""} in '
          f'{split_path} (first: {skipped[0][0]}: {skipped[0][1]})')
    if not keep.any():
      raise DataError(f'{split_path}: none of the {len(paths)} selected files could be read '
                      f'(first: {skipped[0][0]})')
    images, labels = images[keep], labels[keep]
  return ArrayDataset(images, labels, len(class_names), class_names)


def check_same_classes(root: str, train_split: str, train_classes: list[str],
                       eval_split: str, eval_classes: list[str]) -> None:
  """DataError when the train and eval splits have different class folders."""
  if list(train_classes) == list(eval_classes):
    return
  a, b = set(train_classes), set(eval_classes)
  parts = []
  if a - b:
    parts.append(f'only in {train_split!r}: {", ".join(sorted(a - b))}')
  if b - a:
    parts.append(f'only in {eval_split!r}: {", ".join(sorted(b - a))}')
  raise DataError(f'{root}: the train split {train_split!r} and the eval split {eval_split!r} '
                  f'have different class folders ({"; ".join(parts)}), so their labels would '
                  f'not agree; give both splits the same class sub-folders (an empty one is '
                  f'allowed with data.on_bad_image=skip)')


def checked_root(data_cfg) -> str:
  """The image-folder root of a folder-source config, after checking that it is given and that
  the train and eval splits have the same class folders (a cheap listing, before decoding)."""
  root = data_cfg['dir']
  if not root:
    raise DataError('data.source=folder needs data.dir: the root of an image-folder tree '
                    'ROOT/<split>/<class>/*.jpg (e.g. --config.data.dir=~/data/cifar10-jpeg)')
  root = os.path.expanduser(root)
  train_split, eval_split = data_cfg['train_split'], data_cfg['eval_split']
  check_same_classes(root, train_split, split_classes(root, train_split),
                     eval_split, split_classes(root, eval_split))
  return root
