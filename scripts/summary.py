"""Parameters, BatchNorm statistics and MACs of a model, per stage and in total.

  python scripts/summary.py resnet50
  python scripts/summary.py resnet50 --set depth=101 --set version=v2 --image-size 160
  python scripts/summary.py resnet1202 --json

Nothing is materialised: shapes come from `jax.eval_shape`, MACs from the traced jaxpr.
"""

import argparse
import json
import os
import sys

try:
  import resnet_flax  # noqa: F401
except ImportError:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_flax import model_stats  # noqa: E402
from resnet_flax.models import NAMES, model_fields  # noqa: E402


def parse_value(text: str):
  """'12' -> 12, '0.5' -> 0.5, 'true'/'false' -> bool, 'none' -> None, '3,4,6,3' -> tuple."""
  lowered = text.strip().lower()
  if lowered in ('true', 'false'):
    return lowered == 'true'
  if lowered in ('none', 'null'):
    return None
  if ',' in text:
    return tuple(parse_value(part) for part in text.split(',') if part.strip())
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def human(n: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(n) >= scale:
      return f'{n / scale:.2f}{unit}'
  return str(int(n))


def format_table(summary: dict) -> str:
  header = ('Part', 'Output shape', 'Params', 'MACs')
  rows = [(r['name'], str(tuple(r['output_shape'])), f"{r['params']:,}", human(r['macs']))
          for r in summary['stages']]
  widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
  line = '  '.join('{:<%d}' % w if i < 2 else '{:>%d}' % w for i, w in enumerate(widths))
  rule = '-' * (sum(widths) + 2 * (len(widths) - 1))
  name = summary['name'] or '(config)'
  if summary.get('config_overrides'):
    name += f" ({', '.join(summary['config_overrides'])})"
  out = [f"Model: {name}   input: {summary['image_size']}x{summary['image_size']}",
         rule, line.format(*header), rule]
  out += [line.format(*row) for row in rows]
  out += [rule,
          f"Trainable params:  {summary['params']:,} ({human(summary['params'])})",
          f"BatchNorm stats:   {summary['batch_stats']:,}",
          f"MACs per image:    {summary['macs']:,} ({human(summary['macs'])})"]
  return '\n'.join(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('name', help='registered model name (e.g. resnet50, resnet20)')
  parser.add_argument('--image-size', type=int, default=None,
                      help='input height and width (default: 224 ImageNet family, 32 CIFAR)')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='override a model config field (repeatable), e.g. depth=101')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  args = parser.parse_args(argv)

  if args.name not in NAMES:
    print(f'summary.py: unknown model name {args.name!r}; known: {", ".join(sorted(NAMES))}',
          file=sys.stderr)
    return 2
  cfg = model_fields(args.name)
  for item in args.set:
    field, sep, value = item.partition('=')
    if not sep or not field.strip():
      print(f'summary.py: --set expects FIELD=VALUE, got {item!r}', file=sys.stderr)
      return 2
    cfg[field.strip()] = parse_value(value)
  try:
    summary = model_stats.summarize(cfg, args.image_size)
  except ValueError as err:
    print(f'summary.py: {err}', file=sys.stderr)
    return 2
  summary['config_overrides'] = list(args.set)

  if args.json:
    print(json.dumps(summary))
  else:
    print(format_table(summary))
  return 0


if __name__ == '__main__':
  sys.exit(main())
