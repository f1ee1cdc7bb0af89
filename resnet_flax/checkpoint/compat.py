"""Whether a saved run may be resumed by a config, and a saved config read back as a config.

A checkpoint stores the config it was trained with (JSON). `incompatible_fields` lists the
fields that must match to resume (`RESUME_FIELDS`: the model, the data, the batch size, the
seed, the optimizer, the freezing, but not `LAYOUT_FIELDS`; a field the saved config lacks
counts as its default), `recipe_differences` the fields that change what a run computes (a
sweep point must keep them), `changed_fields` every field that differs (for the resume line),
and `config_from_dict` turns a saved config back into a `ConfigDict` of today's schema.
"""

import json

import ml_collections

from resnet_flax import config as config_lib
from resnet_flax import rundir

# Fields that must match for a run to resume from a checkpoint (prefix match on 'model.').
# Others (the length of the run, the lr, logging, parallelism, device count) may change.
# `freeze` decides the optimizer state's structure (frozen parameters have none).
RESUME_FIELDS = ('model.', 'data.source', 'data.name', 'data.dir', 'data.train_split',
                 'data.eval_split', 'batch_size', 'seed', 'optimizer.name', 'freeze')
# model fields that change how the network is computed, not what it computes: a run may resume
# with other values (the state is converted between the scanned and unrolled layouts)
LAYOUT_FIELDS = ('model.scan_units', 'model.eval_loop', 'model.remat', 'model.conv_impl')


def config_to_dict(config) -> dict:
  return json.loads(config.to_json())


def _flat_pair(saved: dict, config) -> tuple[dict, dict]:
  """The saved config and `config` as flat dicts; a field the saved config lacks (saved before
  the field existed) counts as its default."""
  defaults = config_lib.flatten(config_to_dict(config_lib.base_config()))
  return ({**defaults, **config_lib.flatten(saved)},
          config_lib.flatten(config_to_dict(config)))


def _listed(field: str, fields) -> bool:
  """Whether `field` is one of `fields` (an entry ending in '.' names a whole section)."""
  return any(field == f or (f.endswith('.') and field.startswith(f)) for f in fields)


def incompatible_fields(saved: dict, config) -> list[str]:
  """'field (saved -> now)' for each field that must match to resume and does not."""
  a, b = _flat_pair(saved, config)
  diffs = []
  for field in sorted(set(a) | set(b)):
    if field in LAYOUT_FIELDS or not _listed(field, RESUME_FIELDS):
      continue
    if a.get(field) != b.get(field):
      diffs.append(f'{field} ({a.get(field)!r} -> {b.get(field)!r})')
  if (float(a.get('ema_decay', 0.0)) > 0) != (float(b.get('ema_decay', 0.0)) > 0):
    diffs.append(f'ema_decay ({a.get("ema_decay")!r} -> {b.get("ema_decay")!r}: EMA on/off)')
  return diffs


# fields that change how a run is carried out or kept, not what it computes
BOOKKEEPING_FIELDS = ('checkpoint_dir', 'checkpoint_every_steps', 'keep_checkpoints',
                      'best_metric', 'best_mode', 'on_existing_run', 'log_every_steps',
                      'log_grad_norms', 'log_tensorboard', 'progress_bar', 'parallelism',
                      'compiler_options', 'eval_batch_size', 'distributed.',
                      'data.threadpool_size', 'data.worker_count', 'data.worker_buffer_size')


def recipe_differences(saved: dict, config) -> list[str]:
  """'field (saved -> now)' for each field that changes what a run computes (all but
  BOOKKEEPING_FIELDS and LAYOUT_FIELDS) and differs; a field the saved config lacks counts as
  its default."""
  a, b = _flat_pair(saved, config)
  b['data.dir'] = rundir.anchored(b.get('data.dir'))   # saved so (rundir.write_config)
  return [f'{field} ({a.get(field)!r} -> {b.get(field)!r})' for field in sorted(b)
          if a.get(field) != b[field] and not _listed(field, BOOKKEEPING_FIELDS + LAYOUT_FIELDS)]


def changed_fields(saved: dict, config) -> list[str]:
  """Every field that differs between a saved config and `config` (for the resume line)."""
  a, b = config_lib.flatten(saved), config_lib.flatten(config_to_dict(config))
  return [f for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]


def config_from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A config (base_config() updated with a saved JSON dict; fields it lacks keep defaults,
  fields the code no longer knows are dropped)."""
  c = config_lib.base_config()

  def convert(value, ref):
    if isinstance(value, list):
      return tuple(value)
    if isinstance(ref, float) and isinstance(value, int) and not isinstance(value, bool):
      return float(value)
    return value

  def update(node, values, is_model=False):
    for key, value in values.items():
      if is_model:
        node[key] = tuple(value) if isinstance(value, list) else value
      elif key not in node:
        continue
      elif isinstance(node[key], ml_collections.ConfigDict):
        if key == 'model':
          node[key] = ml_collections.ConfigDict()
          update(node[key], value, is_model=True)
        else:
          update(node[key], value)
      else:
        node[key] = convert(value, node[key])

  update(c, saved)
  return c


