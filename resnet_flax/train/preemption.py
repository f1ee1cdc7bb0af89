"""SIGTERM (a scheduler's preemption notice): the run saves a checkpoint and stops, exit code 0.

`Preemption` installs the handler for the duration of a run (main thread only) and answers
`requested(step, at_boundary)`: in one process, whether a SIGTERM arrived; in several, whether
one arrived at any process, agreed by a collective at log boundaries only, so that every process
saves the same checkpoint and stops at the same step.
"""

import signal
import threading
from typing import Optional

from resnet_flax.train import distributed


class Preempted(SystemExit):
  """SIGTERM: the run saved a checkpoint at the current step and stops; exit code 0."""

  def __init__(self, step: int):
    super().__init__(0)
    self.step = step


class Preemption:
  """Context manager: the SIGTERM handler while a run trains."""

  def __init__(self):
    self.signal: Optional[int] = None
    self._agreed = False
    self._previous = None

  def __enter__(self) -> 'Preemption':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:
    del frame
    self.signal = signum

  def requested(self, at_boundary: bool, process_count: int) -> bool:
    """Whether the run should save and stop now. With several processes every process must call
    this at the same steps; the collective runs only when `at_boundary`."""
    if process_count == 1:
      return self.signal is not None
    if at_boundary:
      self._agreed = distributed.any_process(self.signal is not None)
    return self._agreed
