"""Classification losses and metrics.

Both functions work per example (the caller averages, with weights for padded examples) and
compute in float32 whatever the dtype of the logits (bfloat16 under mixed precision).
"""

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32 with integer class labels.

  With label smoothing (Szegedy et al. 2016) the target is
  `(1 - label_smoothing) * one_hot(label) + label_smoothing / num_classes`.
  """
  if logits.shape[-1] != num_classes:
    raise ValueError(f'logits have {logits.shape[-1]} classes on the last axis but '
                     f'num_classes={num_classes}.')
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing={label_smoothing!r} must be in [0, 1).')
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing > 0:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
  return -jnp.sum(targets * log_probs, axis=-1)


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
