"""Another framework's compiled forward pass, run by JAX's XLA: the framework comparison's
`keras-program` side, a worker process (`step_server`): `python -m
resnet_flax.tools.xla_program SPEC_JSON`.

`keras_program.export` writes the XLA program that TensorFlow compiles for Keras' inference
forward pass (an HloModuleProto), with its arguments and Keras' logits. Here that program
is converted to StableHLO, compiled by this process's jaxlib with the compiler options of the
spec's `compiler_options` setting as our eval step of the same unit type takes them
(`compiler.options`: 'none', XLA's defaults, or 'auto', our eval step's own), and run on the
first device with the same arguments: the same network, the same weights, and the program
Keras runs, on our XLA. Timed against our eval step it separates what our program does from
what TensorFlow's XLA build does with its own: if Keras' program runs slower here than ours,
a gap to Keras is in its compiler and run time, not in the operations we ask for.

The worker checks the program first: its logits must equal Keras' to float32 round-off
(`TOLERANCE`, relative to the largest logit), or it stops with an error. It converts the
program with jaxlib's own HLO-to-StableHLO translation, which JAX does not export publicly; a
jaxlib without it is a `DependencyError` (one line).

The parameter count it reports is counted from the program's trainable-weight arguments.

Spec: {"program_dir": FOLDER, "image_size": S, "block": "basic" | "bottleneck"[,
"compiler_options": "none" | "auto"]}.
"""

import json
import os
import sys
import time

import jax
import numpy as np

from resnet_flax import compiler
from resnet_flax.errors import DependencyError, first_line
from resnet_flax.tools import step_server
from resnet_flax.tools.keras_program import ARGUMENTS, DESCRIPTION, LOGITS, PROGRAM

TOLERANCE = 1e-5


def _compiler():
  """(to StableHLO, compile): jaxlib's HLO translation and the CPU/GPU client's compiler."""
  try:
    from jax._src import xla_bridge
    from jax._src.interpreters import mlir
    from jax._src.lib import _jax, xla_client
    from jax._src.lib.mlir import ir
    to_stablehlo = _jax.mlir.hlo_to_stablehlo
  except (ImportError, AttributeError) as e:
    raise DependencyError(f'this jaxlib cannot translate an XLA program ({first_line(e)}); '
                          f'running another framework\'s program needs jax 0.10 or 0.11') from None

  def compile_program(hlo: bytes, options: dict):
    backend = xla_bridge.get_backend()
    compile_options = xla_client.CompileOptions()
    compile_options.env_option_overrides = sorted(options.items())
    with mlir.make_ir_context():
      module = ir.Module.parse(to_stablehlo(hlo))
      devices = xla_client.DeviceList(tuple(backend.local_devices()[:1]))
      try:
        return backend.compile_and_load(mlir.module_to_bytecode(module), devices,
                                        compile_options)
      except (AttributeError, TypeError) as e:   # the client's interface, not the program
        raise DependencyError(f'this jaxlib compiles programs differently ({first_line(e)}); '
                              f'running another framework\'s program needs jax 0.10 or '
                              f'0.11') from None
  return compile_program


def load(folder: str, compiler_options=None):
  """(run, arguments, max relative difference from the exporter's logits): `run(arguments)`
  executes the program once and returns its outputs (not waited for)."""
  with open(os.path.join(folder, PROGRAM), 'rb') as f:
    executable = _compiler()(f.read(), dict(compiler_options or {}))
  with np.load(os.path.join(folder, ARGUMENTS)) as saved:
    device = jax.local_devices()[0]
    arguments = [jax.device_put(saved[f'arr_{i}'], device) for i in range(len(saved.files))]
  expected = np.load(os.path.join(folder, LOGITS))
  logits = np.asarray(executable.execute(arguments)[0])
  if logits.shape != expected.shape:
    raise RuntimeError(f'the program returned logits of shape {logits.shape}, the exporter '
                       f'{expected.shape}')
  difference = float(np.max(np.abs(logits - expected)) / max(np.max(np.abs(expected)), 1e-30))
  return executable.execute, arguments, difference


def build(spec: dict):
  start = time.perf_counter()
  size, setting = int(spec['image_size']), spec.get('compiler_options', 'none')
  options = dict(compiler.options(compiler.resolve(setting, (size, size, 3)),
                                  jax.default_backend(), 'eval', spec['block']))
  run, arguments, difference = load(spec['program_dir'], options)
  loaded_s = round(time.perf_counter() - start, 3)   # compilation and the checked first call
  if not difference <= TOLERANCE:
    raise RuntimeError(f'the program run here differs from its exporter\'s logits by '
                       f'{difference:.3g} (relative), above {TOLERANCE}')

  def evaluate(_):
    jax.block_until_ready(run(arguments))

  calls = {'eval': evaluate}
  with open(os.path.join(spec['program_dir'], DESCRIPTION)) as f:
    described = json.load(f)
  trainable = arguments[:int(described['trainable_arguments'])]
  info = {
      'framework': 'keras-program',
      'model_source': described['source'],
      'num_params': int(sum(a.size for a in trainable)),
      'image_size': size,
      'layout': 'channels_last',
      'run_by': f'jax {jax.__version__} ({jax.default_backend()}), ' + (
          f'compiler options {options}' if options else "XLA's default options"),
      'compiler_options': setting,
      'xla_options': options,
      'max_relative_difference_from_keras': difference,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'first_call_s': {'eval': loaded_s},
      'imports_tensorflow': 'tensorflow' in sys.modules,   # must be False
  }
  return calls, info


if __name__ == '__main__':
  step_server.run_worker(build, sys.argv)
