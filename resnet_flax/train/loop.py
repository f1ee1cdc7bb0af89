"""The training loop: config -> run -> steps, logs, evals, checkpoints -> results.

`train_and_evaluate(config, workdir)` wires the pieces together and owns no numerics: every
number it uses comes from the config (durations, intervals, batch sizes) or from the pieces
(schedule, steps). It returns the final results, which process 0 also writes to the run folder
(`rundir`: `results.json` next to `config.json` and `metrics.jsonl`).

Checkpoints: the loop saves at `checkpoint_every_steps`, at the end and on SIGTERM, only after
the finite flags of every step up to the saved one were checked, and stops at the step after an
asynchronous save that failed (the tracebacks of orbax's background threads go to the run's
`errors.log`). A workdir holding checkpoints is resumed from the latest readable one, exactly
(`resume.resume_or_start`, `LoopState`). One run at a time owns a workdir (`own_workdir`).
"""

import math
import time
from typing import Optional

import jax
import numpy as np

from resnet_flax import config as config_lib
from resnet_flax import rundir
from resnet_flax.checkpoint import store
from resnet_flax.checkpoint.pretrained import load_checkpoint
from resnet_flax.checkpoint.store import Checkpoints
from resnet_flax.data import info as data_info
from resnet_flax.data.source import check_labels
from resnet_flax.errors import CheckpointError, UserError, WorkdirError
from resnet_flax.models.registry import describe as describe_model
from resnet_flax.train import distributed, parallel
from resnet_flax.train.build import Run, build_run
from resnet_flax.train.loop_state import LoopState, add_timing
from resnet_flax.train.metrics_log import MetricsLog, Throughput
from resnet_flax.train.preemption import Preempted, Preemption
from resnet_flax.train.resume import resume_or_start


class NonFiniteLossError(RuntimeError):
  """The loss or the gradients stopped being finite."""


def mean_metrics(sums: dict, prefix: str) -> dict:
  """Loss, top-1 (and top-5) means of summed metrics; None where nothing was counted (a
  window whose every step was dropped by nan_policy=skip_step)."""
  count = float(sums['count'])
  names = {'loss': 'loss_sum', 'top1': 'top1_sum', 'top5': 'top5_sum'}
  return {f'{prefix}_{name}': float(sums[key]) / count if count else None
          for name, key in names.items() if key in sums}


def _add(acc: Optional[dict], metrics: dict) -> dict:
  # by key: a window restored from a checkpoint of a run that logged other metrics still adds up
  return metrics if acc is None else {k: acc[k] + v if k in acc else v for k, v in metrics.items()}


def _grad_norms(sums: dict) -> dict:
  """RMS over the window's applied steps (`finite`: all but those nan_policy=skip_step
  dropped) of the global gradient norm and, with config.log_grad_norms, of each stage's
  ('grad_norm_stage1', ...)."""
  applied = float(sums['finite'])
  return {name[:-len('_sq')]: math.sqrt(float(value) / applied) if applied else None
          for name, value in sums.items() if name.startswith('grad_norm') and name.endswith('_sq')}


def evaluate(state, p_eval, par, eval_ds, eval_batch_size: int) -> dict:
  """Top-1, top-5 and loss over the whole eval split (padded and masked, nothing dropped)."""
  total = None
  for host_batch in eval_ds.eval_batches(eval_batch_size, jax.process_index(),
                                         jax.process_count()):
    if eval_ds.augmented_on_host:   # streamed (in-memory labels were checked when loaded)
      check_labels(host_batch, eval_ds.num_classes, 'the eval split')
    total = _add(total, p_eval(state, par.put_batch(host_batch)))
  sums = par.host_metrics(total)
  if int(round(float(sums['count']))) != eval_ds.num_examples:
    raise AssertionError(f'eval counted {sums["count"]} examples of {eval_ds.num_examples}')
  return mean_metrics(sums, 'eval')


def open_checkpoints(config, workdir: str, log=print) -> Checkpoints:
  return Checkpoints(rundir.checkpoint_dir(config, workdir), keep=config.keep_checkpoints,
                     best_metric=config.best_metric, best_mode=config_lib.best_mode(config),
                     log=log)


def _host_copy(par, state):
  """A private host copy of the state (the next step donates the device buffers)."""
  return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(par.host_state(state)))


