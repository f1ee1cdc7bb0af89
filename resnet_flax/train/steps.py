"""The pure step functions: `train_step(state, batch) -> (state, metrics)` and
`eval_step(state, batch) -> summed metrics`.

They hold all the numerics of training (preprocessing, loss, L2 penalty, optimizer update, EMA,
non-finite guard) and none of the parallelism: `train.parallel` wraps them in `jax.jit` over a
mesh or in `pmap`. Under pmap they receive `axis_name` and average gradients / sum metrics over it;
under jit the batch is one global array and XLA inserts the collectives.

Metrics are sums over examples (`loss_sum`, `top1_sum`, `top5_sum`, `count`) so that any number
of batches, devices and processes add up exactly; divide by `count` for the means.

Frozen parameters (`config.freeze`, a `transfer.FreezeSpec`) get no gradient, a zero update
and keep their bits; the BatchNorm layers whose parameters are all frozen run in inference mode
inside the training forward pass, so they normalise with, and keep, their running statistics.

Randomness of a step: the per-example augmentation keys are fold_in(step_key, position) with
step_key = fold_in(state.rng, step); the batch's mixup / cutmix and the stochastic-depth masks
(the model's 'drop_path' RNG stream) take `stream_key(state.rng, STREAM, step)`, folded first
with a stream number above any step, so no stream meets another step's keys. Everything is a
function of (seed, step): a resumed run draws what the uninterrupted run drew. Under pmap the
drop-path key also folds in the device index (each device drops its own examples) and a
device's batch is mixed with its own reverse.

Training losses take soft targets (`losses.soft_targets`, mixed by `data.mixing`); without
mixing, the softmax cross-entropy reads the integer labels directly (`losses.cross_entropy`).
Top-1 counts the original labels, mixed batch or not.
"""

import contextlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from resnet_flax import optim
from resnet_flax.data.mixing import Mixing
from resnet_flax.models import stage_of
from resnet_flax.train import losses
from resnet_flax.train.state import TrainState
from resnet_flax.transfer import FreezeSpec
from resnet_flax.tree import path_str


def _finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# stream numbers of `stream_key`, above every step number (steps are int32)
MIX_STREAM = 0xFFFFFFFF
DROP_PATH_STREAM = 0xFFFFFFFE


def stream_key(rng, stream: int, step) -> jax.Array:
  """The key of random stream `stream` at `step`: fold_in(fold_in(rng, stream), step)."""
  return jax.random.fold_in(jax.random.fold_in(rng, stream), step)


def per_stage_grad_squares(grads) -> dict[str, jax.Array]:
  """{'grad_norm_stem_sq': ..., 'grad_norm_stage1_sq': ..., 'grad_norm_head_sq': ...}: the sum
  of squared gradients of each stage's parameters (what `config.log_grad_norms` logs)."""
  squares: dict[str, list] = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
    squares.setdefault(stage_of(path_str(keys)), []).append(jnp.sum(jnp.square(
        leaf.astype(jnp.float32))))
  return {f'grad_norm_{name}_sq': sum(parts) for name, parts in squares.items()}


