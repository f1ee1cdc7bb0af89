"""The training loop: config -> data, model, optimizer, state -> steps, logs, evals, results.

`train_and_evaluate(config, workdir)` wires the pieces together and owns no numerics: every
number it uses comes from the config (durations, intervals, batch sizes) or from the pieces
(schedule, steps). It returns the final results, which process 0 also writes to
`workdir/results.json` next to `config.json` and `metrics.jsonl`.

Checkpoints (`checkpointing.py`): the loop saves at `checkpoint_every_steps`, at the end and on
SIGTERM, only after the finite flags of every step up to the saved one were checked. A workdir
holding checkpoints is resumed from the latest readable one, exactly: the state, the data
position, the open train-metric window and the last eval metrics are restored, so the resumed
run logs, evaluates and ends as the uninterrupted one would.
"""

import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Any, Optional

import jax
import numpy as np

from resnet_flax import checkpointing, configuration, data, distributed, optim, parallel
from resnet_flax.data import augment
from resnet_flax.metrics_log import MetricsLog, Throughput
from resnet_flax.models import create_model
from resnet_flax.models.registry import describe as describe_model
from resnet_flax.steps import make_eval_step, make_train_step
from resnet_flax.train_state import create_train_state


class NonFiniteLossError(RuntimeError):
  """The loss or the gradients stopped being finite."""


class Preempted(SystemExit):
  """SIGTERM: the run saved a checkpoint at the current step and stops; exit code 0."""

  def __init__(self, step: int):
    super().__init__(0)
    self.step = step


@dataclasses.dataclass
class RunPlan:
  """The durations of a run, in steps, derived from the config and the data size."""
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  log_every: int
  checkpoint_every: int = 0


def plan_run(config, num_train_examples: int) -> RunPlan:
  steps_per_epoch = num_train_examples // config.batch_size
  if config.num_train_steps > 0:
    total = int(config.num_train_steps)
  else:
    total = max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))
  eval_every = steps_per_epoch if config.eval_every_steps == -1 else int(config.eval_every_steps)
  ckpt_every = (steps_per_epoch if config.checkpoint_every_steps == -1
                else int(config.checkpoint_every_steps))
  return RunPlan(steps_per_epoch, total, max(1, eval_every), int(config.log_every_steps),
                 max(1, ckpt_every))


def _mean_metrics(sums: dict, prefix: str) -> dict:
  count = float(sums['count'])
  out = {f'{prefix}_loss': float(sums['loss_sum']) / count,
         f'{prefix}_top1': float(sums['top1_sum']) / count}
  if 'top5_sum' in sums:
    out[f'{prefix}_top5'] = float(sums['top5_sum']) / count
  return out


def _add(acc: Optional[dict], metrics: dict) -> dict:
  # by key: a window restored from a checkpoint of a run that logged other metrics still adds up
  return metrics if acc is None else {k: acc[k] + v if k in acc else v for k, v in metrics.items()}


def _grad_norms(sums: dict, window_steps: int) -> dict:
  """RMS over the window of the global gradient norm and, with config.log_grad_norms, of each
  stage's ('grad_norm_stage1', ...)."""
  return {name[:-len('_sq')]: math.sqrt(float(value) / window_steps)
          for name, value in sums.items() if name.startswith('grad_norm') and name.endswith('_sq')}


def evaluate(state, p_eval, par, eval_ds, eval_batch_size: int) -> dict:
  """Top-1, top-5 and loss over the whole eval split (padded and masked, nothing dropped)."""
  total = None
  for host_batch in eval_ds.eval_batches(eval_batch_size, jax.process_index(),
                                         jax.process_count()):
    total = _add(total, p_eval(state, par.put_batch(host_batch)))
  sums = par.host_metrics(total)
  if int(round(float(sums['count']))) != eval_ds.num_examples:
    raise AssertionError(f'eval counted {sums["count"]} examples of {eval_ds.num_examples}')
  return _mean_metrics(sums, 'eval')