class TrainingLoop:
  """One segment of a run, from `first_step` to the end (or a SIGTERM)."""

  def __init__(self, config, run: Run, ckpts: Checkpoints, log: MetricsLog,
               loop_state: LoopState, first_step: int):
    self.config, self.run, self.ckpts, self.log = config, run, ckpts, log
    self.loop = loop_state
    self.first_step = self.step = first_step
    self.pending_flags: list = []     # finite flags of steps not checked yet
    self.throughput = Throughput()
    self.train_start = time.perf_counter()
    self.compile_s: Optional[float] = None
    self.data_wait = self.total_wait = 0.0   # host time producing batches (the step waits)

  def check_finite(self) -> None:
    """Raises NonFiniteLossError (nan_policy=stop) if a pending step was not finite; with
    skip_step counts the dropped updates (in the results, and a warning in the log)."""
    if not self.pending_flags:
      return
    # one transfer for the whole window; under pmap each flag holds one copy per device
    flags = [float(np.min(f)) for f in jax.device_get(self.pending_flags)]
    dropped = sum(f < 1.0 for f in flags)
    if dropped and self.config.nan_policy == 'skip_step':
      self.loop.skipped_steps += dropped
      self.log.info(f'warning: {dropped} of the last {len(flags)} steps had a non-finite loss or '
                    f'gradients and were skipped (nan_policy=skip_step; '
                    f'{self.loop.skipped_steps} so far)')
    if dropped and self.config.nan_policy == 'stop':
      bad = self.step - len(flags) + flags.index(min(flags)) + 1
      try:    # a save still being written is on disk before the message counts it as kept
        self.ckpts.wait()
      except CheckpointError:
        pass  # not kept, so not counted; the non-finite loss is what stops the run
      latest = self.ckpts.latest_step()
      raise NonFiniteLossError(
          f'non-finite loss or gradients at step {bad}; stopping (nan_policy=stop). Lower '
          'schedule.base_lr, add warmup or optimizer.grad_clip_norm, or check the data.'
          + (f' Checkpoints up to step {latest} are kept in {self.ckpts.directory}.'
             if latest is not None else ''))
    self.pending_flags.clear()

  def save(self, state, at_eval: bool) -> None:
    self.check_finite()   # never save a state whose steps were not all checked
    par, loop = self.run.par, self.loop
    window = self.window
    host_window = ({k: float(v) for k, v in par.host_metrics(window).items()}
                   if window is not None else None)
    saved = LoopState(window=host_window, window_steps=loop.window_steps,
                      eval_metrics=loop.eval_metrics, eval_step=loop.eval_step,
                      init_report=loop.init_report, timing=self.timing(),
                      skipped_steps=loop.skipped_steps)
    self.ckpts.save(self.step, _host_copy(par, state), config=self.config,
                    metrics=loop.eval_metrics if at_eval else None,
                    meta=saved.to_meta(total_steps=self.run.plan.total_steps,
                                       data=self.run.data_info))

  def keep_before_stopping(self, state) -> str:
    """Saves the current step before an evaluation error stops the run (one process: a save
    is a collective), without eval metrics, so that a resumed run that ends there evaluates
    again; the sentence for the error message."""
    if jax.process_count() > 1 or self.ckpts.latest_step() == self.step:
      return ''
    self.loop.eval_metrics, self.loop.eval_step = {}, -1
    self._check_saves(lambda: self.save(state, at_eval=False))
    self.ckpts.wait()
    return (f' (checkpoint {self.step} saved in {self.ckpts.directory}, without this '
            f'evaluation: fix that and run the same command to resume)')

  def _check_saves(self, then=None) -> None:
    """Raises the CheckpointError of a failed asynchronous save (or of `then()`), saying where
    training stopped."""
    try:
      self.ckpts.check()
      if then is not None:
        then()
    except CheckpointError as e:
      latest = self.ckpts.latest_step()
      raise CheckpointError(f'{e}; training stopped at step {self.step}, '
                            + (f'the latest complete checkpoint is {latest}' if latest
                               is not None else 'no checkpoint is complete')) from None

  def log_window(self, state, at_eval: bool) -> None:
    """Writes the train metrics of the window (and evaluates at eval steps)."""
    run, step, throughput = self.run, self.step, self.throughput
    plan = run.plan
    self.check_finite()
    sums = run.par.host_metrics(self.window)
    window_s = time.perf_counter() - throughput.start if throughput.start else None
    ips = throughput.end() if throughput.start is not None and throughput.images else None
    wait_fraction = self.data_wait / window_s if window_s and throughput.images else None
    self.total_wait += self.data_wait if throughput.images else 0.0
    train = mean_metrics(sums, 'train')
    record = {**train, 'lr': float(run.schedule(step - 1)), 'images_per_sec': ips,
              'data_wait_fraction': wait_fraction, **_grad_norms(sums)}
    self.log.write(step, step / plan.steps_per_epoch, record)
    self.log.progress(step, {'loss': train['train_loss'], 'lr': record['lr'],
                             'img/s': round(ips) if ips else None})
    self.window, self.loop.window_steps = None, 0
    if at_eval:
      try:
        self.loop.eval_metrics = evaluate(state, run.p_eval, run.par, run.eval_ds,
                                          self.config.eval_batch_size or self.config.batch_size)
        self.loop.eval_step = step
      except UserError as e:   # e.g. an eval image that cannot be decoded (streamed splits)
        raise type(e)(f'{e}{self.keep_before_stopping(state)}') from None
      # with the run's wall time so far (all its segments, evaluations included): the
      # error-against-time curve of a run comes from metrics.jsonl alone
      self.log.write(step, step / plan.steps_per_epoch,
                     {**self.loop.eval_metrics,
                      'train_time_s': round(self.timing()['train_time_s'], 1)})
      self.log.info(f'step {step}: ' + ' '.join(f'{k} {v:.4f}'
                                                for k, v in self.loop.eval_metrics.items()))
    throughput.begin()
    self.data_wait = 0.0

  def train(self, state, preemption: Preemption):
    """Steps until the end of the run; raises Preempted after saving on SIGTERM."""
    run, config, plan = self.run, self.config, self.run.plan
    self.window = self.loop.window
    streamed = run.data_info.host_preprocess   # batches of a host back end (tf.data, Grain)
    while self.step < plan.total_steps:
      wait_start = time.perf_counter()
      host_batch = run.train_batches.batch(self.step)
      if streamed:   # in-memory labels were checked when loaded
        check_labels(host_batch, config.model.num_classes,
                     f'the training split {config.data.train_split!r}')
      device_batch = run.par.put_batch(host_batch)
      self.data_wait += time.perf_counter() - wait_start
      state, metrics = run.p_train(state, device_batch)
      self.window = _add(self.window, metrics)
      self.pending_flags.append(metrics['finite'])
      self.loop.window_steps += 1
      self.step += 1
      if self.step == self.first_step + 1:
        jax.block_until_ready(metrics)
        self.compile_s = time.perf_counter() - self.train_start
        self.throughput.begin()
        self.data_wait = 0.0
      else:
        self.throughput.add(config.batch_size)
      at_eval = self.step % plan.eval_every == 0 or self.step == plan.total_steps
      at_log = self.step % plan.log_every == 0 or at_eval
      if at_log:
        self._check_saves()    # a background save that failed stops the run, saying so
        self.log_window(state, at_eval)
      preempted = (preemption.requested(at_log, jax.process_count())
                   and self.step < plan.total_steps)
      if (self.step % plan.checkpoint_every == 0 or self.step == plan.total_steps
          or preempted):
        self._check_saves(lambda: self.save(state, at_eval))
      if preempted:
        self.ckpts.wait()
        self.log.info(f'SIGTERM: saved checkpoint {self.step} in {self.ckpts.directory}; '
                      f'stopping at step {self.step} of {plan.total_steps}. Run the same '
                      f'command to resume.')
        raise Preempted(self.step)
    return state

  def timing(self) -> dict:
    """The time spent so far: the saved segments' and this one's (see `LoopState.timing`)."""
    throughput = self.throughput
    return add_timing(self.loop.timing, {
        'train_time_s': time.perf_counter() - self.train_start,
        'compile_time_s': self.compile_s or 0.0, 'images': throughput.total_images,
        'throughput_time_s': throughput.total_time, 'data_wait_s': self.total_wait})

  def results(self) -> dict:
    timing = self.timing()
    return {**self.loop.eval_metrics, 'steps': self.step,
            'train_time_s': round(timing['train_time_s'], 2),
            'compile_time_s': round(timing['compile_time_s'], 2),
            'images_per_sec': (timing['images'] / timing['throughput_time_s']
                               if timing['throughput_time_s'] else None),
            'num_params': self.run.num_params,
            'data_wait_fraction': (timing['data_wait_s'] / timing['throughput_time_s']
                                   if timing['throughput_time_s'] else None),
            'num_devices': self.run.par.num_devices,
            'skipped_steps': self.loop.skipped_steps,
            'model': describe_model(self.config.model)}


