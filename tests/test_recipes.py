"""The pieces of the modern recipes in the train step: mixup / cutmix (timm's rules), soft-target
and binary cross-entropy losses, stochastic depth keyed by (seed, step), and a short MNIST run
with SE, ResNet-D, stochastic depth, mixup and cutmix all on that still learns."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import (assert_bitwise_equal, assert_trees_differ, mnist_config, run_steps,
                      tiny_config)
from resnet_flax import config as config_lib
from resnet_flax.data.mixing import Mixing
from resnet_flax.errors import ConfigError
from resnet_flax.train import loop, losses

CLASSES = 5


def batch(n=8, size=10, seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.standard_normal((n, size, size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, CLASSES, n))
  return images, labels


def mixed(mixing, key=0, smoothing=0.0):
  images, labels = batch()
  targets = losses.soft_targets(labels, CLASSES, smoothing)
  out, out_targets = mixing(images, targets, jax.random.PRNGKey(key))
  return images, targets, out, out_targets


@pytest.mark.parametrize('mixing', [Mixing(0.2, 0.0), Mixing(0.0, 1.0), Mixing(0.1, 1.0)])
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_label_mass_sums_to_one(mixing, smoothing):
  for key in range(6):
    _, _, _, targets = mixed(mixing, key, smoothing)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    assert targets.min() >= 0


@pytest.mark.parametrize('mixing', [Mixing(0.0, 0.0), Mixing(0.4, 1.0, prob=0.0)])
def test_no_alpha_or_no_probability_leaves_the_batch(mixing):
  for key in range(4):
    images, targets, out, out_targets = mixed(mixing, key)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(out_targets, targets)


def test_mixup_is_the_convex_combination_with_the_reversed_batch():
  mixing = Mixing(0.4, 0.0)
  for key in range(4):
    images, targets, out, out_targets = mixed(mixing, key)
    lam, use_cutmix, _ = mixing.draw(jax.random.PRNGKey(key), 10, 10)
    assert not use_cutmix and 0 < lam < 1
    np.testing.assert_allclose(out, lam * images + (1 - lam) * images[::-1], rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(out_targets, lam * targets + (1 - lam) * targets[::-1],
                               rtol=1e-6)


def test_cutmix_pastes_a_box_and_weighs_the_labels_by_its_area():
  mixing = Mixing(0.0, 1.0)
  for key in range(6):
    images, targets, out, out_targets = mixed(mixing, key)
    lam, use_cutmix, (y0, y1, x0, x1) = mixing.draw(jax.random.PRNGKey(key), 10, 10)
    assert use_cutmix
    box = np.zeros((10, 10), bool)
    box[int(y0):int(y1), int(x0):int(x1)] = True
    expected = np.where(box[None, :, :, None], np.asarray(images)[::-1], np.asarray(images))
    np.testing.assert_array_equal(out, expected)
    assert float(lam) == pytest.approx(1 - box.sum() / 100)
    np.testing.assert_allclose(out_targets, lam * targets + (1 - lam) * targets[::-1],
                               rtol=1e-6)


def test_switch_probability_picks_cutmix_or_mixup():
  def kinds(switch_prob):
    mixing = Mixing(0.4, 1.0, switch_prob=switch_prob)
    return [bool(mixing.draw(jax.random.PRNGKey(k), 10, 10)[1]) for k in range(40)]
  assert all(kinds(1.0)) and not any(kinds(0.0))
  assert 8 <= sum(kinds(0.5)) <= 32
  applied = [float(Mixing(0.4, 0.0, prob=0.5).draw(jax.random.PRNGKey(k), 10, 10)[0]) < 1
             for k in range(40)]
  assert 8 <= sum(applied) <= 32


def test_binary_cross_entropy_by_hand_and_target_threshold():
  logits = jnp.asarray([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
  targets = jnp.asarray([[0.7, 0.3, 0.0], [0.0, 0.1, 0.9]])

  def by_hand(z, t):
    z, t = np.asarray(z, np.float64), np.asarray(t, np.float64)
    p = 1 / (1 + np.exp(-z))
    return np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)), axis=-1)
  np.testing.assert_allclose(losses.binary_cross_entropy(logits, targets),
                             by_hand(logits, targets), rtol=1e-6)
  # threshold 0.2 (timm's target_threshold): both classes of a 0.7 / 0.3 mixture are present
  thresholded = [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
  np.testing.assert_allclose(losses.binary_cross_entropy(logits, targets, 0.2),
                             by_hand(logits, thresholded), rtol=1e-6)
  assert losses.loss('bce', logits, targets).shape == (2,)


def test_soft_cross_entropy_of_one_hot_targets_is_the_integer_label_loss():
  logits = jnp.asarray(np.random.default_rng(1).standard_normal((6, CLASSES)), jnp.float32)
  labels = jnp.asarray([0, 1, 2, 3, 4, 0])
  for smoothing in (0.0, 0.2):
    np.testing.assert_allclose(
        losses.loss('cross_entropy', logits, losses.soft_targets(labels, CLASSES, smoothing)),
        losses.cross_entropy(logits, labels, CLASSES, smoothing), rtol=1e-6)
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, jnp.full((6, CLASSES), 0.2)),
                             optax.softmax_cross_entropy(logits, jnp.full((6, CLASSES), 0.2)),
                             rtol=1e-6)


@pytest.mark.parametrize('overrides, message', [
    ({'loss': 'focal'}, "config.loss='focal'"),
    ({'mixup_alpha': -0.1}, 'config.mixup_alpha=-0.1: must be >= 0'),
    ({'cutmix_alpha': float('inf')}, 'config.cutmix_alpha=inf'),
    ({'mixup_prob': 1.5}, 'config.mixup_prob=1.5: must be a probability'),
    ({'mixup_switch_prob': -1.0}, 'config.mixup_switch_prob=-1.0'),
    ({'bce_target_threshold': 0.2}, "applies to config.loss='bce'"),
    ({'loss': 'bce', 'bce_target_threshold': 1.0}, 'config.bce_target_threshold=1.0'),
])
def test_bad_recipe_fields_name_the_field(overrides, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(tiny_config(**overrides))


# ---------------------------------------------------------------------------------------------
# The train step.

RECIPE = {'model.drop_path_rate': 0.5, 'model.se_ratio': 0.25, 'model.shortcut': 'B',
          'model.shortcut_downsample': 'avg', 'mixup_alpha': 0.2, 'cutmix_alpha': 1.0,
          'loss': 'bce', 'label_smoothing': 0.1}


def test_recipe_steps_are_a_function_of_seed_and_step():
  """Mixing and the drop-path masks come from (seed, step): two runs are bitwise equal, and
  two steps equal one step, then one more from the first's state (a resume)."""
  devices = jax.devices()[:1]
  config = tiny_config(**RECIPE)
  a, metrics = run_steps(config, devices, 2)
  b, _ = run_steps(config, devices, 2)
  assert_bitwise_equal(a.params, b.params)
  assert all(np.isfinite(m['loss_sum']) for m in metrics)
  other, _ = run_steps(tiny_config(**{**RECIPE, 'seed': 1}), devices, 2)
  assert_trees_differ(a.params, other.params)
  no_drop, _ = run_steps(tiny_config(**{**RECIPE, 'model.drop_path_rate': 0.0}), devices, 2)
  assert_trees_differ(a.params, no_drop.params)

  from resnet_flax.train.build import build_run
  run = build_run(config, devices=devices)
  state = run.state
  for step in range(2):
    state, _ = run.p_train(state, run.par.put_batch(run.train_batches.batch(step)))
  assert_bitwise_equal(run.par.host_state(state).params, a.params)


