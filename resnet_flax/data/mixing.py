"""Batch-level mixing of a preprocessed batch with its own reverse: mixup (Zhang et al. 2018) and
cutmix (Yun et al. 2019), with timm's rules (its `Mixup`, mode 'batch').

Per batch, from one key: with probability `prob` the batch is mixed, else left alone; when both
alphas are set, cutmix is chosen with probability `switch_prob`, else mixup. lambda ~
Beta(alpha, alpha) of the chosen kind. Example i is mixed with example N - 1 - i:

* mixup: x_i <- lambda x_i + (1 - lambda) x_{N-1-i};
* cutmix: a box of side sqrt(1 - lambda) of the image's, centred at a uniform random pixel and
  clipped to the image, is pasted from x_{N-1-i}; lambda becomes 1 - box area / image area.

The targets (soft, summing to 1) mix the same way: t_i <- lambda t_i + (1 - lambda) t_{N-1-i}.
The caller keys the call by its step, so a batch's mixing is a function of (seed, step); the
train step applies it after preprocessing, so it is the same for every data back end.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Mixing:
  """The mixing fields of a run (`config.mixup_alpha`, ...; 0 alphas: off)."""
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  prob: float = 1.0
  switch_prob: float = 0.5

  @property
  def enabled(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0

  def draw(self, key, height: int, width: int):
    """(lambda, use_cutmix, box (y0, y1, x0, x1)) of a batch; lambda = 1 when not mixed, and
    with cutmix already the pasted-area correction."""
    k_apply, k_switch, k_lam, k_y, k_x = jax.random.split(key, 5)
    applied = jax.random.uniform(k_apply) < self.prob
    if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
      use_cutmix = jax.random.uniform(k_switch) < self.switch_prob
    else:
      use_cutmix = jnp.asarray(self.cutmix_alpha > 0)
    alpha = jnp.where(use_cutmix, self.cutmix_alpha, self.mixup_alpha)
    lam = jax.random.beta(k_lam, alpha, alpha)
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    cy = jax.random.randint(k_y, (), 0, height)
    cx = jax.random.randint(k_x, (), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + (cut_h + 1) // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + (cut_w + 1) // 2, 0, width)
    box_lam = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
    lam = jnp.where(use_cutmix, box_lam, lam)
    return jnp.where(applied, lam, 1.0), applied & use_cutmix, (y0, y1, x0, x1)

  def __call__(self, images, targets, key):
    """(mixed images (N, H, W, C), mixed targets (N, classes)); unchanged when not enabled."""
    if not self.enabled:
      return images, targets
    lam, use_cutmix, (y0, y1, x0, x1) = self.draw(key, images.shape[1], images.shape[2])
    other = images[::-1]
    rows = jnp.arange(images.shape[1])[:, None]
    cols = jnp.arange(images.shape[2])[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    pasted = jnp.where((box & use_cutmix)[None, :, :, None], other, images)
    blended = (lam * images + (1.0 - lam) * other).astype(images.dtype)
    images = jnp.where(use_cutmix | (lam == 1.0), pasted, blended)
    targets = lam * targets + (1.0 - lam) * targets[::-1]
    return images, targets