def own_workdir(workdir: str, config) -> rundir.WorkdirLock:
  """The workdir's lock and its checkpoints folder (`rundir.claim_checkpoint_dir`), taken by
  process 0; with several processes all of them learn (a collective) whether they were taken,
  so that all stop together when another run holds them."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = rundir.WorkdirLock(workdir).acquire()
      rundir.claim_checkpoint_dir(workdir, rundir.checkpoint_dir(config, workdir),
                                  explicit=bool(config.checkpoint_dir),
                                  restart=config.on_existing_run == 'restart')
    except WorkdirError as e:
      if lock is not None:
        lock.release()
        lock = None
      error = e
  if jax.process_count() > 1 and distributed.any_process(error is not None):
    raise error or WorkdirError(f'{workdir}: process 0 could not take the run folder (its '
                                f'message says why)')
  if error is not None:
    raise error
  return lock


def train_and_evaluate(config, workdir: str, *, devices=None) -> dict:
  """Trains as the config says, evaluating on the whole eval split; returns the results.

  The workdir belongs to this run while it trains (`rundir.WorkdirLock`); a second run on it is
  refused. Resumes from the checkpoints in the workdir if there are any (see
  `config.on_existing_run`); a run that is already complete keeps its results. Raises
  `Preempted` (a SystemExit with code 0) after saving a checkpoint on SIGTERM.
  """
  is_main = jax.process_index() == 0
  par = parallel.create(config.parallelism, devices, config.compiler_options)
  config_lib.validate(config, device_count=par.num_devices)
  lock = own_workdir(workdir, config)   # before any set-up: a busy or unusable workdir fails
  say = print if is_main else (lambda *args, **kwargs: None)
  log = None
  failed = True
  try:
    store.divert_background_errors(rundir.path(workdir, rundir.ERRORS_FILE))
    ckpts = open_checkpoints(config, workdir, log=say)
    try:
      run = build_run(config, par=par)
      plan = run.plan
      state, first_step, loop_state, messages = resume_or_start(config, workdir, run, ckpts)
      complete = first_step >= plan.total_steps
      finished = rundir.read_results(workdir) if complete else None
      if finished is not None:   # nothing to train: the results of the run stay as they are
        say(f'the run in {workdir} was already complete at step {first_step}; its results '
            f'({rundir.path(workdir, rundir.RESULTS_FILE)}) are unchanged')
        failed = False
        return finished
      if is_main:
        rundir.write_config(workdir, config)
        rundir.truncate_metrics(workdir, first_step)
        rundir.remove_results(workdir)
      log = MetricsLog(workdir, enabled=is_main, tensorboard=config.log_tensorboard,
                       progress_bar=config.progress_bar, total_steps=plan.total_steps,
                       first_step=first_step)
      log.info(f'{describe_model(config.model) or "model"}: {run.num_params:,} parameters; '
               f'{plan.total_steps} steps ({plan.steps_per_epoch} per epoch) of batch '
               f'{config.batch_size} on {par.num_devices} device(s) [{par.mode}]')
      if run.freeze is not None:
        log.info(run.freeze.describe())
      for message in messages:
        log.info(message)
      loop = TrainingLoop(config, run, ckpts, log, loop_state, first_step)
      with Preemption() as preemption:
        try:
          state = loop.train(state, preemption)
        except Preempted:
          failed = False
          raise
      if complete:
        log.info(f'the run was already complete at step {first_step} (its results were '
                 f'missing: written again)')
        if not loop_state.eval_metrics or loop_state.eval_step != first_step:
          # the saved metrics are an earlier step's (the run was shortened): evaluate this one
          loop_state.eval_metrics = evaluate(state, run.p_eval, par, run.eval_ds,
                                             config.eval_batch_size or config.batch_size)
          loop_state.eval_step = first_step
          log.write(first_step, first_step / plan.steps_per_epoch, loop_state.eval_metrics)
      ckpts.wait()
      failed = False
    finally:
      if log is not None:
        log.close()
      try:
        ckpts.close()
      except CheckpointError:
        if not failed:
          raise
    results = loop.results()
    if loop_state.init_report:
      results['init_from'] = loop_state.init_report
    if run.freeze is not None:
      results['num_trainable_params'] = run.num_params - run.freeze.num_frozen
    if is_main:
      rundir.write_results(workdir, results)
    return results
  finally:
    if lock is not None:
      lock.release()


def evaluate_checkpoint(config, workdir: str, step: int = -1, *, devices=None):
  """Evaluates a saved model of the run in `workdir` on `config`'s eval split (no training).
  Returns (step, metrics)."""
  run = build_run(config, devices=devices)
  template = jax.device_get(run.par.host_state(run.state))
  chosen, host, meta, _ = load_checkpoint(rundir.checkpoint_dir(config, workdir), step, template)
  data_info.check_classes(meta, run.eval_ds.class_names,
                          f'{config.data.dir or config.data.name} {config.data.eval_split!r}')
  state = run.par.put_state(host)
  metrics = evaluate(state, run.p_eval, run.par, run.eval_ds,
                     config.eval_batch_size or config.batch_size)
  return chosen, metrics
