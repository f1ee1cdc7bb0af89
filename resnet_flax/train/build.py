"""Config -> everything a run needs, before the loop starts: `build_run(config)` validates the
config, loads the data and builds the plan (durations in steps), schedule, optimizer, freezing,
model, state and the compiled steps. Benchmarks, diagnostics and tests build runs the same way.
"""

import dataclasses
import math
from typing import Any, Optional

import jax
import numpy as np

from resnet_flax import compiler
from resnet_flax import config as config_lib
from resnet_flax import data, optim
from resnet_flax.data import augment
from resnet_flax.data.arrays import ArrayDataset
from resnet_flax.data.info import DataInfo, of_source
from resnet_flax.data.mixing import Mixing
from resnet_flax.errors import ConfigError
from resnet_flax.models import create_model
from resnet_flax.train import parallel
from resnet_flax.train.state import create_train_state
from resnet_flax.train.steps import make_eval_step, make_train_step
from resnet_flax.transfer import FreezeSpec


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


def build_optimizer(config, num_train_examples: int):
  """(RunPlan, lr schedule, optax optimizer) of `config` for a training set of this size (before
  any freezing)."""
  plan = plan_run(config, num_train_examples)
  schedule = optim.build_schedule(config.schedule, batch_size=config.batch_size,
                                  steps_per_epoch=plan.steps_per_epoch,
                                  total_steps=plan.total_steps)
  return plan, schedule, optim.build_optimizer(config.optimizer, schedule)


@dataclasses.dataclass
class Run:
  """Everything built from a config, before the loop starts (reused by benchmarks and tests)."""
  config: Any
  par: parallel.Parallel
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
  freeze: Optional[FreezeSpec] = None
  data_info: Optional[DataInfo] = None    # saved in checkpoint meta, for inference
  image_shape: tuple = ()                 # (H, W, C) the model sees


def check_data_fits(config, train_ds, eval_ds=None) -> None:
  """The model's classes and the batch size against the training data, and the image sizes of
  the two splits when the model takes the data's own size, before building."""
  classes = train_ds.num_classes
  if config.model.include_top and config.model.num_classes != classes:
    outside = (train_ds.first_label_outside(config.model.num_classes)
               if isinstance(train_ds, ArrayDataset) else None)
    if outside is not None:   # in-memory labels: name the example that does not fit
      index, label = outside
      raise ConfigError(
          f'config.model.num_classes={config.model.num_classes}: example {index} of '
          f'{config.data.train_split!r} has label {label}, outside [0, '
          f'{config.model.num_classes}); fix that label, or set '
          f'--config.model.num_classes={classes} if the data has {classes} classes')
    raise ConfigError(
        f'config.model.num_classes={config.model.num_classes}: the data has {classes} '
        f'classes; set --config.model.num_classes={classes}')
  if train_ds.num_examples < config.batch_size:
    raise ConfigError(
        f'config.batch_size={config.batch_size} is larger than the training split '
        f'{config.data.train_split!r} ({train_ds.num_examples} examples); set batch_size to at '
        f'most {train_ds.num_examples}, or train on more data')
  if (eval_ds is not None and not int(config.data.image_size)
      and not int(config.data.eval_image_size)
      and tuple(train_ds.image_shape[:2]) != tuple(eval_ds.image_shape[:2])):
    # evaluation would resize to the training size, prediction (which records the eval size)
    # would not: one size for both, stated
    train_hw = 'x'.join(map(str, train_ds.image_shape[:2]))
    eval_hw = 'x'.join(map(str, eval_ds.image_shape[:2]))
    raise ConfigError(
        f'data.image_size=0 takes the images\' own size, but {config.data.train_split!r} holds '
        f'{train_hw} images and {config.data.eval_split!r} {eval_hw}: set '
        f'--config.data.image_size to the side the model should see')


def build_run(config, *, devices=None, par: Optional[parallel.Parallel] = None) -> Run:
  """Validates the config, loads the data and builds model, optimizer, state and steps.

  `par` (created by the caller, which validated the config for its device count) skips those
  two steps."""
  if par is None:
    par = parallel.create(config.parallelism, devices, config.compiler_options)
    config_lib.validate(config, device_count=par.num_devices)
  train_ds, eval_ds = data.load_datasets(config.data, config.seed)
  check_data_fits(config, train_ds, eval_ds)
  plan, schedule, tx = build_optimizer(config, train_ds.num_examples)

  preprocess = augment.make_preprocess(config.data, stored_shape=train_ds.image_shape,
                                       augment_on_device=not train_ds.augmented_on_host)
  model = create_model({**config.model, 'dtype': config.dtype}, bn_axis_name=par.axis_name)
  image_shape = augment.output_shape(config.data, train_ds.image_shape)
  freeze = None
  if config.freeze:
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jax.numpy.zeros((1,) + tuple(image_shape)), train=False))
    freeze = FreezeSpec.create(config.freeze, shapes['params'], shapes.get('batch_stats', {}),
                               model.head_names)
    tx = freeze.optimizer(tx)
  state = create_train_state(model, tx, seed=config.seed, image_shape=image_shape,
                             use_ema=config.ema_decay > 0)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  state = par.put_state(state)

  l2_mask = None
  if config.optimizer.weight_decay_mode == 'l2' and config.optimizer.weight_decay:
    l2_mask = optim.weight_decay_mask(jax.device_get(par.host_state(state).params),
                                      config.optimizer.weight_decay_exclude)
    if freeze is not None:   # frozen parameters are not decayed either
      l2_mask = freeze.trainable_l2_mask(l2_mask)
  num_classes = train_ds.num_classes
  train_step = make_train_step(
      model, tx, preprocess, num_classes=num_classes, label_smoothing=config.label_smoothing,
      weight_decay=config.optimizer.weight_decay, l2_mask=l2_mask, ema_decay=config.ema_decay,
      nan_policy=config.nan_policy, axis_name=par.axis_name, freeze=freeze,
      log_grad_norms=bool(config.log_grad_norms), loss=config.loss,
      bce_target_threshold=float(config.bce_target_threshold),
      mixing=Mixing(float(config.mixup_alpha), float(config.cutmix_alpha),
                    float(config.mixup_prob), float(config.mixup_switch_prob)))
  eval_step = make_eval_step(model, preprocess, num_classes=num_classes,
                             axis_name=par.axis_name)
  train_batches = train_ds.train_batches(config.batch_size, config.seed, jax.process_index(),
                                         jax.process_count())
  par.compiler_options = compiler.resolve(config.compiler_options, image_shape)
  par.block = model.block_kind
  return Run(config, par, model, schedule, state, par.compile_train(train_step),
             par.compile_eval(eval_step), train_batches, eval_ds, plan, num_params, tx, freeze,
             data_info=of_source(train_ds, eval_ds), image_shape=tuple(image_shape))