def test_recipe_runs_under_pmap_and_jit_on_eight_devices():
  for mode in ('jit', 'pmap'):
    state, metrics = run_steps(tiny_config(parallelism=mode, **RECIPE), jax.devices()[:8], 2)
    assert all(np.isfinite(m['loss_sum']) and m['count'] == 16 for m in metrics), mode


@pytest.mark.slow
def test_learns_mnist_with_se_resnet_d_drop_path_and_mixup(tmp_path):
  """An SE-ResNet-D-8 with stochastic depth, mixup and cutmix on 6,000 MNIST digits for 300
  steps: the training loss falls and test accuracy is far above chance (10%)."""
  c = mnist_config(**{'model.stem': 'deep', 'model.shortcut': 'B',
                       'model.shortcut_downsample': 'avg', 'model.se_ratio': 0.25,
                       'model.drop_path_rate': 0.1, 'mixup_alpha': 0.2, 'cutmix_alpha': 1.0,
                       'num_train_steps': 300, 'eval_every_steps': 300,
                       'log_every_steps': 50})
  results = loop.train_and_evaluate(c, str(tmp_path))
  assert results['eval_top1'] > 0.8
  lines = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  train_losses = [line['train_loss'] for line in lines if 'train_loss' in line]
  assert train_losses[-1] < 0.7 * train_losses[0]
  assert results['steps'] == 300
