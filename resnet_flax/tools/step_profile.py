"""Where the time of a train (or eval) step goes, per kind of operation.

`profile(config, mode='train', steps=3, warmup=2)` builds the run as the benchmark does
(`benchmarking.SyntheticRun`: the config's model, optimizer and compiled steps on synthetic data,
on one device) and compiles its step again with `xla_cpu_enable_xprof_traceme=true` added to the
options the run's step compiles with (`compiler.options` of the run's resolved setting, back
end, mode and unit type; none under pmap), so that XLA's CPU runtime records a trace event per
thunk (one per fusion, convolution, dot or copy of the compiled module), named by its HLO
instruction. After `warmup` untimed steps, `steps` steps run under `jax.profiler.trace` into a
temporary folder.

A thunk's time runs from its event's start to its completion: the runtime's 'end: NAME' event
where later (XLA runs convolutions asynchronously on the CPU; their own event is only the
launch). Where thunks overlap, the overlap is split equally among them, so the kinds add up to
the time the step had a thunk in flight (`busy_ms_per_step`, close to the wall time). A `while`,
`call` or `conditional` is left out: the thunks inside it have events of their own. Each
instruction's kind comes from `hlo_kinds.classify` (`layout_ms_per_step`: the layout copies and
conv-side work counted in a conv kind).
"""

import bisect
import collections
import glob
import shutil
import tempfile
import time

import jax

from resnet_flax import compiler
from resnet_flax.errors import ConfigError, DependencyError, first_line
from resnet_flax.tools import host_info
from resnet_flax.tools.benchmarking import SyntheticRun, model_label
from resnet_flax.tools.hlo_kinds import CONTAINERS, OUTSIDE, classify, parse_module

TRACE_OPTION = 'xla_cpu_enable_xprof_traceme'
MODES = compiler.STEPS   # the step profiled: its compiler options are that step's


def thunk_times(folder: str, module: str, skip=()) -> tuple[dict, int]:
  """({instruction: ns}, executions) of the module's thunks in a trace folder: each thunk from
  its start to its completion, overlapping time split equally among the thunks in flight."""
  from jax.profiler import ProfileData
  starts, ends, runs, skip = [], collections.defaultdict(list), set(), {None, *skip}
  for path in glob.glob(f'{folder}/**/*.xplane.pb', recursive=True):
    for plane in ProfileData.from_file(path).planes:
      for line in plane.lines:
        for event in line.events:
          stats = dict(event.stats)
          if stats.get('hlo_module') == module and stats.get('hlo_op') not in skip:
            starts.append((event.start_ns, event.end_ns, stats['hlo_op']))
            runs.add(stats.get('run_id'))
          elif event.name.startswith('end: '):
            ends[event.name[5:]].append(event.end_ns)
  for times in ends.values():
    times.sort()
  intervals = []
  for start, end, name in sorted(starts):
    later = ends.get(name, [])
    k = bisect.bisect_left(later, start)
    end = max(end, later[k]) if k < len(later) else end
    if end > start:
      intervals.append((start, end, name))
  points = sorted([(s, 1, j) for j, (s, _, _) in enumerate(intervals)] +
                  [(e, 0, j) for j, (_, e, _) in enumerate(intervals)])
  shares, active, last = collections.Counter(), set(), None
  for t, starting, j in points:
    if active:
      for a in active:
        shares[intervals[a][2]] += (t - last) / len(active)
    last = t
    (active.add if starting else active.discard)(j)
  return shares, len(runs)