@dataclasses.dataclass
class Run:
  """Everything built from a config, before the loop starts (reused by benchmarks and tests)."""
  config: Any
  par: Any
  model: Any
  schedule: Any
  state: Any
  p_train: Any
  p_eval: Any
  train_batches: Any                  # .batch(step) -> this process's host batch
  eval_ds: Any
  plan: RunPlan
  num_params: int
  tx: Any = None
  frozen: Any = None                  # config.freeze: pytree of bools like params (True: frozen)
  frozen_norms: frozenset = frozenset()   # norm layers kept in inference mode while training
  num_frozen: int = 0                 # frozen parameter values
  data_info: Optional[dict] = None    # saved in checkpoint meta, for inference.py


def build_optimizer(config, num_train_examples: int):
  """(RunPlan, lr schedule, optax optimizer) of `config` for a training set of this size (before
  any freezing); schedule and optimizer errors become a ConfigError naming the field."""
  plan = plan_run(config, num_train_examples)
  try:
    schedule = optim.build_schedule(config.schedule, batch_size=config.batch_size,
                                    steps_per_epoch=plan.steps_per_epoch,
                                    total_steps=plan.total_steps)
    tx = optim.build_optimizer(config.optimizer, schedule)
  except ValueError as e:
    raise configuration.ConfigError(f'config.{e}' if str(e).startswith(
        ('schedule.', 'optimizer.')) else str(e)) from None
  return plan, schedule, tx


def build_run(config, *, devices=None) -> Run:
  """Validates the config, loads the data and builds model, optimizer, state and steps."""
  par = parallel.create(config.parallelism, devices)
  configuration.validate(config, device_count=par.num_devices)
  train_ds, eval_ds = data.load_datasets(config.data, config.seed)
  if config.model.include_top and config.model.num_classes != train_ds.num_classes:
    raise configuration.ConfigError(
        f'config.model.num_classes={config.model.num_classes}: the data has '
        f'{train_ds.num_classes} classes; set --config.model.num_classes={train_ds.num_classes}')
  plan, schedule, tx = build_optimizer(config, train_ds.num_examples)

  try:
    preprocess = augment.make_preprocess(config.data, stored_shape=train_ds.image_shape,
                                         augment_on_device=not train_ds.augmented_on_host)
  except ValueError as e:
    raise configuration.ConfigError(str(e)) from None
  model = create_model({**config.model, 'dtype': config.dtype}, bn_axis_name=par.axis_name)
  image_shape = augment.output_shape(config.data, train_ds.image_shape)
  frozen, frozen_norms, num_frozen = None, frozenset(), 0
  if config.freeze:
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jax.numpy.zeros((1,) + tuple(image_shape)), train=False))
    try:
      frozen = optim.frozen_mask(shapes['params'], config.freeze, model.head_names)
    except ValueError as e:
      raise configuration.ConfigError(f'config.{e}') from None
    frozen_norms = optim.frozen_norm_paths(frozen, shapes.get('batch_stats', {}))
    num_frozen = sum(int(np.prod(x.shape)) for x, f in zip(jax.tree.leaves(shapes['params']),
                                                           jax.tree.leaves(frozen)) if f)
    tx = optim.freeze_optimizer(tx, frozen)
  state = create_train_state(model, tx, seed=config.seed, image_shape=image_shape,
                             use_ema=config.ema_decay > 0)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  state = par.put_state(state)

  l2_mask = None
  if config.optimizer.weight_decay_mode == 'l2' and config.optimizer.weight_decay:
    l2_mask = optim.weight_decay_mask(jax.device_get(par.host_state(state).params),
                                      config.optimizer.weight_decay_exclude)
    if frozen is not None:   # frozen parameters are not decayed either
      l2_mask = jax.tree.map(lambda m, f: bool(m) and not f, l2_mask, frozen)
  num_classes = train_ds.num_classes
  train_step = make_train_step(
      model, tx, preprocess, num_classes=num_classes, label_smoothing=config.label_smoothing,
      weight_decay=config.optimizer.weight_decay, l2_mask=l2_mask, ema_decay=config.ema_decay,
      nan_policy=config.nan_policy, axis_name=par.axis_name,
      debug_nan_at_step=int(config.debug_nan_at_step), frozen=frozen, frozen_norms=frozen_norms,
      log_grad_norms=bool(config.log_grad_norms))
  eval_step = make_eval_step(model, preprocess, num_classes=num_classes,
                             axis_name=par.axis_name)
  train_batches = train_ds.train_batches(config.batch_size, config.seed, jax.process_index(),
                                         jax.process_count())
  # what inference needs of the data: the images the device preprocessing receives, classes
  data_info = {'image_shape': [int(d) for d in train_ds.image_shape],
               'host_preprocess': bool(train_ds.augmented_on_host),
               'num_classes': int(num_classes),
               'class_names': list(train_ds.class_names) if train_ds.class_names else None}
  return Run(config, par, model, schedule, state, par.compile_train(train_step),
             par.compile_eval(eval_step), train_batches, eval_ds, plan, num_params, tx, frozen,
             frozen_norms, num_frozen, data_info=data_info)


