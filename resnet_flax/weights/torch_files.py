"""Reading PyTorch `.pth` / `.pt` files (torch.save's zip format) without PyTorch.

A state dict saved by `torch.save` is a zip archive: `ARCHIVE/data.pkl` pickles the dict, each
tensor as a call of `torch._utils._rebuild_tensor_v2` on a storage that lives in
`ARCHIVE/data/KEY` as raw little-endian bytes. `load_state_dict` unpickles it with an unpickler
that knows only those few names (dicts, tensors, storages) and refuses everything else, so, like
`torch.load(weights_only=True)`, it runs no code from the file; tensors come back as numpy
arrays. Converting weights then needs neither torch nor its large CUDA dependencies (and the
converter can run where torch is not installed, or cannot share a process with JAX).
"""

import collections
import pickle
import zipfile

import numpy as np

# torch storage classes -> numpy dtypes (bfloat16 is read as float32 from its upper 16 bits)
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


class TorchFileError(ValueError):
  """A file that is not a torch.save zip archive of tensors."""


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor_v2`: a view (offset, size, stride in elements) of a storage."""
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(storage[offset])   # a 0-d array
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                         strides=[s * storage.itemsize for s in stride])
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  """Knows dicts, tensors and storages; anything else in the file is refused."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self.archive, self.prefix = archive, prefix

  def find_class(self, module, name):
    allowed = {
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
        ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    }
    if (module, name) in allowed:
      return allowed[module, name]
    if module == 'torch' and name in _STORAGE_DTYPES:
      return name
    raise TorchFileError(f'it holds a {module}.{name}, not only tensors (a pickled module or '
                         f'optimizer?); save the model\'s state_dict()')

  def persistent_load(self, pid):
    kind, storage_type, key, _, numel = pid
    if kind != 'storage' or storage_type not in _STORAGE_DTYPES:
      raise TorchFileError(f'unknown storage {pid!r}')
    raw = self.archive.read(f'{self.prefix}data/{key}')
    dtype = _STORAGE_DTYPES[storage_type]
    if dtype == 'bfloat16':
      halves = np.frombuffer(raw, np.uint16, count=numel)
      return (halves.astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype, count=numel)


def load_state_dict(path: str):
  """The object pickled in a torch.save zip file, tensors as numpy arrays. Raises
  TorchFileError (naming the problem) for other files or content other than tensors."""
  if not zipfile.is_zipfile(path):
    raise TorchFileError('not a torch.save zip archive (files saved by torch < 1.6 or with '
                         '_use_new_zipfile_serialization=False: load and re-save them with torch)')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise TorchFileError('a zip archive, but not one torch.save wrote (no ARCHIVE/data.pkl)')
    prefix = pickles[0][:-len('data.pkl')]
    order = f'{prefix}byteorder'
    if order in archive.namelist() and archive.read(order).strip() != b'little':
      raise TorchFileError('saved on a big-endian machine; not supported')
    with archive.open(pickles[0]) as f:
      try:
        return _Unpickler(f, archive, prefix).load()
      except TorchFileError:
        raise
      except Exception as e:  # noqa: BLE001 - a damaged file, in one line
        raise TorchFileError(f'cannot unpickle it ({type(e).__name__}: {e})') from None
