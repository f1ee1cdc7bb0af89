"""`resnet-flax compare-frameworks`: our steps against PyTorch's side by side."""

import argparse
import json
import os
import sys

from resnet_flax.cli import common
from resnet_flax.cli.tools import parse_assignments
from resnet_flax.errors import UserError


def _write_json(path: str, record: dict) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(record, f, indent=2)
    f.write('\n')


def compare_frameworks(argv=None) -> int:
  """Our train and eval steps against PyTorch's on the same model and batch shape, each
  framework in its own process, in alternating rounds: `resnet-flax compare-frameworks
  [--model resnet20] [--batch N] [--rounds 5] [--steps 5] [--warmup 1] [--layout
  channels_last|nchw] [--threads T] [--kinds train,eval] [--set FIELD=VALUE ...] [--json PATH]`
  (see resnet_flax/tools/compare_frameworks.py)."""
  parser = argparse.ArgumentParser(prog='resnet-flax compare-frameworks',
                                   description=compare_frameworks.__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet20',
                      help='a registered model name with a PyTorch counterpart (resnet20, '
                           'resnet56, resnet50, ...; default resnet20)')
  parser.add_argument('--batch', type=int, default=None,
                      help='batch size (default: 128 for the CIFAR family, 16 otherwise)')
  parser.add_argument('--rounds', type=int, default=5, help='timing rounds (default 5)')
  parser.add_argument('--steps', type=int, default=5,
                      help='timed steps per side, kind and round (default 5)')
  parser.add_argument('--warmup', type=int, default=1,
                      help='untimed steps before them, each round (default 1)')
  parser.add_argument('--layout', default='channels_last', choices=('channels_last', 'nchw'),
                      help="PyTorch's memory layout (default channels_last)")
  parser.add_argument('--threads', type=int, default=None,
                      help="PyTorch's threads (default: the cores this process may use)")
  parser.add_argument('--kinds', default='train,eval', help='train, eval or both (default)')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='override a field of our config (repeatable), e.g. '
                           'model.scan_units=off')
  parser.add_argument('--json', metavar='PATH', help='also write the whole record here')
  args = parser.parse_args((sys.argv if argv is None else argv)[1:])
  from resnet_flax.tools import compare_frameworks as tool
  try:
    result = tool.compare(args.model, batch_size=args.batch, rounds=args.rounds,
                          steps=args.steps, warmup=args.warmup, layout=args.layout,
                          threads=args.threads, overrides=parse_assignments(args.set),
                          kinds=[k.strip() for k in args.kinds.split(',') if k.strip()])
  except UserError as e:
    return common.report_error(e)
  print(tool.table(result))
  if args.json:
    _write_json(args.json, result)
    print(f'record: {args.json}')
  return 0
