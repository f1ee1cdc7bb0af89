"""The accelerator report: every section of `accelerator_sections` in one process, each under a
time cap and all within one budget (default 450 s: a report fits in 8 minutes of a GPU), a
section's failure recorded in its place rather than ending the report; the result as one
Markdown table (`accelerator_report.md`) and one JSON file (`accelerator_report.json`),
with whether the input pipeline keeps up with the ResNet-50 train step
(`accelerator_sections.input_keeps_up`).

`report(settings, out_dir, budget_s=, data_dir=)`; the command is `resnet-flax
accelerator-report [--quick]`. A section's cap is its entry in `settings.caps_s`, cut to what
is left of the budget; one whose turn comes with less than `MIN_SECTION_S` left is skipped. A
cap is enforced with SIGALRM, which interrupts Python code, not a compilation in progress: a
section can overrun its cap by the compilation it was in (the batch search therefore does not
start a try it expects to end after its deadline).
"""

import contextlib
import datetime
import json
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional, Sequence

from resnet_flax.errors import first_line
from resnet_flax.tools import accelerator_sections as sections

MIN_SECTION_S = 5.0
# The sections' budget: 8 minutes less the start-up and a compilation a cap cannot interrupt.
DEFAULT_BUDGET_S = 450.0
QUICK_BUDGET_S = 120.0
MARKDOWN_FILE = 'accelerator_report.md'
JSON_FILE = 'accelerator_report.json'


class SectionTimeout(BaseException):
  """A section ran past its cap (a BaseException: library code that catches Exception does
  not swallow it)."""


@contextlib.contextmanager
def time_cap(seconds: float):
  """Raises SectionTimeout in the block after `seconds` (main thread only; elsewhere no cap)."""
  if threading.current_thread() is not threading.main_thread() or not hasattr(signal,
                                                                              'setitimer'):
    yield
    return

  def expire(signum, frame):
    raise SectionTimeout(f'time cap of {seconds:.0f} s reached')

  previous = signal.signal(signal.SIGALRM, expire)
  signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def run_sections(settings: sections.Settings, *, budget_s: float, data_dir: Optional[str],
                 chosen: Sequence[tuple[str, Callable[..., dict]]] = sections.SECTIONS) -> dict:
  """{section name: its record, with 'status' ('ok', 'failed', 'skipped') and 'seconds'} of
  the `chosen` sections (name, function), in order; a name without a cap in
  `settings.caps_s` has the rest of the budget."""
  caps = dict(settings.caps_s)
  end = time.monotonic() + budget_s
  out = {}
  for name, section in chosen:
    cap = min(caps.get(name, budget_s), end - time.monotonic())
    if cap < MIN_SECTION_S:
      out[name] = {'status': 'skipped', 'seconds': 0.0,
                   'reason': f'{max(cap, 0):.0f} s left of the budget of {budget_s:.0f} s'}
      continue
    start = time.monotonic()
    try:
      with time_cap(cap):
        record = {'status': 'ok', **sections.jsonable(
            section(settings, sections.Context(data_dir, start + cap)))}
    except SectionTimeout as e:
      record = {'status': 'failed', 'error': str(e)}
    except Exception as e:  # noqa: BLE001 - one section's failure must not end the report
      record = {'status': 'failed', 'error': first_line(e)}
    record['seconds'] = round(time.monotonic() - start, 1)
    out[name] = record
    print(f'accelerator report: {name}: {record["status"]} ({record["seconds"]} s)',
          file=sys.stderr, flush=True)
  return out


def _num(value, digits: int = 4) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, float) and abs(value) < 1e3:
    return f'{value:.{digits}g}'
  return f'{value:,.0f}'


def _throughput_rows(r: dict, name: str) -> list[tuple[str, str]]:
  what = (f"{r['model']}, {r['image_size']} px, batch {r['batch_size']}, {r['dtype']}, "
          f"conv_impl {r['conv_impl']}")
  rows = [(f'train images/s ({what})', _num(r['train_images_per_sec'])),
          ('train step, median (p10 - p90)', f"{_num(r['train_step_ms_median'])} ms "
           f"({_num(r['train_step_ms_p10'])} - {_num(r['train_step_ms_p90'])})"),
          ('train compile (first call)', f"{_num(r['compile_s'])} s")]
  if name == 'resnet50_train':
    rows += [('MFU (train: 3 x 2 x MACs per image)',
              f"{100 * r['mfu']:.1f}% of {_num(r['peak_tflops_per_device'])} TFLOP/s"
              if r['mfu'] is not None else f"omitted: {r['mfu_omitted']}"),
             ('peak memory (process, so far)', f"{r['peak_memory_bytes'] / 2**30:.2f} GiB"
              if r['peak_memory_bytes'] is not None else f"n/a: {r['peak_memory_omitted']}"),
             (f"eval images/s (batch {r['batch_size']})", _num(r['infer_images_per_sec'])),
             ('eval compile (first call)', f"{_num(r['infer_compile_s'])} s")]
  else:
    rows += [('on-device augmentation', r['on_device_augmentation']),
             (f"projected {sections.PAPER_CIFAR_ITERATIONS:,} iterations (the paper's)",
              f"{r['projected_64k_iterations_s'] / 60:.1f} min")]
  return rows