def make_train_step(model, tx: optax.GradientTransformation, preprocess: Callable, *,
                    num_classes: int, label_smoothing: float, weight_decay: float,
                    l2_mask, ema_decay: float, nan_policy: str = 'stop',
                    axis_name: Optional[str] = None, freeze: Optional[FreezeSpec] = None,
                    log_grad_norms: bool = False, loss: str = 'cross_entropy',
                    bce_target_threshold: float = 0.0, mixing: Optional[Mixing] = None,
                    ) -> Callable:
  """Builds the train step. `l2_mask` (a pytree of bools, or None) turns on the L2 loss term.

  `loss` is one of `losses.LOSSES` (with `bce_target_threshold` for 'bce'); `mixing` (or None)
  mixes each batch and its targets (mixup / cutmix).

  `freeze` (or None) says which parameters are frozen (`tx` must be `freeze.optimizer(...)`)
  and which norm layers run in inference mode.

  `log_grad_norms` adds the squared gradient norm of each stage (stem, stage1, ..., head) to
  the metrics as `grad_norm_<stage>_sq`.
  """

  mixing = mixing if mixing is not None and mixing.enabled else None
  soft = mixing is not None or loss != 'cross_entropy'

  def per_example_loss(logits, labels, targets):
    if not soft:
      return losses.cross_entropy(logits, labels, num_classes, label_smoothing)
    return losses.loss(loss, logits, targets, bce_target_threshold)

  def train_step(state: TrainState, batch):
    step_key = jax.random.fold_in(state.rng, state.step)
    images = preprocess(batch['image'], step_key, batch['position'], True)
    labels = batch['label']
    targets = None
    if soft:
      targets = losses.soft_targets(labels, num_classes, label_smoothing)
    if mixing is not None:
      images, targets = mixing(images, targets, stream_key(state.rng, MIX_STREAM, state.step))
    drop_key = stream_key(state.rng, DROP_PATH_STREAM, state.step)
    if axis_name is not None:
      drop_key = jax.random.fold_in(drop_key, jax.lax.axis_index(axis_name))
    stats_frozen = (freeze.stats_mask(state.batch_stats) if freeze is not None and
                    freeze.norm_paths else None)

    def loss_fn(params):
      frozen_norms = contextlib.nullcontext()
      if freeze is not None:
        params = freeze.stop_gradient(params)
        frozen_norms = freeze.norms_in_inference_mode()
      with frozen_norms:
        logits, new_vars = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                       images, train=True, mutable=['batch_stats'],
                                       rngs={'drop_path': drop_key})
      per_example = per_example_loss(logits, labels, targets)
      loss = per_example.mean()
      total = loss
      if l2_mask is not None and weight_decay:
        total = loss + weight_decay * optim.l2_penalty(params, l2_mask)
      return total, (per_example, logits, new_vars['batch_stats'])

    grads, (per_example, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if freeze is not None:   # the frozen leaves themselves, bit for bit (not w + 0)
      params = freeze.keep_frozen(params, state.params)
    ema_params, ema_stats = state.ema_params, state.ema_batch_stats
    if ema_params is not None:
      ema_params = optim.ema_update(ema_params, params, ema_decay,
                                    freeze.mask if freeze is not None else None)
      ema_stats = optim.ema_update(ema_stats, batch_stats, ema_decay, stats_frozen)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, ema_params=ema_params,
                              ema_batch_stats=ema_stats)

    metrics = {
        'loss_sum': per_example.sum(),
        'top1_sum': losses.topk_correct(logits, labels, 1).sum(),
        'count': jnp.asarray(labels.shape[0], jnp.float32),
        'grad_norm_sq': sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                            for g in jax.tree.leaves(grads)),
    }
    if log_grad_norms:
      metrics.update(per_stage_grad_squares(grads))
    if axis_name is not None:
      metrics = jax.lax.psum(metrics, axis_name)
      for name in metrics:   # the gradients are already averaged: undo the sum of copies
        if name.startswith('grad_norm'):
          metrics[name] = metrics[name] / jax.lax.psum(1, axis_name)
    finite = jnp.isfinite(metrics['loss_sum']) & _finite(grads)
    metrics['finite'] = finite.astype(jnp.float32)
    if nan_policy == 'skip_step':
      # a dropped step adds nothing to the window's means (its NaN would make the whole window's
      # loss null); `finite` counts the steps that did
      metrics = {k: jnp.where(finite, v, 0.0) if k != 'finite' else v for k, v in metrics.items()}
      # keep the old state (but advance the step, so the data stream moves on)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                               state.replace(step=state.step + 1))
    return new_state, metrics

  return train_step


def make_eval_step(model, preprocess: Callable, *, num_classes: int,
                   axis_name: Optional[str] = None) -> Callable:
  """Builds the eval step: masked sums of loss, top-1 and top-5 correct, and the count."""

  def eval_step(state: TrainState, batch):
    images = preprocess(batch['image'], jax.random.PRNGKey(0), batch['position'], False)
    logits = model.apply(state.eval_variables(), images, train=False)
    mask = batch['mask']
    labels = batch['label']
    metrics = {
        'loss_sum': jnp.sum(losses.cross_entropy(logits, labels, num_classes, 0.0) * mask),
        'top1_sum': jnp.sum(losses.topk_correct(logits, labels, 1) * mask),
        'top5_sum': jnp.sum(losses.topk_correct(logits, labels, 5) * mask),
        'count': jnp.sum(mask),
    }
    if axis_name is not None:
      metrics = jax.lax.psum(metrics, axis_name)
    return metrics

  return eval_step
