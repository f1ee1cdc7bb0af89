"""Where a run starts: from the latest readable checkpoint of its workdir (exactly), from scratch,
or from another run's weights (`config.init_from`, fine-tuning). `config.on_existing_run` says
what to do with checkpoints that are already there. Refused: a checkpoint past the end of this
run (its length was lowered), processes that restored different checkpoints, a restart that
would delete the checkpoints `init_from` names, and a workdir that holds a finished run's
results but no checkpoint (its checkpoint folder was emptied or moved): starting over would
replace them.
"""

import os

import jax
import numpy as np

from resnet_flax import rundir, transfer
from resnet_flax.checkpoint import compat, pretrained, store
from resnet_flax.errors import CheckpointError, ConfigError, WorkdirError
from resnet_flax.models import create_model, scan
from resnet_flax.train import distributed
from resnet_flax.train.build import Run
from resnet_flax.train.loop_state import LoopState
from resnet_flax.train.state import create_train_state


def init_from_checkpoint(run: Run, path: str, step: int = -1):
  """Fine-tuning: `run.state` with the params and batch_stats of a saved run whose names and
  shapes match (the rest keeps its fresh initialisation); a fresh optimizer state and EMA.
  Returns (state on the devices, pretrained.InitReport)."""
  host = jax.device_get(run.par.host_state(run.state))
  params, stats, report = pretrained.load_pretrained(path, step, host.params, host.batch_stats)
  host = host.replace(
      params=params, batch_stats=stats, opt_state=jax.device_get(run.tx.init(params)),
      ema_params=jax.tree.map(np.copy, params) if host.ema_params is not None else None,
      ema_batch_stats=jax.tree.map(np.copy, stats) if host.ema_params is not None else None)
  return run.par.put_state(host), report


# model fields that change what loaded arrays compute (shapes do not show them)
ARCHITECTURE_FIELDS = ('family', 'version', 'residual', 'block', 'shortcut', 'flavour', 'stem',
                       'stem_pool', 'shortcut_downsample', 'pooling')


def check_init_from(config, run: Run, report) -> list[str]:
  """ConfigError when `freeze` keeps arrays that init_from did not load (they would stay
  random); warnings for model fields that differ from the source's (the arrays fit, but meet
  another computation)."""
  if run.freeze is not None:
    frozen = {f'params/{p}' for p in transfer.frozen_paths(run.freeze.mask)}
    fresh = [e.split(' ')[0] for e in report.new + report.reinitialised
             if e.split(' ')[0] in frozen]
    if fresh:
      raise ConfigError(
          f'config.freeze={config.freeze!r} freezes {len(fresh)} arrays that init_from '
          f'{config.init_from} does not provide ({", ".join(fresh[:3])}'
          f'{" ..." if len(fresh) > 3 else ""}): they would keep their random initialisation; '
          f'freeze only what the checkpoint holds, or start from a checkpoint of this model')
  source = report.source_model
  changed = [f'model.{f}={source[f]!r} there, {config.model[f]!r} here'
             for f in ARCHITECTURE_FIELDS if f in source and source[f] != config.model[f]]
  return ([f'warning: the init_from model differs from this one ({"; ".join(changed)}): its '
           f'arrays fit by name and shape, but compute something else here'] if changed else [])


def _template_for(saved_config: dict, config, run: Run, template):
  """The host state to restore a checkpoint into: `template`, or, for a checkpoint saved with
  another `model.scan_units` (a run saved before the field existed was unrolled), the same
  state in that checkpoint's layout."""
  saved = saved_config.get('model', {}).get('scan_units', 'off')
  if saved == config.model.scan_units:
    return template
  if config.freeze:
    raise ConfigError(f'the checkpoint was saved with model.scan_units={saved!r}; with '
                      f'config.freeze the layout cannot change on resume: pass '
                      f'--config.model.scan_units={saved}')
  model = create_model({**config.model, 'dtype': config.dtype, 'scan_units': saved})
  shapes = jax.eval_shape(lambda: create_train_state(
      model, run.tx, seed=config.seed, image_shape=run.image_shape,
      use_ema=template.ema_params is not None))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _check_init_from_survives(config, directory: str) -> None:
  """ConfigError when `config.init_from` is the checkpoint folder a restart deletes."""
  source = os.path.expanduser(config.init_from or '')
  if not source or not os.path.isdir(source):
    return
  if os.path.realpath(rundir.resolve_checkpoint_path(source)[0]) == os.path.realpath(directory):
    raise ConfigError(
        f'config.init_from={config.init_from!r} is the checkpoint folder of this run, which '
        f'on_existing_run=restart deletes before loading: copy that run elsewhere and point '
        f'init_from there, or train in another --workdir')