def _rows(name: str, r: dict) -> list[tuple[str, str]]:
  if r['status'] == 'skipped':
    return [('skipped', r['reason'])]
  if r['status'] == 'failed':
    return [('failed', r['error'])]
  if name == 'environment':
    host = r['host']
    return [('device', f"{r['device_kind']} ({r['backend']}), {r['device_count']} device(s)"),
            ('jax / jaxlib', f"{r['jax_version']} / {r['jaxlib_version']}"),
            ('XLA_FLAGS (at the start)', r['xla_flags'] or '(unset)'),
            ('host', f"{host['cpu_model']}, {host['cores']} cores")]
  if name == 'input_pipeline':
    size = f"{r['image_shape'][0]} px"
    if 'decode_images_per_sec' in r:
      return [(f"JPEG decode + resize to {size}, images/s ({r['cores']} host cores, "
               f"{r['decoded_images']:,} images, once per run)",
               _num(r['decode_images_per_sec'])),
              (f"host batches from memory, images/s (batch {r['batch_size']}; crop and flip "
               f"on the device)", _num(r['images_per_sec']))]
    workers = (f", {r['worker_count']} workers, {r['image_library']}" if 'worker_count' in r
               else '')
    return [(f"images/s ({r['backend']} back end, preset {r['preprocess']}, {size}, batch "
             f"{r['batch_size']}, {r['cores']} host cores{workers})", _num(r['images_per_sec']))]
  if name == 'resnet50_max_batch':
    tries = '; '.join(f"{t['batch']}: " + (f"{_num(t['images_per_sec'])} img/s" if t['fits']
                                            else 'does not fit') for t in r['tries'])
    return [('largest power-of-two batch that fits', f"{r['largest_fitting_batch']} "
             f"({r['stopped']})"), ('tries (train images/s)', tries or 'none')]
  return _throughput_rows(r, name)


def markdown(record: dict) -> str:
  lines = [f"# Accelerator report ({record['mode']})", '',
           f"`{record['command']}`, {record['started_utc']}, {record['elapsed_s']:.0f} s", '',
           '| section | measurement | value (status, seconds) |', '|---|---|---|']
  for name, r in record['sections'].items():
    for i, (what, value) in enumerate(_rows(name, r)):
      head = f"{name} ({r['status']}, {r['seconds']:.0f} s)" if i == 0 else ''
      lines.append(f"| {head} | {what} | {str(value).replace('|', '/')} |")
  keeps = record.get('input_keeps_up')
  if keeps is not None:
    verdict = (f"n/a: {keeps['reason']}" if keeps['keeps_up'] is None else
               f"{'yes' if keeps['keeps_up'] else 'no'}: x{keeps['ratio']:.2f} "
               f"({_num(keeps['input_images_per_sec'])} vs "
               f"{_num(keeps['train_images_per_sec'])} images/s)")
    lines.append(f"| input vs step | the input pipeline keeps up with the resnet50_train step "
                 f"| {verdict} |")
  lines.append(f"| end | XLA_FLAGS (at the end) | {record['xla_flags_at_end'] or '(unset)'} |")
  return '\n'.join(lines) + '\n'


def report(settings: sections.Settings, out_dir: str, *, budget_s: float = DEFAULT_BUDGET_S,
           data_dir: Optional[str] = None, command: str = '') -> dict:
  """Runs the sections, writes the two files into `out_dir`; returns the record."""
  os.makedirs(out_dir, exist_ok=True)
  started = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
  start = time.monotonic()
  results = run_sections(settings, budget_s=budget_s, data_dir=data_dir)
  record = {'mode': settings.mode, 'command': command, 'started_utc': started,
            'budget_s': budget_s, 'elapsed_s': round(time.monotonic() - start, 1),
            'data_dir': data_dir, 'xla_flags_at_end': os.environ.get('XLA_FLAGS', ''),
            'sections': results, 'input_keeps_up': sections.input_keeps_up(results)}
  with open(os.path.join(out_dir, JSON_FILE), 'w') as f:
    json.dump(record, f, indent=2)
    f.write('\n')
  with open(os.path.join(out_dir, MARKDOWN_FILE), 'w') as f:
    f.write(markdown(record))
  return record
