"""Classify images with a saved model: `python scripts/predict.py --workdir DIR [--step N]
[--top-k 5] [--json] IMAGE...` (or `--checkpoint PATH`: a checkpoints folder or one step's).

Prints the top-5 classes with their probabilities for each image (JPEG or PNG of any size and
mode), preprocessed as the run's evaluation does; see docs/INFERENCE.md. Needs no TensorFlow.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_flax import cli, configuration  # noqa: E402
from resnet_flax.data import DataError  # noqa: E402


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  cli.add_checkpoint_args(parser)
  parser.add_argument('--top-k', type=int, default=5, help='classes shown per image')
  parser.add_argument('--batch-size', type=int, default=32, help='images per forward pass')
  parser.add_argument('--json', action='store_true', help='one JSON object on stdout')
  parser.add_argument('images', nargs='+', metavar='IMAGE', help='JPEG / PNG files')
  return parser.parse_args(argv)


def main(argv) -> int:
  args = parse_args(argv)
  from resnet_flax import inference
  try:
    predictor = inference.load(args.workdir or args.checkpoint, args.step)
    results = predictor.predict(args.images, top_k=args.top_k, batch_size=args.batch_size)
  except (configuration.ConfigError, DataError) as e:
    return cli.report_error(e)
  if args.json:
    print(json.dumps(inference.predictions_to_json(predictor, args.images, results)))
  else:
    print(inference.describe(predictor))
    print('\n'.join(inference.format_predictions(args.images, results)))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
