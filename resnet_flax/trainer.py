"""The training loop: config -> data, model, optimizer, state -> steps, logs, evals, results.

`train_and_evaluate(config, workdir)` wires the pieces together and owns no numerics: every
number it uses comes from the config (durations, intervals, batch sizes) or from the pieces
(schedule, steps). It returns the final results, which process 0 also writes to
`workdir/results.json` next to `config.json` and `metrics.jsonl`.
"""

import dataclasses
import json
import math
import os
import time
from typing import Any, Optional

import jax
import numpy as np

from resnet_flax import configuration, data, optim, parallel
from resnet_flax.data import augment
from resnet_flax.metrics_log import MetricsLog, Throughput
from resnet_flax.models import create_model
from resnet_flax.steps import make_eval_step, make_train_step
from resnet_flax.train_state import create_train_state


class NonFiniteLossError(RuntimeError):
  """The loss or the gradients stopped being finite."""


@dataclasses.dataclass
class RunPlan:
  """The durations of a run, in steps, derived from the config and the data size."""
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  log_every: int


def plan_run(config, num_train_examples: int) -> RunPlan:
  steps_per_epoch = num_train_examples // config.batch_size
  if config.num_train_steps > 0:
    total = int(config.num_train_steps)
  else:
    total = max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))
  eval_every = steps_per_epoch if config.eval_every_steps == -1 else int(config.eval_every_steps)
  return RunPlan(steps_per_epoch, total, max(1, eval_every), int(config.log_every_steps))


def _mean_metrics(sums: dict, prefix: str) -> dict:
  count = float(sums['count'])
  out = {f'{prefix}_loss': float(sums['loss_sum']) / count,
         f'{prefix}_top1': float(sums['top1_sum']) / count}
  if 'top5_sum' in sums:
    out[f'{prefix}_top5'] = float(sums['top5_sum']) / count
  return out


def _add(acc: Optional[dict], metrics: dict) -> dict:
  return metrics if acc is None else jax.tree.map(lambda a, b: a + b, acc, metrics)


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


