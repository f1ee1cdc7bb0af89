"""Reference files from PyTorch for tests/test_weights_torchvision.py and
tests/test_weights_timm.py, written by a separate process: `python tests/torch_reference.py
[--timm] OUT_DIR NAME...` (NAME: torchvision model names, or timm's with --timm).

torch is never imported by the test process itself: its CUDA build and JAX or TensorFlow in one
process can crash at import. For the first three names (four with --timm) it writes a random
model's state dict (`NAME.pth`; BatchNorm statistics and affine parameters random too, so that
every part of the conversion changes the logits), its eval-mode logits on a random input
(`NAME.npz`), and for the first also `NAME.safetensors`; for all names the state dict's shapes
(`shapes.json`); and two files the converter must refuse (`module.pth`, a pickled nn.Module;
`partial.pth`).
"""

import json
import os
import sys

import numpy as np
import torch

IMAGE_SIZE = 64   # both frameworks pool adaptively; small images keep the test fast
LOGIT_MODELS = {'torchvision': 3, 'timm': 4}


def create(library: str, name: str):
  """A randomly initialised torchvision or timm model (nothing is downloaded)."""
  if library == 'timm':
    import timm
    return timm.create_model(name, pretrained=False)
  import torchvision
  return torchvision.models.get_model(name, weights=None)


def random_model(library: str, name: str, seed: int = 0):
  torch.manual_seed(seed)
  model = create(library, name)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.2)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
  return model.eval()


def main(out_dir, names, library='torchvision'):
  os.makedirs(out_dir, exist_ok=True)
  x = np.random.default_rng(1).standard_normal((2, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
  for i, name in enumerate(names[:LOGIT_MODELS[library]]):
    model = random_model(library, name)
    with torch.no_grad():
      logits = model(torch.from_numpy(x)).numpy()
    torch.save(model.state_dict(), os.path.join(out_dir, f'{name}.pth'))
    np.savez(os.path.join(out_dir, f'{name}.npz'), images=x, logits=logits)
    if i == 0:
      from safetensors.torch import save_file
      save_file(model.state_dict(), os.path.join(out_dir, f'{name}.safetensors'))
  shapes = {}
  for name in names:
    with torch.device('meta'):   # shapes only: nothing is allocated or initialised
      model = create(library, name)
    shapes[name] = {k: list(v.shape) for k, v in model.state_dict().items()
                    if not k.endswith('num_batches_tracked')}
  with open(os.path.join(out_dir, 'shapes.json'), 'w') as f:
    json.dump(shapes, f)
  torch.save(torch.nn.Linear(2, 2), os.path.join(out_dir, 'module.pth'))
  torch.save({'fc.weight': torch.zeros(10, 512)}, os.path.join(out_dir, 'partial.pth'))


if __name__ == '__main__':
  if sys.argv[1] == '--timm':
    main(sys.argv[2], sys.argv[3:], 'timm')
  else:
    main(sys.argv[1], sys.argv[2:])