def profile(config, *, mode: str = 'train', steps: int = 3, warmup: int = 2, top: int = 10,
            devices=None) -> dict:
  """The record of where `config`'s train or eval step spends its time (module docstring)."""
  if mode not in MODES:
    raise ConfigError(f'--mode {mode}: choose one of {", ".join(MODES)}')
  if steps < 1 or warmup < 0:
    raise ConfigError(f'steps={steps}, warmup={warmup}: give steps >= 1 and warmup >= 0')
  bench = SyntheticRun(config, steps=steps + warmup, warmup=warmup,
                       devices=devices or jax.local_devices()[:1])
  par, config = bench.par, bench.config
  options = dict(compiler.options(par.compiler_options, par.platform, mode, par.block)
                 if par.mode == 'jit' else {})
  options[TRACE_OPTION] = True
  step = bench.run.p_train if mode == 'train' else bench.run.p_eval
  batch = bench.train_batches[0] if mode == 'train' else bench.eval_batch
  try:
    compiled = step.lower(bench.state, batch).compile(compiler_options=options)
  except Exception as e:  # noqa: BLE001 - a jaxlib that does not know the option
    raise DependencyError(f'this jaxlib cannot compile with {TRACE_OPTION}: '
                          f'{first_line(e)}') from None
  text = compiled.as_text()
  module, instructions, _, _ = parse_module(text)
  kinds, state = classify(text), bench.state

  def run_once():
    nonlocal state
    if mode == 'eval':
      return jax.block_until_ready(compiled(state, batch))
    state, metrics = compiled(state, batch)
    return jax.block_until_ready(metrics)

  for _ in range(warmup + 1):
    run_once()
  folder = tempfile.mkdtemp(prefix='step-profile-')
  try:
    start = time.perf_counter()
    with jax.profiler.trace(folder):
      for _ in range(steps):
        run_once()
    wall = (time.perf_counter() - start) / steps
    skip = [n for n, i in instructions.items() if i.opcode in CONTAINERS]
    shares, runs = thunk_times(folder, module, skip)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  if not shares:
    raise DependencyError(f'this jax build records no per-thunk trace events on '
                          f'{par.platform} with {TRACE_OPTION}=true; nothing to profile')
  per_kind, layout = collections.Counter(), collections.Counter()
  per_op = {n: ns / (runs or steps) / 1e6 for n, ns in shares.items()}
  for name, ms in per_op.items():
    kind, is_layout = kinds.get(name, (OUTSIDE, False))
    per_kind[kind] += ms
    layout[kind] += ms if is_layout else 0.0
  total = sum(per_kind.values())
  return {
      'model': model_label(config.model), 'mode': mode,
      'batch_size': bench.batch_size if mode == 'train' else bench.eval_batch_size,
      'image_size': int(config.data.image_size),
      'conv_impl': bench.run.model.conv_impl,   # 'auto' resolved
      'compiler_options': str(config.compiler_options),
      'xla_options': {k: str(v) for k, v in options.items()}, 'steps': steps,
      'device_kind': jax.local_devices()[0].device_kind, 'cpu_model': host_info.cpu_model(),
      'load_average_1m': host_info.load_average(), 'jax_version': jax.__version__,
      'wall_ms_per_step': round(1e3 * wall, 3), 'busy_ms_per_step': round(total, 3),
      'kinds': [{'kind': k, 'ms_per_step': round(ms, 3), 'fraction': round(ms / total, 4),
                 'layout_ms_per_step': round(layout[k], 3)}
                for k, ms in per_kind.most_common() if ms > 0],
      'top_instructions': [{'name': n, 'kind': kinds.get(n, (OUTSIDE,))[0],
                            'ms_per_step': round(ms, 3)}
                           for n, ms in collections.Counter(per_op).most_common(top)],
  }


def table(record: dict) -> str:
  lines = [f"{record['model']} {record['mode']} step, batch {record['batch_size']}, "
           f"{record['image_size']} px, conv_impl {record['conv_impl']}, compiler_options "
           f"{record['compiler_options']}; jax {record['jax_version']}, {record['cpu_model']}",
           f"{record['busy_ms_per_step']:,.1f} ms per step with a thunk in flight (wall "
           f"{record['wall_ms_per_step']:,.1f} ms under the profiler)",
           f"{'kind':<34} {'ms/step':>10} {'fraction':>9} {'of it layout':>13}"]
  for row in record['kinds']:
    lines.append(f"{row['kind']:<34} {row['ms_per_step']:>10,.1f} {100 * row['fraction']:>8.1f}%"
                 f" {row['layout_ms_per_step']:>13,.1f}")
  return '\n'.join(lines)
