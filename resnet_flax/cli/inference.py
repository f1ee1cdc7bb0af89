"""`resnet-flax predict` and `resnet-flax export`: a saved model on image files, or as a
self-contained function (see docs/INFERENCE.md). Neither needs TensorFlow (but --saved-model)."""

import argparse
import json
import sys

from resnet_flax.cli import common
from resnet_flax.errors import UserError


def predict(argv=None) -> int:
  """Classify images with a saved model: `resnet-flax predict --workdir DIR [--step N] [--top-k 5]
  [--json] IMAGE...` (or `--checkpoint PATH`: a checkpoints folder or one step's). Prints the
  top-5 classes with their probabilities for each image (JPEG or PNG of any size and mode),
  preprocessed as the run's evaluation does."""
  parser = argparse.ArgumentParser(prog='resnet-flax predict',
                                   description=predict.__doc__.split('\n')[0])
  common.add_checkpoint_args(parser)
  parser.add_argument('--top-k', type=int, default=5, help='classes shown per image')
  parser.add_argument('--batch-size', type=int, default=32, help='images per forward pass')
  parser.add_argument('--json', action='store_true', help='one JSON object on stdout')
  parser.add_argument('--max-image-pixels', type=int, default=None,
                      help="refuse images with more pixels than this (Pillow's decompression-"
                           'bomb guard; default: its own, about 89 million; 0: no limit)')
  parser.add_argument('images', nargs='+', metavar='IMAGE', help='JPEG / PNG files')
  args = parser.parse_args((sys.argv if argv is None else argv)[1:])
  if args.max_image_pixels is not None:
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = args.max_image_pixels or None
  from resnet_flax.inference import predictor as inference
  try:
    model = inference.load(args.workdir or args.checkpoint, args.step)
    results = model.predict(args.images, top_k=args.top_k, batch_size=args.batch_size)
  except UserError as e:
    return common.report_error(e)
  if args.json:
    print(json.dumps(inference.predictions_to_json(model, args.images, results)))
  else:
    print(inference.describe(model))
    print('\n'.join(inference.format_predictions(args.images, results)))
  return 0


def export(argv=None) -> int:
  """Export a saved model for serving: `resnet-flax export --workdir DIR (or --checkpoint PATH)
  [--step N] --out FILE [--input-dtype uint8|float32] [--platforms cpu,cuda] [--saved-model
  DIR]`. Writes the inference function (images at the model's input size -> logits,
  normalisation included, any batch size) serialised with jax.export to FILE, a description
  to FILE.json, and with --saved-model a TensorFlow SavedModel (jax2tf; needs TensorFlow)."""
  parser = argparse.ArgumentParser(prog='resnet-flax export',
                                   description=export.__doc__.split('\n')[0])
  common.add_checkpoint_args(parser)
  parser.add_argument('--out', required=True, help='file to write the exported function to')
  parser.add_argument('--input-dtype', default='uint8', choices=('uint8', 'float32'),
                      help='dtype of the image batch (float32: still on the 0..255 scale)')
  parser.add_argument('--platforms', default='',
                      help='comma-separated, e.g. cpu,cuda (default: this machine\'s)')
  parser.add_argument('--saved-model', default='', help='also write a TF SavedModel here')
  args = parser.parse_args((sys.argv if argv is None else argv)[1:])
  from resnet_flax.inference import export as exporting
  from resnet_flax.inference import predictor as inference
  platforms = [p.strip() for p in args.platforms.split(',') if p.strip()] or None
  try:
    model = inference.load(args.workdir or args.checkpoint, args.step)
    info = exporting.write(model, args.out, input_dtype=args.input_dtype, platforms=platforms)
    if args.saved_model:
      exporting.save_saved_model(model, args.saved_model, input_dtype=args.input_dtype)
  except UserError as e:
    return common.report_error(e)
  shape = 'x'.join(map(str, info['input_shape'][1:]))
  print(f'{inference.describe(model)}\nwrote {args.out} (batch x {shape} '
        f'{args.input_dtype} -> logits, {info["num_classes"]} classes; platforms '
        f'{", ".join(info["platforms"])}) and {args.out}.json'
        + (f'; SavedModel {args.saved_model}' if args.saved_model else ''))
  return 0
