"""Convert pretrained weights of another framework into a resnet_flax checkpoint folder.

  python scripts/convert_weights.py --from torchvision --model resnet50 --in resnet50.pth --out DIR
  python scripts/convert_weights.py --from torchvision --model resnext50_32x4d \
      --in weights.safetensors --out DIR
  python scripts/convert_weights.py --from torchvision --model resnet50 --download --out DIR
  python scripts/convert_weights.py --from keras --model keras_resnet50v2 --in w.h5 --out DIR

`--in` is a `.pth` / `.pt` / `.safetensors` file or a URL (torchvision), or a `.h5` /
`.weights.h5` / `.keras` file (Keras applications, models `keras_resnet50` ...
`keras_resnet152v2`); `--download` fetches the official weights of the model (needs internet;
cached by torch.hub or Keras). DIR then reads like a run
folder: `python scripts/evaluate.py --workdir DIR`, `--config.init_from=DIR`, scripts/predict.py;
its stored config is configs/imagenet.py with the model's fields (preprocessing included), and
the number of classes is that of the weights' classifier. `--eval-crop-fraction` sets the stored
eval resize (torchvision's newer IMAGENET1K_V2 weights: 224 / 232 = 0.9655).

Each `--from` source is one function in CONVERTERS taking the parsed arguments.
"""

import argparse
import os
import sys
from urllib.parse import urlparse

try:
  import resnet_flax  # noqa: F401
except ImportError:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_flax import cli  # noqa: E402


def convert_torchvision(args) -> str:
  """torchvision state dict -> checkpoint; returns the summary line."""
  from resnet_flax.weights import WeightsError, export_checkpoint
  from resnet_flax.weights import torchvision_import as tv
  if bool(args.input) == args.download:
    raise WeightsError('pass either --in FILE_OR_URL or --download')
  tv.torchvision_fields(args.model)   # an unknown name fails before any download
  if args.download:
    path = tv.download(args.model)
  elif urlparse(args.input).scheme in ('http', 'https'):
    path = tv.download(args.input)
  else:
    path = args.input
  fields, params, batch_stats = tv.convert_torchvision(args.model, tv.read_state_dict(path))
  config = export_checkpoint.pretrained_config(fields, args.eval_crop_fraction)
  names = tv.imagenet_class_names() if fields['num_classes'] == 1000 else None
  checkpoint = export_checkpoint.save_pretrained(
      args.out, config, params, batch_stats, class_names=names,
      source={'from': 'torchvision', 'model': args.model, 'file': os.path.basename(path)})
  return f'{args.model}: {os.path.basename(path)} -> {checkpoint}'


def convert_keras(args) -> str:
  """Keras applications weights (.h5, .weights.h5, .keras) -> checkpoint; the stored config
  holds Keras' input convention (caffe or tf mode) as mean/std of the RGB pipeline."""
  from resnet_flax.weights import WeightsError, export_checkpoint, keras_import
  if bool(args.input) == args.download:
    raise WeightsError('pass either --in FILE (.h5, .weights.h5, .keras) or --download')
  source = args.input
  if args.download:   # Keras fetches its 'imagenet' weights into ~/.keras (needs internet)
    fields, app_name = keras_import.resolve_name(args.model)
    import keras
    source = getattr(keras.applications, app_name)(weights='imagenet')
  fields, params, batch_stats = keras_import.convert_keras(args.model, source)
  params, mean, std = keras_import.rgb_input_convention(fields, params)
  config = export_checkpoint.pretrained_config(fields, args.eval_crop_fraction)
  config.data.mean, config.data.std = mean, std
  checkpoint = export_checkpoint.save_pretrained(
      args.out, config, params, batch_stats,
      source={'from': 'keras', 'model': args.model,
              'file': os.path.basename(args.input) if args.input else 'imagenet'})
  return f'{args.model}: {args.input or "keras imagenet weights"} -> {checkpoint}'


# --from value -> converter(args) returning the line to print
CONVERTERS = {
    'torchvision': convert_torchvision,
    'keras': convert_keras,
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
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
  args = parser.parse_args(argv)
  try:
    line = CONVERTERS[args.source](args)
  except (ValueError, OSError, ImportError) as e:   # ConfigError and WeightsError included
    return cli.report_error(e)
  print(line)
  print(f'evaluate: python scripts/evaluate.py --workdir {args.out}; fine-tune: '
        f'--config.init_from={args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
