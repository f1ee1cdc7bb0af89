"""`resnet-flax compare-frameworks` and `resnet-flax accelerator-report`: our steps against
PyTorch's side by side, and the one-command report of a GPU (or, `--quick`, of a CPU)."""

import argparse
import json
import os
import sys

from resnet_flax.cli import common
from resnet_flax.cli.tools import parse_assignments
from resnet_flax.errors import ConfigError, DataError, UserError
from resnet_flax.tools.keras_steps import EVAL_CALLS


def _write_json(path: str, record: dict) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(record, f, indent=2)
    f.write('\n')


def compare_frameworks(argv=None) -> int:
  """Our train and eval steps against PyTorch's (or Keras') on the same model and batch shape,
  each framework in its own process, in alternating rounds: `resnet-flax compare-frameworks
  [--model resnet20] [--against torch|keras|keras-program] [--batch N] [--rounds 5]
  [--steps 5] [--warmup 1]
  [--layout channels_last|nchw] [--threads T] [--kinds train,eval] [--set FIELD=VALUE ...]
  [--keras-eval predict_on_batch|program] [--program-dir DIR] [--program-options none|auto]
  [--json PATH]`
  (see resnet_flax/tools/compare_frameworks.py)."""
  parser = argparse.ArgumentParser(prog='resnet-flax compare-frameworks',
                                   description=compare_frameworks.__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet20',
                      help='a registered model name with a PyTorch counterpart (resnet20, '
                           'resnet56, resnet50, ...; default resnet20)')
  parser.add_argument('--against', default='torch',
                      help="the other framework: torch (default), keras (Keras applications' "
                           "ResNets on TensorFlow, for our keras_resnet* models) or "
                           "keras-program (Keras' compiled forward pass run by JAX's XLA; "
                           "--kinds eval)")
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
                      help="the other framework's threads (default: the cores this process "
                           "may use)")
  parser.add_argument('--kinds', default='train,eval', help='train, eval or both (default)')
  parser.add_argument('--keras-eval', default=EVAL_CALLS[0], choices=EVAL_CALLS,
                      help="what Keras' eval step calls with --against keras: predict_on_batch "
                           "(default) or program (Keras' forward pass as one XLA program with "
                           "the weights as arguments, the program --against keras-program runs)")
  parser.add_argument('--program-dir', default=None,
                      help='with --against keras-program: keep Keras\' exported program here '
                           '(default: a temporary folder)')
  parser.add_argument('--program-options', default='none',
                      help="with --against keras-program: compile Keras' program with XLA's "
                           "defaults (none, default) or with our eval step's compiler options "
                           "(auto)")
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='override a field of our config (repeatable), e.g. '
                           'model.scan_units=off')
  parser.add_argument('--json', metavar='PATH', help='also write the whole record here')
  args = parser.parse_args((sys.argv if argv is None else argv)[1:])
  from resnet_flax.tools import compare_frameworks as tool
  try:
    result = tool.compare(args.model, against=args.against, batch_size=args.batch,
                          rounds=args.rounds, steps=args.steps, warmup=args.warmup,
                          layout=args.layout, threads=args.threads,
                          overrides=parse_assignments(args.set),
                          kinds=[k.strip() for k in args.kinds.split(',') if k.strip()],
                          keras_eval=args.keras_eval, program_dir=args.program_dir,
                          program_options=args.program_options)
  except UserError as e:
    return common.report_error(e)
  print(tool.table(result))
  if args.json:
    _write_json(args.json, result)
    print(f'record: {args.json}')
  return 0


