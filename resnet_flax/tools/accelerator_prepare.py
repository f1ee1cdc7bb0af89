"""What the accelerator report needs on a GPU machine without network, prepared on a machine
with one: `prepare(folder)` puts the wheels of the project's runtime imports that such a
machine lacks (`CARRIED_PACKAGES`, at the versions installed here, `pip download --no-deps`)
into FOLDER/wheels and a small Imagenette subset (`copy_subset`) into FOLDER/imagenette.
`sample_folder(root)` writes a tiny random JPEG tree instead (the report's `--quick` mode).

The GPU machine this is for has jax, flax, optax, orbax-checkpoint, absl-py, PyYAML, numpy,
pillow, opencv, torch and timm, but no TensorFlow, TFDS, ml-collections or Grain. The report's
code path imports ml-collections (the config schema) and, for its input pipeline, Grain with
the packages it imports that such a machine lacks (array-record, cloudpickle, portpicker; etils
and protobuf come with orbax-checkpoint).
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from typing import Optional

import numpy as np

from resnet_flax.errors import DataError, DependencyError

CARRIED_PACKAGES = ('ml-collections', 'grain', 'array-record', 'cloudpickle', 'portpicker')
WHEEL_PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_17_x86_64', 'manylinux2014_x86_64')
TRAIN_PER_CLASS = 160
VAL_PER_CLASS = 20
SPLITS = ('train', 'val')
IMAGENETTE = 'imagenette-128'
ARCHIVES = ('.tar.gz', '.tgz')


def default_imagenette() -> Optional[str]:
  """The Imagenette folder of the data cache, else the archive beside the checkout, or None."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  cache = os.environ.get('RESNET_FLAX_DATA_CACHE', os.path.expanduser('~/.cache/resnet_flax'))
  for candidate in (os.path.join(cache, IMAGENETTE),
                    os.path.join(root, '..', 'shared', 'datasets', IMAGENETTE + '.tar.gz')):
    if os.path.exists(candidate):
      return os.path.normpath(candidate)
  return None


def _select(relpaths, per_split: dict) -> list[str]:
  """The first `per_split[SPLIT]` paths (by name) of every class of 'SPLIT/CLASS/FILE' paths."""
  by_class = {}
  for rel in relpaths:
    parts = rel.split('/')
    if len(parts) == 3 and parts[0] in per_split and not parts[2].startswith('.'):
      by_class.setdefault((parts[0], parts[1]), []).append(rel)
  return [rel for key in sorted(by_class)
          for rel in sorted(by_class[key])[:per_split[key[0]]]]


def copy_subset(source: str, target: str, *, train_per_class: int = TRAIN_PER_CLASS,
                val_per_class: int = VAL_PER_CLASS) -> dict:
  """The first files (by name) of every class of `source`'s train and val splits (a folder
  SPLIT/CLASS/*.JPEG, or a .tar.gz holding one folder of that layout) copied to
  target/SPLIT/CLASS/; returns {'files': n, 'bytes': their size}."""
  per_split = {'train': train_per_class, 'val': val_per_class}

  def destination(rel):
    path = os.path.join(target, *rel.split('/'))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path

  if os.path.isdir(source):
    found = [os.path.relpath(os.path.join(d, f), source).replace(os.sep, '/')
             for d, _, fs in os.walk(source) for f in fs]
    chosen = _select(found, per_split)
    for rel in chosen:
      shutil.copyfile(os.path.join(source, *rel.split('/')), destination(rel))
  elif source.endswith(ARCHIVES) and os.path.isfile(source):
    with tarfile.open(source) as tar:
      members = {m.name.split('/', 1)[-1]: m for m in tar.getmembers() if m.isfile()}
      chosen = _select(members, per_split)
      for rel in chosen:
        with tar.extractfile(members[rel]) as src, open(destination(rel), 'wb') as dst:
          shutil.copyfileobj(src, dst)
  else:
    raise DataError(f'{source}: not an Imagenette folder or .tar.gz archive')
  if not chosen:
    raise DataError(f'{source}: no SPLIT/CLASS/FILE images of the splits {", ".join(SPLITS)}')
  return {'files': len(chosen),
          'bytes': sum(os.path.getsize(os.path.join(target, *r.split('/'))) for r in chosen)}


def download_wheels(target: str, *, python_version: str = '3.12') -> list[str]:
  """`pip download --no-deps` of CARRIED_PACKAGES (the versions installed here) into target."""
  os.makedirs(target, exist_ok=True)
  pins = []
  for package in CARRIED_PACKAGES:
    try:
      pins.append(f'{package}=={importlib.metadata.version(package)}')
    except importlib.metadata.PackageNotFoundError:
      raise DependencyError(f'{package} is not installed here; install requirements.txt '
                            f'first') from None
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
         '--python-version', python_version, '--implementation', 'cp', '-d', target]
  for platform in WHEEL_PLATFORMS:
    cmd += ['--platform', platform]
  result = subprocess.run(cmd + pins, capture_output=True, text=True)
  if result.returncode:
    raise DependencyError(f'pip download {" ".join(pins)} failed: '
                          f'{result.stderr.strip().splitlines()[-1:]}')
  return sorted(f for f in os.listdir(target) if f.endswith('.whl'))


def prepare(folder: str, *, imagenette: Optional[str] = None, python_version: str = '3.12',
            wheels: bool = True) -> dict:
  """FOLDER/wheels and FOLDER/imagenette (see the module doc); returns what was put there."""
  source = imagenette or default_imagenette()
  if not source:
    raise DataError('no Imagenette data found: give --imagenette FOLDER_OR_TAR_GZ (e.g. the '
                    'imagenette-128.tar.gz of the shared datasets)')
  if not (os.path.isdir(source) or (source.endswith(ARCHIVES) and os.path.isfile(source))):
    raise DataError(f'{source}: not an Imagenette folder or .tar.gz archive')
  data = os.path.join(folder, 'imagenette')
  shutil.rmtree(data, ignore_errors=True)
  out = {'imagenette_source': source, 'imagenette': data, **copy_subset(source, data)}
  if wheels:
    out['wheels'] = download_wheels(os.path.join(folder, 'wheels'),
                                    python_version=python_version)
  return out


def sample_folder(root: str, *, classes: int = 2, per_class: int = 8, size: int = 40) -> str:
  """A tiny image-folder tree of random JPEGs, root/train/classK/*.jpg (and val)."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for split in SPLITS:
    for c in range(classes):
      folder = os.path.join(root, split, f'class{c}')
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f'{i:03d}.jpg'), quality=75)
  return root
