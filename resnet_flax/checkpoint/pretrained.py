"""Reading a saved checkpoint outside its run: `load_checkpoint` (evaluation, prediction) and
`load_pretrained` (`config.init_from`: the params and batch_stats whose names and shapes match,
with a report of what was loaded, re-initialised, new or dropped; a source saved with scanned
stages loads into a model without them and back, `models.scan`)."""

import dataclasses
from typing import Any

import numpy as np

from resnet_flax import rundir, tree
from resnet_flax.checkpoint.store import Checkpoints
from resnet_flax.errors import CheckpointError, first_line
from resnet_flax.models import scan


def load_checkpoint(path: str, step: int = -1, template=None, log=print):
  """(step, host state, meta, config dict) of a saved checkpoint; read-only. The latest
  readable one unless `step` or the path names one: an unreadable latest checkpoint is skipped
  with a warning (`log`), as a resumed run skips it."""
  directory, step_or_none = rundir.resolve_checkpoint_path(path, step)
  store = Checkpoints(directory, read_only=True, log=log)
  try:
    steps = store.steps()
    if not steps:
      raise CheckpointError(f'{directory}: holds no complete checkpoint')
    if step_or_none is None:
      restored = store.restore_latest(template)
      if restored is None:
        raise CheckpointError(f'{directory}: none of the checkpoints (steps '
                              f'{", ".join(map(str, steps))}) can be read')
      return restored
    if step_or_none not in steps:
      raise CheckpointError(f'{directory}: no checkpoint at step {step_or_none}; saved steps: '
                            f'{", ".join(map(str, steps))}')
    try:
      state, meta, config = store.restore(step_or_none, template)
    except Exception as e:  # noqa: BLE001 - orbax's errors for unreadable folders vary
      raise CheckpointError(f'{directory}: checkpoint {step_or_none} cannot be read '
                            f'({first_line(e)}); pass another --step, or none for the latest '
                            f'readable one') from None
    return step_or_none, state, meta, config
  finally:
    store.manager.close()


@dataclasses.dataclass
class InitReport:
  """What `init_from` did with each array of params and batch_stats."""
  source: str
  step: int
  loaded: list = dataclasses.field(default_factory=list)          # names
  reinitialised: list = dataclasses.field(default_factory=list)   # 'name: saved -> new shape'
  new: list = dataclasses.field(default_factory=list)             # names absent in the source
  dropped: list = dataclasses.field(default_factory=list)         # names absent in the model
  loaded_values: int = 0
  source_model: dict = dataclasses.field(default_factory=dict)    # the source's model fields

  def lines(self) -> list[str]:
    out = [f'init_from {self.source} (step {self.step}): loaded {len(self.loaded)} arrays '
           f'({self.loaded_values:,} values) of params and batch_stats']
    if self.reinitialised:
      out.append('  re-initialised (shape mismatch): ' + ', '.join(self.reinitialised))
    if self.new:
      out.append('  newly initialised (not in the checkpoint): ' + ', '.join(self.new))
    if self.dropped:
      out.append('  dropped (not in this model): ' + ', '.join(self.dropped))
    return out

  def to_dict(self) -> dict:
    return {'source': self.source, 'step': self.step, 'loaded': len(self.loaded),
            'reinitialised': self.reinitialised, 'new': self.new, 'dropped': self.dropped}


def merge_pretrained(target: dict, source: dict, report: InitReport, collection: str) -> dict:
  """`target` (nested dict of arrays) with every array of `source` whose name and shape match."""
  flat_target, flat_source = tree.flatten(target), tree.flatten(source or {})
  merged = {}
  for name, value in flat_target.items():
    full = f'{collection}/{name}'
    if name not in flat_source:
      report.new.append(full)
      merged[name] = value
    elif np.shape(flat_source[name]) != np.shape(value):
      report.reinitialised.append(
          f'{full} {tuple(np.shape(flat_source[name]))} -> {tuple(np.shape(value))}')
      merged[name] = value
    else:
      report.loaded.append(full)
      report.loaded_values += int(np.size(value))
      merged[name] = np.asarray(flat_source[name], dtype=np.asarray(value).dtype)
  report.dropped.extend(f'{collection}/{n}' for n in flat_source if n not in flat_target)

  def rebuild(tree, prefix=''):
    return {k: rebuild(v, f'{prefix}{k}/') if isinstance(v, dict) else merged[f'{prefix}{k}']
            for k, v in tree.items()}
  return rebuild(target)


def load_pretrained(path: str, step: int, params: Any, batch_stats: Any):
  """(params, batch_stats, InitReport): `params` / `batch_stats` (host nested dicts) with the
  arrays of a saved checkpoint whose names and shapes match."""
  chosen, saved, _, saved_config = load_checkpoint(path, step)
  report = InitReport(source=path, step=chosen,
                      source_model=dict((saved_config or {}).get('model') or {}))
  params, batch_stats = tree.to_dict(params), tree.to_dict(batch_stats)
  # a source with scanned stages and a target without them (or the other way round): the
  # source's arrays are put into the target's layout first, so names match unit by unit
  source_params = scan.restack(saved.get('params') or {}, params)
  source_stats = scan.restack(saved.get('batch_stats') or {}, batch_stats)
  new_params = merge_pretrained(params, source_params, report, 'params')
  new_stats = merge_pretrained(batch_stats, source_stats, report, 'batch_stats')
  if not report.loaded:
    raise CheckpointError(f'init_from {path}: no array of the checkpoint matches this model '
                          f'by name and shape; is it a checkpoint of a model of this family?')
  return new_params, new_stats, report


