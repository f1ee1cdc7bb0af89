"""Export a saved model for serving: `python scripts/export.py --workdir DIR (or --checkpoint
PATH) [--step N] --out FILE [--input-dtype uint8|float32] [--platforms cpu,cuda]
[--saved-model DIR]`.

Writes the inference function (images at the model's input size -> logits, normalisation
included, any batch size) serialised with jax.export to FILE, a description to FILE.json, and
with --saved-model a TensorFlow SavedModel (jax2tf; needs TensorFlow). The file reloads with
jax and numpy alone; see docs/INFERENCE.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_flax import cli, configuration  # noqa: E402
from resnet_flax.data import DataError  # noqa: E402


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  cli.add_checkpoint_args(parser)
  parser.add_argument('--out', required=True, help='file to write the exported function to')
  parser.add_argument('--input-dtype', default='uint8', choices=('uint8', 'float32'),
                      help='dtype of the image batch (float32: still on the 0..255 scale)')
  parser.add_argument('--platforms', default='',
                      help='comma-separated, e.g. cpu,cuda (default: this machine\'s)')
  parser.add_argument('--saved-model', default='', help='also write a TF SavedModel here')
  return parser.parse_args(argv)


def main(argv) -> int:
  args = parse_args(argv)
  from resnet_flax import exporting, inference
  platforms = [p.strip() for p in args.platforms.split(',') if p.strip()] or None
  try:
    predictor = inference.load(args.workdir or args.checkpoint, args.step)
    info = exporting.write(predictor, args.out, input_dtype=args.input_dtype,
                           platforms=platforms)
    if args.saved_model:
      exporting.save_saved_model(predictor, args.saved_model, input_dtype=args.input_dtype)
  except (configuration.ConfigError, DataError) as e:
    return cli.report_error(e)
  shape = 'x'.join(map(str, info['input_shape'][1:]))
  print(f'{inference.describe(predictor)}\nwrote {args.out} (batch x {shape} '
        f'{args.input_dtype} -> logits, {info["num_classes"]} classes; platforms '
        f'{", ".join(info["platforms"])}) and {args.out}.json'
        + (f'; SavedModel {args.saved_model}' if args.saved_model else ''))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