def resume_or_start(config, workdir: str, run: Run, ckpts):
  """(device state, start step, LoopState, messages for the log)."""
  messages = []
  existing = ckpts.steps()
  if existing and config.on_existing_run == 'error':
    raise ConfigError(
        f'{ckpts.directory} already holds checkpoints (steps {", ".join(map(str, existing))}) '
        f'and config.on_existing_run=error; use another --workdir, or '
        f'--config.on_existing_run=resume or restart')
  if existing and config.on_existing_run == 'restart':
    _check_init_from_survives(config, ckpts.directory)
    ckpts.delete_all()
    messages.append(f'on_existing_run=restart: deleted the checkpoints in {ckpts.directory} '
                    f'(steps {", ".join(map(str, existing))}); starting from step 0')
  elif existing:
    def check(saved_config):
      diffs = compat.incompatible_fields(saved_config, config)
      if diffs:
        raise ConfigError(
            f'{workdir} holds a run with an incompatible config: {"; ".join(diffs)}; resume '
            f'with the same values, or pass --config.on_existing_run=restart to delete its '
            f'checkpoints, or use another --workdir (to fine-tune from it: '
            f'--config.init_from={workdir})')
    template = jax.device_get(run.par.host_state(run.state))
    try:
      restored = ckpts.restore_latest(lambda saved: _template_for(saved, config, run, template),
                                      check)
    except store.StateMismatch as e:
      changed = [f for f in compat.changed_fields(e.saved_config, config)
                 if f.startswith(('optimizer.', 'ema_decay', 'freeze', 'model.'))]
      raise ConfigError(
          f'{e.where}: resume with the values it was saved with{" (changed: " if changed else ""}'
          f'{", ".join(changed[:6])}{")" if changed else ""}, or pass '
          f'--config.on_existing_run=restart to delete its checkpoints, or use another '
          f'--workdir (to fine-tune from it: --config.init_from={workdir})') from None
    if not distributed.same_on_every_process(-1 if restored is None else restored[0]):
      raise CheckpointError(
          f'{ckpts.directory}: the processes of this run restored different checkpoints (one '
          f'was unreadable on some hosts only); make the folder whole and the same on every '
          f'host (a shared file system), then run the same command again')
    if restored is None:
      raise CheckpointError(
          f'{ckpts.directory}: none of the checkpoints (steps '
          f'{", ".join(map(str, existing))}) can be read; pass '
          f'--config.on_existing_run=restart to start over')
    step, host, meta, saved_config = restored
    if step > run.plan.total_steps:
      raise ConfigError(
          f'{ckpts.directory} holds a checkpoint at step {step}, past the end of this run '
          f'({run.plan.total_steps} steps): give the run at least its length '
          f'(--config.num_train_steps or --config.num_epochs), or pass '
          f'--config.on_existing_run=restart, or use another --workdir (to fine-tune from it: '
          f'--config.init_from={workdir})')
    host = scan.convert_layout(host, template)     # a checkpoint saved in the other layout
    changed = compat.changed_fields(saved_config, config)
    note = (f'; changed since: {", ".join(changed[:8])}{" ..." if len(changed) > 8 else ""}'
            if changed else '')
    messages.append(f'resuming from checkpoint {step} in {ckpts.directory} (step {step} of '
                    f'{run.plan.total_steps}){note}')
    return run.par.put_state(host), step, LoopState.from_meta(meta), messages
  finished = (not existing and config.on_existing_run != 'restart'
              and jax.process_index() == 0 and rundir.read_results(workdir) is not None)
  if distributed.any_process(finished):   # process 0 writes results.json: its view decides
    raise WorkdirError(
        f'{workdir} holds the results of a finished run ({rundir.RESULTS_FILE}) but '
        f'{ckpts.directory} holds no checkpoint of it: pass --config.on_existing_run=restart '
        f'to train it again and replace them, or use another --workdir')
  state, loop_state = run.state, LoopState()
  if config.init_from:
    state, report = init_from_checkpoint(run, config.init_from, config.init_from_step)
    messages.extend(report.lines() + check_init_from(config, run, report))
    loop_state.init_report = report.to_dict()
  elif config.freeze:
    messages.append(f'warning: freeze={config.freeze!r} without init_from: the frozen '
                    f'parameters keep their random initialisation (pass --config.init_from='
                    f'RUN_DIR to load a trained backbone)')
  return state, 0, loop_state, messages