def init_from_checkpoint(run: Run, path: str, step: int = -1):
  """Fine-tuning: `run.state` with the params and batch_stats of a saved run whose names and
  shapes match (the rest keeps its fresh initialisation); a fresh optimizer state and EMA.
  Returns (state on the devices, checkpointing.InitReport)."""
  host = jax.device_get(run.par.host_state(run.state))
  params, stats, report = checkpointing.load_pretrained(path, step, host.params,
                                                        host.batch_stats)
  host = host.replace(
      params=params, batch_stats=stats, opt_state=jax.device_get(run.tx.init(params)),
      ema_params=jax.tree.map(np.copy, params) if host.ema_params is not None else None,
      ema_batch_stats=jax.tree.map(np.copy, stats) if host.ema_params is not None else None)
  return run.par.put_state(host), report


def _host_copy(par, state):
  """A private host copy of the state (the next step donates the device buffers)."""
  return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(par.host_state(state)))


def _truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops the events after `last_step` from metrics.jsonl (a resumed run writes them again)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.isfile(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if int(json.loads(line)['step']) <= last_step:
          kept.append(line if line.endswith('\n') else line + '\n')
      except (ValueError, KeyError, TypeError):
        continue   # a line cut short when the process died
  with open(path, 'w') as f:
    f.writelines(kept)


def _resume_or_start(config, workdir: str, run: Run, ckpts, say):
  """(device state, start step, meta of the restored checkpoint or {}, messages)."""
  messages = []
  existing = ckpts.steps()
  if existing and config.on_existing_run == 'error':
    raise configuration.ConfigError(
        f'{ckpts.directory} already holds checkpoints (steps {", ".join(map(str, existing))}) '
        f'and config.on_existing_run=error; use another --workdir, or '
        f'--config.on_existing_run=resume or restart')
  if existing and config.on_existing_run == 'restart':
    ckpts.delete_all()
    messages.append(f'on_existing_run=restart: deleted the checkpoints in {ckpts.directory} '
                    f'(steps {", ".join(map(str, existing))}); starting from step 0')
  elif existing:
    def check(saved_config):
      diffs = checkpointing.incompatible_fields(saved_config, config)
      if diffs:
        raise configuration.ConfigError(
            f'{workdir} holds a run with an incompatible config: {"; ".join(diffs)}; resume '
            f'with the same values, or pass --config.on_existing_run=restart to delete its '
            f'checkpoints, or use another --workdir (to fine-tune from it: '
            f'--config.init_from={workdir})')
    template = jax.device_get(run.par.host_state(run.state))
    restored = ckpts.restore_latest(template, check)
    if restored is None:
      raise checkpointing.CheckpointError(
          f'{ckpts.directory}: none of the checkpoints (steps '
          f'{", ".join(map(str, existing))}) can be read; pass '
          f'--config.on_existing_run=restart to start over')
    step, host, meta, saved_config = restored
    changed = checkpointing.changed_fields(saved_config, config)
    note = (f'; changed since: {", ".join(changed[:8])}{" ..." if len(changed) > 8 else ""}'
            if changed else '')
    messages.append(f'resuming from checkpoint {step} in {ckpts.directory} (step {step} of '
                    f'{run.plan.total_steps}){note}')
    return run.par.put_state(host), step, meta, messages
  state, meta = run.state, {}
  if config.init_from:
    state, report = init_from_checkpoint(run, config.init_from, config.init_from_step)
    messages.extend(report.lines())
    meta = {'init_from': report.to_dict()}
  elif config.freeze:
    messages.append(f'warning: freeze={config.freeze!r} without init_from: the frozen '
                    f'parameters keep their random initialisation (pass --config.init_from='
                    f'RUN_DIR to load a trained backbone)')
  return state, 0, meta, messages


def train_and_evaluate(config, workdir: str, *, devices=None) -> dict:
  """Trains as the config says, evaluating on the whole eval split; returns the results.

  Resumes from the checkpoints in the workdir if there are any (see `config.on_existing_run`).
  Raises `Preempted` (a SystemExit with code 0) after saving a checkpoint on SIGTERM.
  """
  is_main = jax.process_index() == 0
  run = build_run(config, devices=devices)
  plan, par = run.plan, run.par
  eval_batch_size = config.eval_batch_size or config.batch_size
  say = print if is_main else (lambda *args, **kwargs: None)
  ckpts = checkpointing.open_run_checkpoints(config, workdir, log=say)
  log = None
  failed = True
  previous_handler = None
  stop = {'signal': None}
  try:
    state, first_step, meta, messages = _resume_or_start(config, workdir, run, ckpts, say)
    if is_main:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json(indent=2))
      _truncate_metrics(workdir, first_step)
      if os.path.isfile(os.path.join(workdir, 'results.json')):
        os.remove(os.path.join(workdir, 'results.json'))
    log = MetricsLog(workdir, enabled=is_main, tensorboard=config.log_tensorboard,
                     progress_bar=config.progress_bar, total_steps=plan.total_steps)
    log.info(f'{describe_model(config.model) or "model"}: {run.num_params:,} parameters; '
             f'{plan.total_steps} steps ({plan.steps_per_epoch} per epoch) of batch '
             f'{config.batch_size} on {par.num_devices} device(s) [{par.mode}]')
    if run.frozen is not None:
      log.info(f'freeze={config.freeze!r}: {run.num_frozen:,} of {run.num_params:,} '
               f'parameters frozen; {len(run.frozen_norms)} BatchNorm layers keep their '
               f'running statistics')
    for message in messages:
      log.info(message)

    if threading.current_thread() is threading.main_thread():
      def on_sigterm(signum, frame):
        stop['signal'] = signum
      previous_handler = signal.signal(signal.SIGTERM, on_sigterm)

    init_report = meta.get('init_from')
    eval_metrics: dict = dict(meta.get('eval_metrics') or {})
    # the train-metric window left open by the checkpoint (sums since the last log event)
    window = ({k: np.float32(v) for k, v in meta['window'].items()}
              if meta.get('window') else None)
    window_steps = int(meta.get('window_steps', 0))
    pending_flags: list = []     # finite flags of steps not checked yet
    throughput = Throughput()
    train_start = time.perf_counter()
    compile_s = None
    step = first_step
    data_wait = total_wait = 0.0   # host time spent producing batches (the step waits on it)

    def check_finite():
      """Raises NonFiniteLossError (nan_policy=stop) if a pending step was not finite."""
      if not pending_flags:
        return
      # one transfer for the whole window; under pmap each flag holds one copy per device
      flags = [float(np.min(f)) for f in jax.device_get(pending_flags)]
      if min(flags) < 1.0 and config.nan_policy == 'stop':
        bad = step - len(flags) + flags.index(min(flags)) + 1
        raise NonFiniteLossError(
            f'non-finite loss or gradients at step {bad}; stopping (nan_policy=stop). Lower '
            'schedule.base_lr, add warmup or optimizer.grad_clip_norm, or check the data.'
            + (f' Checkpoints up to step {ckpts.latest_step()} are kept in {ckpts.directory}.'
               if ckpts.latest_step() is not None else ''))
      pending_flags.clear()

    def save(state, at_eval: bool):
      check_finite()   # never save a state whose steps were not all checked
      window_host = ({k: float(v) for k, v in par.host_metrics(window).items()}
                     if window is not None else None)
      ckpts.save(step, _host_copy(par, state), config=config,
                 metrics=eval_metrics if at_eval else None,
                 meta={'window': window_host, 'window_steps': window_steps,
                       'eval_metrics': eval_metrics, 'init_from': init_report,
                       'total_steps': plan.total_steps, 'data': run.data_info})

    while step < plan.total_steps:
      wait_start = time.perf_counter()
      device_batch = par.put_batch(run.train_batches.batch(step))
      data_wait += time.perf_counter() - wait_start
      state, metrics = run.p_train(state, device_batch)
      window = _add(window, {k: v for k, v in metrics.items() if k != 'finite'})
      pending_flags.append(metrics['finite'])
      window_steps += 1
      step += 1
      if step == first_step + 1:
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - train_start
        throughput.begin()
        data_wait = 0.0
      else:
        throughput.add(config.batch_size)

      at_eval = step % plan.eval_every == 0 or step == plan.total_steps
      if step % plan.log_every == 0 or at_eval:
        check_finite()
        sums = par.host_metrics(window)
        window_s = time.perf_counter() - throughput.start if throughput.start else None
        ips = throughput.end() if throughput.start is not None and throughput.images else None
        wait_fraction = data_wait / window_s if window_s and throughput.images else None
        total_wait += data_wait if throughput.images else 0.0
        train = _mean_metrics(sums, 'train')
        record = {**train, 'lr': float(run.schedule(step - 1)), 'images_per_sec': ips,
                  'data_wait_fraction': wait_fraction, **_grad_norms(sums, window_steps)}
        log.write(step, step / plan.steps_per_epoch, record)
        log.progress(step, {'loss': train['train_loss'], 'lr': record['lr'],
                            'img/s': round(ips) if ips else None})
        window, window_steps = None, 0
        if at_eval:
          eval_metrics = evaluate(state, run.p_eval, par, run.eval_ds, eval_batch_size)
          log.write(step, step / plan.steps_per_epoch, eval_metrics)
          log.info(f'step {step}: ' + ' '.join(f'{k} {v:.4f}' for k, v in eval_metrics.items()))
        throughput.begin()
        data_wait = 0.0
      if jax.process_count() == 1:
        preempted = stop['signal'] is not None and step < plan.total_steps
      else:
        # a SIGTERM may reach only some processes: they agree (a collective) at log
        # boundaries, so that all of them save the same checkpoint and stop together
        if step % plan.log_every == 0 or at_eval:
          stop['agreed'] = distributed.any_process(stop['signal'] is not None)
        preempted = bool(stop.get('agreed')) and step < plan.total_steps
      if step % plan.checkpoint_every == 0 or step == plan.total_steps or preempted:
        save(state, at_eval)
      if preempted:
        ckpts.wait()
        log.info(f'SIGTERM: saved checkpoint {step} in {ckpts.directory}; stopping at step '
                 f'{step} of {plan.total_steps}. Run the same command to resume.')
        failed = False
        raise Preempted(step)

    if first_step >= plan.total_steps:
      log.info(f'the run was already complete at step {first_step}')
      if not eval_metrics:
        eval_metrics = evaluate(state, run.p_eval, par, run.eval_ds, eval_batch_size)
    ckpts.wait()
    failed = False
  finally:
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)
    if log is not None:
      log.close()
    try:
      ckpts.close()
    except checkpointing.CheckpointError:
      if not failed:
        raise

  train_time = time.perf_counter() - train_start
  results = {**eval_metrics, 'steps': step, 'train_time_s': round(train_time, 2),
             'compile_time_s': round(compile_s or 0.0, 2),
             'images_per_sec': throughput.mean, 'num_params': run.num_params,
             'data_wait_fraction': (total_wait / throughput.total_time
                                    if throughput.total_time else None),
             'num_devices': par.num_devices, 'model': describe_model(config.model)}
  if init_report:
    results['init_from'] = init_report
  if run.frozen is not None:
    results['num_trainable_params'] = run.num_params - run.num_frozen
  if is_main:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results


def evaluate_checkpoint(config, workdir: str, step: int = -1, *, devices=None):
  """Evaluates a saved model of the run in `workdir` on `config`'s eval split (no training).
  Returns (step, metrics)."""
  run = build_run(config, devices=devices)
  template = jax.device_get(run.par.host_state(run.state))
  chosen, host, _, _ = checkpointing.load_checkpoint(
      checkpointing.checkpoint_dir(config, workdir), step, template)
  state = run.par.put_state(host)
  metrics = evaluate(state, run.p_eval, run.par, run.eval_ds,
                     config.eval_batch_size or config.batch_size)
  return chosen, metrics
