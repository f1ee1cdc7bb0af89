"""What the loop carries across a checkpoint besides the `TrainState`: the one place that writes
and reads the loop's entries of the checkpoint meta.

The train-metric window left open at the checkpoint (sums since the last log event, and how many
steps they cover), the steps dropped for a non-finite loss (`nan_policy=skip_step`), the last
eval metrics and the step they evaluated, the fine-tuning report, the time the run has spent so
far (over all its segments), the planned length, and the data facts inference needs. With them
a resumed run logs, evaluates and ends as the uninterrupted one would, and its results count
the time of every segment.
"""

import dataclasses
from typing import Optional

import numpy as np

from resnet_flax.data.info import DataInfo


@dataclasses.dataclass
class LoopState:
  window: Optional[dict] = None       # train-metric sums since the last log (host floats)
  window_steps: int = 0
  eval_metrics: dict = dataclasses.field(default_factory=dict)
  eval_step: int = -1                 # the step `eval_metrics` evaluated (-1: unknown)
  init_report: Optional[dict] = None  # checkpoint.pretrained.InitReport.to_dict()
  timing: dict = dataclasses.field(default_factory=dict)   # Timing fields, summed over segments
  skipped_steps: int = 0              # updates dropped for a non-finite loss (skip_step)

  def to_meta(self, *, total_steps: int, data: Optional[DataInfo]) -> dict:
    return {'window': self.window, 'window_steps': int(self.window_steps),
            'eval_metrics': dict(self.eval_metrics), 'eval_step': int(self.eval_step),
            'init_from': self.init_report,
            'timing': dict(self.timing), 'total_steps': int(total_steps),
            'skipped_steps': int(self.skipped_steps),
            'data': data.to_meta() if data else None}

  @classmethod
  def from_meta(cls, meta: dict) -> 'LoopState':
    window, window_steps = meta.get('window'), int(meta.get('window_steps', 0))
    if window and 'finite' not in window:
      # saved before the window counted its applied steps: every step of it was applied (under
      # nan_policy=stop only finite windows are saved; under skip_step a window with a dropped
      # step summed a NaN)
      window = {**window, 'finite': window_steps}
    return cls(window={k: np.float32(v) for k, v in window.items()} if window else None,
               window_steps=window_steps,
               eval_metrics=dict(meta.get('eval_metrics') or {}),
               eval_step=int(meta.get('eval_step', -1)),
               init_report=meta.get('init_from'), timing=dict(meta.get('timing') or {}),
               skipped_steps=int(meta.get('skipped_steps', 0)))


TIMING_FIELDS = ('train_time_s', 'compile_time_s', 'images', 'throughput_time_s',
                 'data_wait_s')


def add_timing(a: dict, b: dict) -> dict:
  """The sums of two timing records (a resumed run adds its segment to the saved time)."""
  return {k: a.get(k, 0) + b.get(k, 0) for k in TIMING_FIELDS}
