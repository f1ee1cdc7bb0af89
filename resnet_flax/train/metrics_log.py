"""Where a run's numbers go: `metrics.jsonl`, TensorBoard event files, the terminal.

Only the main process (process 0) writes. `metrics.jsonl` has one JSON object per log or eval
event, always with `step` and `epoch`. TensorBoard files are written when a writer can be
imported (tensorboardX, or TensorFlow's through flax); nothing fails when neither is there.
On a terminal a one-line progress bar shows loss, lr and images/s; otherwise each log event
prints one plain line, which suits cluster log files.
"""

import json
import math
import os
import shutil
import sys
import time
from typing import Optional

from resnet_flax import rundir
from resnet_flax.errors import WorkdirError, first_line


def _tensorboard_writer(logdir: str, first_step: int = 0):
  """A writer for `logdir`. A run from step 0 starts the folder afresh (a restart's old events
  would mix with its own); a resumed one marks the events after `first_step` as superseded
  (tensorboardX's `purge_step`: TensorBoard drops them), as metrics.jsonl is cut there."""
  if first_step == 0:
    shutil.rmtree(logdir, ignore_errors=True)
  try:
    from tensorboardX import SummaryWriter  # pytype: disable=import-error
    return SummaryWriter(logdir, purge_step=first_step + 1 if first_step else None)
  except ImportError:
    pass
  try:
    from flax.metrics import tensorboard  # imports TensorFlow
    return tensorboard.SummaryWriter(logdir)
  except Exception:  # TensorFlow absent or broken: TensorBoard is optional
    return None


def _fmt(value) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


class MetricsLog:
  """Writes events of a run. `enabled=False` (non-main processes) makes every call a no-op."""

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
               progress_bar: bool = True, total_steps: int = 0, first_step: int = 0,
               stream=None):
    self.enabled = enabled
    self.total_steps = total_steps
    self.stream = stream or sys.stdout
    self.tty = progress_bar and hasattr(self.stream, 'isatty') and self.stream.isatty()
    self._bar_open = False
    self._jsonl = None
    self._tb = None
    self._path = rundir.path(workdir, rundir.METRICS_FILE)
    if enabled:
      try:
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(self._path, 'a')
      except OSError as e:
        raise self._write_error(e) from None
      if tensorboard:
        self._tb = _tensorboard_writer(os.path.join(workdir, rundir.TENSORBOARD), first_step)

  def write(self, step: int, epoch: float, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'epoch': round(float(epoch), 4)}
    record.update({k: (float(v) if v is not None and math.isfinite(float(v)) else None)
                   for k, v in metrics.items()})
    try:
      self._jsonl.write(json.dumps(record) + '\n')
      self._jsonl.flush()
    except OSError as e:
      raise self._write_error(e) from None
    if self._tb is not None:
      for k, v in record.items():
        if k in ('step', 'epoch') or v is None:
          continue
        if hasattr(self._tb, 'scalar'):   # flax's writer
          self._tb.scalar(k, v, step)
        else:                             # tensorboardX
          self._tb.add_scalar(k, v, step)
      if hasattr(self._tb, 'flush'):
        self._tb.flush()

  def _write_error(self, error: OSError) -> WorkdirError:
    return WorkdirError(f'cannot write {self._path} ({first_line(error)}): free space or fix the '
                        f'permissions of the folder; the checkpoints saved so far are kept and '
                        f'the same command resumes from the latest')

  def progress(self, step: int, metrics: dict) -> None:
    """The progress bar on a terminal, one plain line per call otherwise."""
    if not self.enabled:
      return
    parts = ' '.join(f'{k} {_fmt(v)}' for k, v in metrics.items() if v is not None)
    if self.tty:
      frac = step / self.total_steps if self.total_steps else 0.0
      filled = int(20 * frac)
      bar = '#' * filled + '.' * (20 - filled)
      self.stream.write(f'\r[{bar}] {step}/{self.total_steps} {parts}\x1b[K')
      self._bar_open = True
    else:
      self.stream.write(f'step {step}/{self.total_steps} {parts}\n')
    self.stream.flush()

  def info(self, message: str) -> None:
    if not self.enabled:
      return
    if self._bar_open:
      self.stream.write('\n')
      self._bar_open = False
    self.stream.write(message + '\n')
    self.stream.flush()

  def close(self) -> None:
    if self._bar_open:
      self.stream.write('\n')
      self._bar_open = False
    if self._jsonl is not None:
      try:
        self._jsonl.close()
      except OSError:
        pass   # every record was flushed when written: only a failed write's line is left,
               # and that failure was reported (a second error here would hide it)
    if self._tb is not None and hasattr(self._tb, 'close'):
      self._tb.close()


class Throughput:
  """Images per second over windows of steps, excluding the first (compiling) step."""

  def __init__(self):
    self.start: Optional[float] = None
    self.images = 0
    self.total_images = 0
    self.total_time = 0.0

  def begin(self) -> None:
    self.start = time.perf_counter()
    self.images = 0

  def add(self, images: int) -> None:
    self.images += images

  def end(self) -> float:
    """Closes the window (call after the window's results are on the host); images/s."""
    elapsed = time.perf_counter() - self.start
    self.total_images += self.images
    self.total_time += elapsed
    return self.images / elapsed if elapsed > 0 else float('nan')

  @property
  def mean(self) -> float:
    return self.total_images / self.total_time if self.total_time > 0 else float('nan')