def accelerator_report(argv=None) -> int:
  """Throughput, MFU, memory and compile times of one device in one report, a Markdown table
  and a JSON file: `resnet-flax accelerator-report [--out DIR] [--quick] [--budget-s 450]
  [--data-dir IMAGENETTE] [--input-backend auto]`; on a machine with network, `resnet-flax
  accelerator-report --prepare DIR` first puts the wheels and data the report needs into DIR
  (see resnet_flax/tools/accelerator_report.py and docs/BENCHMARKS.md)."""
  parser = argparse.ArgumentParser(prog='resnet-flax accelerator-report',
                                   description=accelerator_report.__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join('runs', 'accelerator-report'),
                      help='folder for accelerator_report.md and .json '
                           '(default runs/accelerator-report)')
  parser.add_argument('--quick', action='store_true',
                      help='tiny models, batches and steps: a check that runs on a CPU in '
                           'seconds')
  parser.add_argument('--budget-s', type=float, default=None,
                      help="the sections' time budget in seconds (default 450; --quick 120)")
  parser.add_argument('--data-dir', default=None,
                      help='Imagenette image folder (SPLIT/CLASS/*.JPEG) for the input '
                           'pipeline (default: DIR/imagenette of --prepare when it exists; '
                           '--quick: a few generated JPEGs)')
  parser.add_argument('--input-backend', default='auto',
                      help="the input pipeline's back end (default auto: Grain where it is "
                           "installed, else memory; neither needs TensorFlow)")
  parser.add_argument('--prepare', metavar='DIR', default=None,
                      help='only prepare DIR/wheels and DIR/imagenette for a machine without '
                           'network, then exit')
  parser.add_argument('--imagenette', default=None,
                      help='with --prepare: the Imagenette folder or .tar.gz to take the '
                           'subset from (default: the data cache, then the shared datasets)')
  parser.add_argument('--wheel-python', default='3.12',
                      help="with --prepare: the target machine's Python version (default 3.12)")
  args = parser.parse_args((sys.argv if argv is None else argv)[1:])
  try:
    if args.prepare:
      return _prepare(args)
    return _report(args, argv)
  except UserError as e:
    return common.report_error(e)


PREPARED = '.accelerator'   # the default folder of --prepare (git ignores it)
INPUT_BACKENDS = ('auto', 'grain', 'memory', 'tfdata')


def _prepare(args) -> int:
  from resnet_flax.tools import accelerator_prepare
  done = accelerator_prepare.prepare(args.prepare, imagenette=args.imagenette,
                                     python_version=args.wheel_python)
  print(f"imagenette subset: {done['files']} files, {done['bytes'] / 2**20:.1f} MiB in "
        f"{done['imagenette']} (from {done['imagenette_source']})")
  print(f"wheels in {os.path.join(args.prepare, 'wheels')}: {', '.join(done['wheels'])}")
  return 0


def _report(args, argv) -> int:
  import tempfile
  from resnet_flax.tools import accelerator_prepare, accelerator_report, accelerator_sections
  if args.input_backend not in INPUT_BACKENDS:
    raise ConfigError(f'--input-backend {args.input_backend}: choose one of '
                      f'{", ".join(INPUT_BACKENDS)}')
  settings = accelerator_sections.QUICK if args.quick else accelerator_sections.FULL
  settings = accelerator_sections.dataclasses.replace(settings,
                                                      input_backend=args.input_backend)
  budget = args.budget_s
  if budget is None:
    budget = (accelerator_report.QUICK_BUDGET_S if args.quick else
              accelerator_report.DEFAULT_BUDGET_S)
  if not budget > 0:
    raise ConfigError(f'--budget-s {args.budget_s}: must be a positive number of seconds')
  data_dir = args.data_dir
  if data_dir is not None and not os.path.isdir(data_dir):
    raise DataError(f'--data-dir {data_dir}: no such folder (an Imagenette tree '
                    f'SPLIT/CLASS/*.JPEG; see --prepare)')
  prepared = os.path.join(PREPARED, 'imagenette')
  if data_dir is None and not args.quick and os.path.isdir(prepared):
    data_dir = prepared
  command = ' '.join((sys.argv if argv is None else argv))
  with tempfile.TemporaryDirectory() as scratch:
    if data_dir is None and args.quick:
      data_dir = accelerator_prepare.sample_folder(os.path.join(scratch, 'images'))
    record = accelerator_report.report(settings, args.out, budget_s=budget, data_dir=data_dir,
                                       command=command)
  print(accelerator_report.markdown(record))
  print(f'files: {os.path.join(args.out, accelerator_report.MARKDOWN_FILE)}, '
        f'{os.path.join(args.out, accelerator_report.JSON_FILE)}')
  return 0
