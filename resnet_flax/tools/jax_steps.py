"""The framework comparison's resnet_flax side, a worker process (`step_server`): `python -m
resnet_flax.tools.jax_steps SPEC_JSON`.

It times the project's own train and eval steps, built as training builds them:
`benchmarking.shipped_config(model)` (the family's shipped recipe, float32) with the spec's
batch size and overrides, run by `benchmarking.SyntheticRun` (`train.build.build_run` on
synthetic uint8 images already on the device; the on-device preprocessing of the recipe runs
inside the step: cast, normalisation, and for the CIFAR family the pad-4 crop and flip). The
first call of each step (compilation) is timed once before the worker says it is ready.

Spec: {"model": NAME, "batch_size": B, "overrides": {"section.field": value, ...}}.
"""

import os
import sys

import jax

from resnet_flax.tools import benchmarking, step_server


def build(spec: dict):
  config = benchmarking.shipped_config(spec['model'], batch_size=spec['batch_size'],
                                       overrides=spec.get('overrides'))
  bench = benchmarking.SyntheticRun(config, steps=1, warmup=0, devices=jax.devices()[:1])

  def train(k):
    jax.block_until_ready(bench.train(k))

  def evaluate(k):
    jax.block_until_ready(bench.evaluate(k))

  calls = {'train': train, 'eval': evaluate}
  first = step_server.time_first_calls(calls)
  info = {
      'framework': 'resnet_flax',
      'config': f"configs/{benchmarking.FAMILY_CONFIGS[config.model.family]}.py",
      'num_params': int(bench.run.num_params),
      'image_size': int(bench.config.data.image_size),
      'dtype': benchmarking.compute_dtype(bench.config),
      'preprocess_on_device': str(bench.config.data.preprocess),
      'overrides': dict(spec.get('overrides') or {}),
      'model_fields': {k: list(v) if isinstance(v, tuple) else v
                       for k, v in bench.config.model.items()},
      'conv_impl': bench.run.model.conv_impl,                     # what 'auto' became here
      'eval_loop': bool(bench.run.model.eval_loop),               # the same
      'jax_version': jax.__version__,
      'backend': jax.default_backend(),
      'device_kind': jax.devices()[0].device_kind,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),   # after the build (which may set them)
      'first_call_s': first,
      'imports_torch': 'torch' in sys.modules,   # must be False: one framework a process
  }
  return calls, info


if __name__ == '__main__':
  step_server.run_worker(build, sys.argv)
