"""Classification losses and metrics.

The functions work per example (the caller averages, with weights for padded examples) and
compute in float32 whatever the dtype of the logits (bfloat16 under mixed precision). Losses take
soft targets (a distribution over the classes per example: smoothed labels, mixup / cutmix
mixtures) from `soft_targets`; `cross_entropy` is the integer-label shortcut.

* 'cross_entropy': softmax cross-entropy, -sum_c t_c log softmax(z)_c;
* 'bce': binary cross-entropy of each class's sigmoid against its target, averaged over the
  classes ("ResNet strikes back", timm's BinaryCrossEntropy with reduction 'mean'); with a
  target threshold, targets above it count as 1 and the others as 0 (timm's
  `target_threshold`: both classes of a mixed pair are present).
"""

import jax
import jax.numpy as jnp
import optax

from resnet_flax.config import LOSSES


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
  """float32 targets of integer labels: `(1 - label_smoothing) * one_hot(label) +
  label_smoothing / num_classes` (Szegedy et al. 2016; timm's on/off values)."""
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing={label_smoothing!r} must be in [0, 1).')
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing > 0:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
  return targets


def _check_classes(logits, num_classes):
  if logits.shape[-1] != num_classes:
    raise ValueError(f'logits have {logits.shape[-1]} classes on the last axis but '
                     f'num_classes={num_classes}.')


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy in float32 against soft targets (N, classes)."""
  _check_classes(logits, targets.shape[-1])
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(targets * log_probs, axis=-1)


def binary_cross_entropy(logits: jax.Array, targets: jax.Array,
                         target_threshold: float = 0.0) -> jax.Array:
  """Per-example binary cross-entropy in float32, the mean over the classes of
  -t log sigmoid(z) - (1 - t) log(1 - sigmoid(z)); `target_threshold` > 0 first turns the
  targets into 1 (above it) and 0."""
  _check_classes(logits, targets.shape[-1])
  if target_threshold > 0:
    targets = (targets > target_threshold).astype(jnp.float32)
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean(axis=-1)


def loss(name: str, logits: jax.Array, targets: jax.Array,
         bce_target_threshold: float = 0.0) -> jax.Array:
  """The per-example loss `name` (one of `LOSSES`) against soft targets."""
  if name == 'cross_entropy':
    return soft_cross_entropy(logits, targets)
  if name == 'bce':
    return binary_cross_entropy(logits, targets, bce_target_threshold)
  raise ValueError(f'loss={name!r}; allowed: {", ".join(LOSSES)}')


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32 with integer class labels (smoothed by
  `label_smoothing`, see `soft_targets`)."""
  _check_classes(logits, num_classes)
  return soft_cross_entropy(logits, soft_targets(labels, num_classes, label_smoothing))


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Per-example 1.0 if the label is among the k largest logits, else 0.0 (float32).

  k larger than the number of classes is clamped to it. Ties are broken by class index, as
  argmax and a stable sort do: the label is in the top k if fewer than k classes rank ahead of
  it (a larger logit, or an equal logit and a smaller index), so a model with constant logits
  is not credited with every class. A row with a NaN logit, or a label outside
  [0, num_classes), gives 0.
  """
  if k < 1:
    raise ValueError(f'k={k} must be a positive integer.')
  num_classes = logits.shape[-1]
  k = min(int(k), num_classes)
  logits = logits.astype(jnp.float32)
  labels = jnp.asarray(labels)
  valid = (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(valid, labels, 0)
  label_logit = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)
  index = jnp.arange(num_classes)
  ahead = (logits > label_logit) | ((logits == label_logit) & (index < safe_labels[..., None]))
  num_larger = jnp.sum(ahead, axis=-1)
  finite = ~jnp.any(jnp.isnan(logits), axis=-1)
  return ((num_larger < k) & valid & finite).astype(jnp.float32)