def build_run(config, *, devices=None) -> Run:
  """Validates the config, loads the data and builds model, optimizer, state and steps."""
  par = parallel.create(config.parallelism, devices)
  configuration.validate(config, device_count=par.num_devices)
  train_ds, eval_ds = data.load_datasets(config.data, config.seed)
  if config.model.include_top and config.model.num_classes != train_ds.num_classes:
    raise configuration.ConfigError(
        f'config.model.num_classes={config.model.num_classes}: the data has '
        f'{train_ds.num_classes} classes; set --config.model.num_classes={train_ds.num_classes}')
  plan = plan_run(config, train_ds.num_examples)
  try:
    schedule = optim.build_schedule(config.schedule, batch_size=config.batch_size,
                                    steps_per_epoch=plan.steps_per_epoch,
                                    total_steps=plan.total_steps)
    tx = optim.build_optimizer(config.optimizer, schedule)
  except ValueError as e:
    raise configuration.ConfigError(f'config.{e}' if str(e).startswith(
        ('schedule.', 'optimizer.')) else str(e)) from None

  try:
    preprocess = augment.make_preprocess(config.data, stored_shape=train_ds.image_shape,
                                         augment_on_device=not train_ds.augmented_on_host)
  except ValueError as e:
    raise configuration.ConfigError(str(e)) from None
  model = create_model({**config.model, 'dtype': config.dtype}, bn_axis_name=par.axis_name)
  state = create_train_state(model, tx, seed=config.seed,
                             image_shape=augment.output_shape(config.data, train_ds.image_shape),
                             use_ema=config.ema_decay > 0)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  state = par.put_state(state)

  l2_mask = None
  if config.optimizer.weight_decay_mode == 'l2' and config.optimizer.weight_decay:
    l2_mask = optim.weight_decay_mask(jax.device_get(par.host_state(state).params),
                                      config.optimizer.weight_decay_exclude)
  num_classes = train_ds.num_classes
  train_step = make_train_step(
      model, tx, preprocess, num_classes=num_classes, label_smoothing=config.label_smoothing,
      weight_decay=config.optimizer.weight_decay, l2_mask=l2_mask, ema_decay=config.ema_decay,
      nan_policy=config.nan_policy, axis_name=par.axis_name)
  eval_step = make_eval_step(model, preprocess, num_classes=num_classes,
                             axis_name=par.axis_name)
  train_batches = train_ds.train_batches(config.batch_size, config.seed, jax.process_index(),
                                         jax.process_count())
  return Run(config, par, model, schedule, state, par.compile_train(train_step),
             par.compile_eval(eval_step), train_batches, eval_ds, plan, num_params)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains as the config says, evaluating on the whole eval split; returns the results."""
  is_main = jax.process_index() == 0
  run = build_run(config)
  plan, par = run.plan, run.par
  eval_batch_size = config.eval_batch_size or config.batch_size
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))
  log = MetricsLog(workdir, enabled=is_main, tensorboard=config.log_tensorboard,
                   progress_bar=config.progress_bar, total_steps=plan.total_steps)
  log.info(f'{config.model.name or "model"}: {run.num_params:,} parameters; '
           f'{plan.total_steps} steps ({plan.steps_per_epoch} per epoch) of batch '
           f'{config.batch_size} on {par.num_devices} device(s) [{par.mode}]')

  state = run.state
  throughput = Throughput()
  window, finite_flags = None, []
  eval_metrics: dict = {}
  train_start = time.perf_counter()
  compile_s = None
  step = first_step = 0
  data_wait = total_wait = 0.0   # host time spent producing batches (the step waits on it)
  try:
    while step < plan.total_steps:
      wait_start = time.perf_counter()
      device_batch = par.put_batch(run.train_batches.batch(step))
      data_wait += time.perf_counter() - wait_start
      state, metrics = run.p_train(state, device_batch)
      window = _add(window, {k: v for k, v in metrics.items() if k != 'finite'})
      finite_flags.append(metrics['finite'])
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
        sums = par.host_metrics(window)
        flags = [float(par.host_metrics(f)) for f in finite_flags]
        if min(flags) < 1.0 and config.nan_policy == 'stop':
          bad = step - len(flags) + flags.index(min(flags)) + 1
          raise NonFiniteLossError(
              f'non-finite loss or gradients at step {bad}; stopping (nan_policy=stop). Lower '
              'schedule.base_lr, add warmup or optimizer.grad_clip_norm, or check the data.')
        window_s = time.perf_counter() - throughput.start if throughput.start else None
        ips = throughput.end() if throughput.start is not None and throughput.images else None
        wait_fraction = data_wait / window_s if window_s and throughput.images else None
        total_wait += data_wait if throughput.images else 0.0
        train = _mean_metrics(sums, 'train')
        record = {**train, 'lr': float(run.schedule(step - 1)), 'images_per_sec': ips,
                  'data_wait_fraction': wait_fraction,
                  'grad_norm': math.sqrt(float(sums['grad_norm_sq']) / len(flags))}
        log.write(step, step / plan.steps_per_epoch, record)
        log.progress(step, {'loss': train['train_loss'], 'lr': record['lr'],
                            'img/s': round(ips) if ips else None})
        window, finite_flags = None, []
        if at_eval:
          eval_metrics = evaluate(state, run.p_eval, par, run.eval_ds, eval_batch_size)
          log.write(step, step / plan.steps_per_epoch, eval_metrics)
          log.info(f'step {step}: ' + ' '.join(f'{k} {v:.4f}' for k, v in eval_metrics.items()))
        throughput.begin()
        data_wait = 0.0
  finally:
    log.close()

  train_time = time.perf_counter() - train_start
  results = {**eval_metrics, 'steps': step, 'train_time_s': round(train_time, 2),
             'compile_time_s': round(compile_s or 0.0, 2),
             'images_per_sec': throughput.mean, 'num_params': run.num_params,
             'data_wait_fraction': (total_wait / throughput.total_time
                                    if throughput.total_time else None),
             'num_devices': par.num_devices, 'model': config.model.name}
  if is_main:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results
