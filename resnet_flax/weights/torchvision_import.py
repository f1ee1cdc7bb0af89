"""torchvision ResNet, ResNeXt and Wide ResNet weights -> resnet_flax `params` and `batch_stats`.

torchvision's networks are this package's v1.5 ResNets with shortcut B, layer for layer, so the
import renames and transposes (the names and the checks: `torch_state_dict`, shared with timm's
import). torch is imported only to download.
"""

import hashlib
import os
import re
from typing import Any, Mapping
from urllib.parse import urlparse

from resnet_flax.errors import WeightsError, first_line
from resnet_flax.weights import torch_state_dict
from resnet_flax.weights.torch_state_dict import read_state_dict

__all__ = ['TORCHVISION_NAMES', 'convert_torchvision', 'download', 'expected_shapes',
           'imagenet_class_names', 'read_state_dict', 'torchvision_fields']

# torchvision.models names, all registry names with the same fields
TORCHVISION_NAMES = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
                     'resnext50_32x4d', 'resnext101_32x8d', 'resnext101_64x4d',
                     'wide_resnet50_2', 'wide_resnet101_2')


def torchvision_fields(name: str) -> dict[str, Any]:
  """The model fields of a torchvision network name."""
  return torch_state_dict.library_fields(name, TORCHVISION_NAMES, 'torchvision')


def download(model_or_url: str) -> str:
  """The local copy of the official torchvision weights of a model name (its DEFAULT weights),
  or of a URL, downloaded once into torch.hub's cache. Needs internet, torch (and torchvision
  for a model name)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise WeightsError('downloading weights needs torch (pip install torch)') from None
  url, check_hash = model_or_url, False
  if not urlparse(model_or_url).scheme:
    torchvision_fields(model_or_url)
    try:
      import torchvision  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise WeightsError('--download needs torchvision for the weights\' address (pip install '
                         'torchvision), or pass their URL as --in') from None
    url, check_hash = torchvision.models.get_model_weights(model_or_url).DEFAULT.url, True
  path = cache_path(torch.hub.get_dir(), url, official=check_hash)
  if not os.path.isfile(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # torchvision's file names end with a prefix of their sha256, which the download checks
    prefix = re.search(r'-([a-f0-9]{8,})\.', os.path.basename(path)) if check_hash else None
    try:
      torch.hub.download_url_to_file(url, path, prefix[1] if prefix else None)
    except Exception as e:  # noqa: BLE001 - no network, a bad address, a bad hash
      raise WeightsError(f'cannot download {url} ({first_line(e)})') from None
  return path


def cache_path(hub_dir: str, url: str, *, official: bool) -> str:
  """Where `download` keeps the file of `url`: torch.hub's cache under its name for torchvision's
  official weights (names that end with their hash, which the download checks), in a folder
  named after the whole URL for any other (two addresses of one file name, e.g.
  `.../model.safetensors`, are two files)."""
  name = os.path.basename(urlparse(url).path) or 'weights'
  if official:
    return os.path.join(hub_dir, 'checkpoints', name)
  folder = 'url-' + hashlib.sha256(url.encode()).hexdigest()[:16]
  return os.path.join(hub_dir, 'checkpoints', folder, name)


def expected_shapes(model_name: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
  """{key: shape} of the state dict of torchvision's `model_name` (without the unused
  num_batches_tracked counters), as the conversion expects it."""
  return torch_state_dict.expected_shapes(
      {**torchvision_fields(model_name), 'num_classes': num_classes}, 'torchvision')


IMAGENET_CLASSES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                'imagenet_classes.txt')


def imagenet_class_names() -> list[str]:
  """The 1000 ImageNet (ILSVRC-2012) class names in label order, the short English names
  torchvision shows (`imagenet_classes.txt`, one per line)."""
  with open(IMAGENET_CLASSES) as f:
    names = [line.rstrip('\n') for line in f]
  if len(names) != 1000:
    raise WeightsError(f'{IMAGENET_CLASSES}: {len(names)} class names, expected 1000')
  return names


def convert_torchvision(model_name: str, state_dict: Mapping[str, Any],
                        ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(model fields, params, batch_stats) of a torchvision state dict, as numpy arrays (see
  `torch_state_dict.convert_state_dict`: the classes come from `fc`, a misfit is refused)."""
  return torch_state_dict.convert_state_dict(torchvision_fields(model_name), state_dict,
                                             'torchvision')
