"""The framework comparison's PyTorch side, a worker process (`step_server`): `python -m
resnet_flax.tools.torch_steps SPEC_JSON`. Only this process imports torch.

The model: torchvision's (`torchvision.models.get_model(NAME, weights=None)`: nothing is
downloaded), or for the CIFAR family the reference ResNet with option-A shortcuts of the
source checkout's test code (`tests/torch_models.py`, `cifar_resnet(depth)`). The steps, on
one random float32 batch (N, 3, S, S) with random labels, made once:

* train: `model.train()`, forward, cross-entropy, backward, SGD with momentum 0.9 and weight
  decay 1e-4 (lr 0.1), gradients set to None before each step;
* eval: `model.eval()`, forward under `torch.no_grad()`.

`torch.set_num_threads(threads)`; the layout is channels_last (model and input) unless the
spec says 'nchw'. CPU ops are synchronous, so a call's wall time is its step's. A missing
torch or torchvision, or a missing reference file, is a `DependencyError` (one line).

Spec: {"source": "torchvision" | "cifar", "model": NAME, "depth": D, "num_classes": C,
"image_size": S, "batch_size": N, "layout": "channels_last" | "nchw", "threads": T}.
"""

import importlib.util
import os
import sys

from resnet_flax.errors import DependencyError
from resnet_flax.tools import step_server

REFERENCE_MODELS = os.path.join('tests', 'torch_models.py')   # in the source checkout


def _import(name: str):
  return step_server.import_framework(
      name, 'PyTorch and torchvision: pip install -r requirements-test.txt')


def reference_models():
  """The checkout's tests/torch_models.py as a module."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  path = os.path.join(root, REFERENCE_MODELS)
  if not os.path.isfile(path):
    raise DependencyError(f'{path}: not found; the CIFAR models of the comparison are the '
                          f'test code of a source checkout (run from one)')
  spec = importlib.util.spec_from_file_location('torch_models', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def create(spec: dict):
  if spec['source'] == 'cifar':
    return reference_models().cifar_resnet(spec['depth'], spec['num_classes'])
  torchvision = _import('torchvision')
  return torchvision.models.get_model(spec['model'], weights=None,
                                      num_classes=spec['num_classes'])


def build(spec: dict):
  torch = _import('torch')
  torch.set_num_threads(int(spec['threads']))
  torch.manual_seed(0)
  model = create(spec)
  n, s = int(spec['batch_size']), int(spec['image_size'])
  images = torch.randn(n, 3, s, s)
  labels = torch.randint(0, int(spec['num_classes']), (n,))
  if spec['layout'] == 'channels_last':
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  loss_fn = torch.nn.functional.cross_entropy

  def train(_):
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(images), labels).backward()
    optimizer.step()

  def evaluate(_):
    model.eval()
    with torch.no_grad():
      model(images)

  calls = {'train': train, 'eval': evaluate}
  first = step_server.time_first_calls(calls)
  torchvision = sys.modules.get('torchvision')
  info = {
      'framework': 'torch',
      'num_params': int(sum(p.numel() for p in model.parameters())),
      'image_size': s,
      'layout': spec['layout'],
      'threads': torch.get_num_threads(),
      'torch_version': torch.__version__,
      'torchvision_version': getattr(torchvision, '__version__', None),
      'model_source': (REFERENCE_MODELS if spec['source'] == 'cifar'
                       else f"torchvision.models.{spec['model']}"),
      'first_call_s': first,
      'imports_jax': 'jax' in sys.modules,   # must be False: one framework a process
  }
  return calls, info


if __name__ == '__main__':
  step_server.run_worker(build, sys.argv)
