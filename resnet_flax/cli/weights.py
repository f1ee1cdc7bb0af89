"""`resnet-flax convert-weights`: pretrained weights of another framework -> a run folder.

  resnet-flax convert-weights --from torchvision --model resnet50 --in resnet50.pth --out DIR
  resnet-flax convert-weights --from torchvision --model resnext50_32x4d \\
      --in weights.safetensors --out DIR
  resnet-flax convert-weights --from torchvision --model resnet50 --download --out DIR
  resnet-flax convert-weights --from keras --model keras_resnet50v2 --in w.h5 --out DIR
  resnet-flax convert-weights --from timm --model seresnext50_32x4d --in model.safetensors \
      --out DIR

`--in` is a `.pth` / `.pt` / `.safetensors` file or a URL (torchvision), a `.pth` /
`.safetensors` file (timm: SE-ResNet(eXt), ResNet-D, ResNet-RS and timm's plain ResNets), or a
`.h5` / `.weights.h5` / `.keras` file (Keras applications, models `keras_resnet50` ...
`keras_resnet152v2`); `--download` fetches the official weights of the model (needs internet;
cached by torch.hub, Keras or timm's Hugging Face cache). DIR then reads like a run folder
(`resnet-flax evaluate --workdir DIR`, `--config.init_from=DIR`, `resnet-flax predict`); its
stored config is configs/imagenet.py with the model's fields (preprocessing included), and the
number of classes is that of the weights' classifier. `--eval-crop-fraction` sets the stored
eval resize (torchvision's newer IMAGENET1K_V2 weights: 224 / 232 = 0.9655). A 1000-class head
gets ImageNet's class names (what prediction prints) unless `--class-names FILE` (one per line)
or `--class-names none` says otherwise.
"""

import argparse
import sys

from resnet_flax.cli import common
from resnet_flax.errors import UserError


def convert_weights(argv=None) -> int:
  from resnet_flax.weights.convert import CONVERTERS
  parser = argparse.ArgumentParser(prog='resnet-flax convert-weights',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--from', dest='source', required=True, choices=sorted(CONVERTERS),
                      help='the framework the weights come from')
  parser.add_argument('--model', required=True, help='the network name, e.g. resnet50')
  parser.add_argument('--in', dest='input', help='weights file (.pth, .safetensors) or URL')
  parser.add_argument('--download', action='store_true',
                      help="download the model's official weights (needs internet)")
  parser.add_argument('--out', required=True, help='the checkpoint folder to write')
  parser.add_argument('--eval-crop-fraction', type=float, default=None,
                      help='stored data.eval_crop_fraction: center crop 224 of the shorter side '
                           'resized to 224 / this (default 0.875: resize 256; torchvision '
                           "'IMAGENET1K_V2' weights were evaluated at resize 232: 0.9655)")
  parser.add_argument('--class-names', default=None,
                      help="a text file with one name per class (the weights' order), or "
                           "'none'; default: ImageNet's names for a 1000-class head")
  args = parser.parse_args((sys.argv if argv is None else argv)[1:])
  try:
    line = CONVERTERS[args.source](args)
  except UserError as e:
    return common.report_error(e)
  except (OSError, ImportError, ValueError) as e:   # an unreadable or foreign weights file
    return common.report_error(UserError(str(e)))
  print(line)
  print(f'evaluate: resnet-flax evaluate --workdir {args.out}; fine-tune: '
        f'--config.init_from={args.out}')
  return 0
