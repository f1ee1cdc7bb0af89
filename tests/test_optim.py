"""Schedules, optimizers, weight decay, EMA (resnet_flax.optim) and the losses (train.losses)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_flax import optim
from resnet_flax.train import losses


def _schedule(batch_size=256, steps_per_epoch=100, total_steps=1000, **fields):
  return optim.build_schedule(fields, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                              total_steps=total_steps)


def _values(schedule, steps):
  return np.asarray(jax.jit(schedule)(np.asarray(steps, np.int32)))


def _params():
  """A parameter tree shaped like a small flax model's, with distinct known values."""
  return {
      'conv1': {'kernel': jnp.full((3, 3, 3, 8), 1.0)},
      'norm1': {'scale': jnp.full((8,), 3.0), 'bias': jnp.full((8,), -2.0)},
      'head': {'kernel': jnp.full((8, 10), 2.0), 'bias': jnp.full((10,), 5.0)},
  }


MASK = {'conv1': {'kernel': True}, 'norm1': {'scale': False, 'bias': False},
        'head': {'kernel': True, 'bias': False}}


def _grads(seed=0):
  leaves, treedef = jax.tree.flatten(_params())
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
      treedef, [jnp.asarray(rng.normal(size=p.shape), jnp.float32) for p in leaves])


# ------------------------------------------------------------------------------------------------
# Schedules.


def test_linear_warmup_then_cosine():
  peak, warmup, total, end = 0.1, 100, 1000, 0.01
  schedule = _schedule(name='cosine', base_lr=peak, warmup_steps=warmup, warmup_type='linear',
                       warmup_init_lr=0.0, end_lr_factor=end, total_steps=total)
  steps = [0, 1, 50, 99, 100, 101, 325, 550, 999, 1000, 1500]

  def expected(s):
    if s < warmup:
      return peak * s / warmup
    progress = min((s - warmup) / (total - warmup), 1.0)
    return peak * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress)))

  np.testing.assert_allclose(_values(schedule, steps), [expected(s) for s in steps],
                             rtol=1e-5, atol=1e-8)
  # Un-jitted scalar call agrees; the middle of the decay is halfway between peak and end.
  assert float(schedule(550)) == pytest.approx(peak * (end + (1 - end) / 2), rel=1e-5)


def test_linear_warmup_from_nonzero_init():
  schedule = _schedule(name='constant', base_lr=0.5, warmup_steps=10, warmup_init_lr=0.1)
  np.testing.assert_allclose(_values(schedule, [0, 5, 10, 20]), [0.1, 0.3, 0.5, 0.5], rtol=1e-6)


def test_step_schedule_boundaries():
  schedule = _schedule(name='step', base_lr=0.1, boundaries_steps=(32000, 48000),
                       decay_factor=0.1, total_steps=64000)
  np.testing.assert_allclose(_values(schedule, [0, 31999, 32000, 47999, 48000, 63999]),
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_constant_warmup_resnet110_recipe():
  # He et al. 2015, ResNet-110 on CIFAR-10: lr 0.01 until iteration 400, then 0.1, divided by 10
  # at 32k and 48k iterations.
  schedule = _schedule(name='step', base_lr=0.1, warmup_steps=400, warmup_type='constant',
                       warmup_init_lr=0.01, boundaries_steps=[32000, 48000], total_steps=64000)
  np.testing.assert_allclose(
      _values(schedule, [0, 200, 399, 400, 401, 31999, 32000, 48000]),
      [0.01, 0.01, 0.01, 0.1, 0.1, 0.1, 0.01, 0.001], rtol=1e-6)


def test_linear_lr_scaling():
  fields = dict(name='constant', base_lr=0.1, lr_scaling='linear', base_batch_size=256)
  assert optim.peak_learning_rate(fields, 1024) == pytest.approx(0.4)
  assert optim.peak_learning_rate({**fields, 'lr_scaling': 'none'}, 1024) == pytest.approx(0.1)
  np.testing.assert_allclose(_values(_schedule(batch_size=1024, **fields), [0, 999]), [0.4, 0.4],
                             rtol=1e-6)
  np.testing.assert_allclose(_values(_schedule(batch_size=128, **fields), [0]), [0.05], rtol=1e-6)


def test_epochs_are_converted_to_steps():
  # 2.5 warmup epochs of 10 steps = 25 steps; boundaries at epochs 30 and 45.5 = steps 300, 455.
  schedule = _schedule(name='step', base_lr=0.2, warmup_epochs=2.5, boundaries_epochs=(30, 45.5),
                       steps_per_epoch=10, total_steps=600)
  np.testing.assert_allclose(
      _values(schedule, [0, 10, 24, 25, 299, 300, 454, 455]),
      [0.0, 0.2 * 10 / 25, 0.2 * 24 / 25, 0.2, 0.2, 0.02, 0.02, 0.002], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('fields, kwargs, field', [
    ({'name': 'foo'}, {}, 'schedule.name'),
    ({'warmup_steps': -1}, {}, 'schedule.warmup_steps'),
    ({'warmup_epochs': -0.5}, {}, 'schedule.warmup_epochs'),
    ({'warmup_steps': 10, 'warmup_epochs': 1.0}, {}, 'schedule.warmup_epochs'),
    ({'warmup_steps': 2000}, {}, 'total_steps'),
    ({'warmup_type': 'exponential'}, {}, 'schedule.warmup_type'),
    ({'lr_scaling': 'sqrt'}, {}, 'schedule.lr_scaling'),
    ({'base_lr': -0.1}, {}, 'schedule.base_lr'),
    ({'lr_scaling': 'linear', 'base_batch_size': 0}, {}, 'schedule.base_batch_size'),
    ({'end_lr_factor': 1.5}, {}, 'schedule.end_lr_factor'),
    ({'name': 'step', 'boundaries_steps': (600, 300)}, {}, 'schedule.boundaries_steps'),
    ({'name': 'step', 'boundaries_steps': (300, 300)}, {}, 'schedule.boundaries_steps'),
    ({'name': 'step', 'boundaries_epochs': (5, 2)}, {}, 'schedule.boundaries_epochs'),
    ({'name': 'step'}, {}, 'schedule.boundaries_steps'),
    ({'name': 'step', 'boundaries_steps': (300,), 'boundaries_epochs': (3,)}, {},
     'schedule.boundaries_epochs'),
    ({'name': 'step', 'boundaries_steps': (50,), 'warmup_steps': 100}, {},
     'schedule.boundaries_steps'),
    ({'name': 'step', 'boundaries_steps': (300,), 'decay_factor': 0.0}, {},
     'schedule.decay_factor'),
    ({'warmup_epochs': 1.0}, {'steps_per_epoch': 0}, 'steps_per_epoch'),
    ({}, {'total_steps': 0}, 'total_steps'),
    ({'learning_rate': 0.1}, {}, 'learning_rate'),
])
def test_bad_schedule_values_raise(fields, kwargs, field):
  with pytest.raises(ValueError, match=field):
    _schedule(**{**fields, **kwargs})


def test_bad_schedule_name_message():
  with pytest.raises(ValueError) as info:
    _schedule(name='foo')
  assert str(info.value) == ("schedule.name='foo' is not allowed; allowed: 'constant', 'cosine', "
                             "'step'")


# ------------------------------------------------------------------------------------------------
# Weight decay mask and L2 penalty.


def test_weight_decay_mask_excludes_bn_and_bias():
  assert optim.weight_decay_mask(_params(), 'bn_and_bias') == MASK
  assert all(jax.tree.leaves(optim.weight_decay_mask(_params(), 'none')))
  assert len(jax.tree.leaves(optim.weight_decay_mask(_params(), 'none'))) == 5
  with pytest.raises(ValueError, match='optimizer.weight_decay_exclude'):
    optim.weight_decay_mask(_params(), 'bn')


def test_l2_penalty_value_and_gradient():
  params = _params()
  # 0.5 * (216 * 1^2 + 80 * 2^2); the BN scale/bias and the head bias are excluded.
  assert float(optim.l2_penalty(params, MASK)) == pytest.approx(0.5 * (216 + 320))
  # All leaves: + 8 * 9 + 8 * 4 + 10 * 25.
  assert float(optim.l2_penalty(params, None)) == pytest.approx(0.5 * (216 + 320 + 72 + 32 + 250))
  # bfloat16 parameters are summed in float32 (216 * 1.0 exactly; bfloat16 sums would round).
  bf16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  penalty = optim.l2_penalty(bf16, MASK)
  assert penalty.dtype == jnp.float32 and float(penalty) == 268.0

  wd = 0.01
  grads = jax.grad(lambda p: wd * optim.l2_penalty(p, MASK))(params)
  expected = jax.tree.map(lambda p, m: wd * p if m else jnp.zeros_like(p), params, MASK)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-6), grads, expected)


# ------------------------------------------------------------------------------------------------
# Optimizers.


def _opt_cfg(**fields):
  return {'name': 'sgd', 'momentum': 0.9, 'weight_decay': 0.01, 'weight_decay_mode': 'l2',
          'weight_decay_exclude': 'bn_and_bias', **fields}


def _steps(tx, params, grads_list):
  state = tx.init(params)
  for grads in grads_list:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _assert_trees_close(actual, expected, **kw):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), **kw),
               actual, expected)


def test_l2_mode_sgd_step():
  lr, wd = 0.1, 0.01
  cfg = _opt_cfg(momentum=0.0, weight_decay=wd, weight_decay_mode='l2')
  params, data = _params(), _grads(1)
  mask = optim.weight_decay_mask(params, cfg['weight_decay_exclude'])

  def loss_fn(p):
    data_loss = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(data)))
    return data_loss + wd * optim.l2_penalty(p, mask)   # what the l2-mode train step adds

  tx = optim.build_optimizer(cfg, lr, params)
  new = _steps(tx, params, [jax.grad(loss_fn)(params)])
  expected = jax.tree.map(lambda w, g, m: w - lr * (g + (wd * w if m else 0.0)),
                          params, data, MASK)
  _assert_trees_close(new, expected, rtol=1e-6)
  # The masked-out leaves (BN scale -> 3 - 0.1 * g exactly) got no decay.
  np.testing.assert_allclose(new['norm1']['scale'], 3.0 - lr * data['norm1']['scale'], rtol=1e-6)
  # The optimizer itself applies no decay in 'l2' mode.
  plain = _steps(tx, params, [data])
  _assert_trees_close(plain, jax.tree.map(lambda w, g: w - lr * g, params, data), rtol=1e-6)


def test_decoupled_sgdw_two_steps_matches_numpy():
  lr, wd, mu = 0.1, 0.1, 0.9
  cfg = _opt_cfg(momentum=mu, weight_decay=wd, weight_decay_mode='decoupled')
  params, g1, g2 = _params(), _grads(1), _grads(2)
  new = _steps(optim.build_optimizer(cfg, lr), params, [g1, g2])

  def reference(w0, a, b, decayed, decay_in_momentum=False):
    w0, a, b = map(np.asarray, (w0, a, b))
    d = wd if decayed else 0.0
    if decay_in_momentum:  # SGD + L2 with momentum: the wrong answer for SGDW
      m1 = a + d * w0
      w1 = w0 - lr * m1
      return w1 - lr * (mu * m1 + b + d * w1)
    m1 = a
    w1 = w0 - lr * (m1 + d * w0)
    m2 = mu * m1 + b
    return w1 - lr * (m2 + d * w1)

  expected = jax.tree.map(reference, params, g1, g2, MASK)
  _assert_trees_close(new, expected, rtol=1e-5, atol=1e-6)
  wrong = reference(params['conv1']['kernel'], g1['conv1']['kernel'], g2['conv1']['kernel'], True,
                    decay_in_momentum=True)
  assert np.max(np.abs(np.asarray(new['conv1']['kernel']) - wrong)) > 1e-3


def test_decoupled_adamw_matches_optax():
  cfg = _opt_cfg(name='adamw', b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05,
                 weight_decay_mode='decoupled')
  schedule = optax.linear_schedule(1e-2, 1e-3, 10)
  params, grads = _params(), [_grads(i) for i in range(3)]
  ours = _steps(optim.build_optimizer(cfg, schedule, params), params, grads)
  reference = optax.adamw(schedule, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05, mask=MASK)
  _assert_trees_close(ours, _steps(reference, params, grads), rtol=1e-6)
  # And the mask matters: without it the BN scale would be decayed too.
  unmasked = _steps(optax.adamw(schedule, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05),
                    params, grads)
  assert not np.allclose(ours['norm1']['scale'], unmasked['norm1']['scale'], rtol=1e-7, atol=0)


def test_lars_builds_and_steps():
  for mode in ('l2', 'decoupled'):
    cfg = _opt_cfg(name='lars', weight_decay_mode=mode, lars_trust_coefficient=0.001)
    tx = optim.build_optimizer(cfg, 0.5)
    params = _params()
    new = jax.jit(lambda p, g: _steps(tx, p, [g, g]))(params, _grads(3))
    for before, after in zip(jax.tree.leaves(params), jax.tree.leaves(new)):
      assert np.all(np.isfinite(after)) and not np.allclose(before, after)
    # The conv kernel update is scaled by the trust ratio: tiny compared with lr * g.
    step = np.abs(np.asarray(new['conv1']['kernel']) - 1.0).max()
    assert 0 < step < 0.5 * 0.01


def test_lars_is_optax_lars_on_unrolled_parameters():
  grads_list = [_grads(i) for i in range(3)]
  for exclude, mask in (('none', True), ('bn_and_bias', MASK)):
    cfg = _opt_cfg(name='lars', weight_decay=0.01, weight_decay_mode='decoupled',
                   weight_decay_exclude=exclude, lars_trust_coefficient=0.002)
    reference = optax.lars(0.3, weight_decay=0.01, weight_decay_mask=mask,
                           trust_coefficient=0.002, trust_ratio_mask=mask, momentum=0.9)
    _assert_trees_close(_steps(optim.build_optimizer(cfg, 0.3), _params(), grads_list),
                        _steps(reference, _params(), grads_list), rtol=1e-6)


@pytest.mark.parametrize('name', ['sgd', 'lars', 'lamb'])
def test_scanned_units_are_decayed_and_trust_scaled_as_unrolled_ones(name):
  """A scanned run stacks its units' parameters: BatchNorm scales get 2 dimensions and the
  stack one norm. The mask and the trust ratios must see each unit, as unrolled."""
  from resnet_flax.models import create_model, model_fields, scan
  fields = {**model_fields('resnet20'), 'width': 4}
  scanned = create_model({**fields, 'scan_units': 'on'})
  unrolled = create_model({**fields, 'scan_units': 'off'})
  x = jnp.zeros((1, 16, 16, 3))
  params = jax.device_get(scanned.init(jax.random.PRNGKey(0), x, train=False)['params'])
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  shapes = jax.eval_shape(lambda: unrolled.init(jax.random.PRNGKey(0), x, train=False))['params']
  flat_params, flat_grads = scan.restack(params, shapes), scan.restack(grads, shapes)
  mask = optim.weight_decay_mask(params, 'bn_and_bias')
  assert not mask['stage1_units2to3']['norm1']['scale']          # (2, 4): one scale per unit
  assert mask['stage1_units2to3']['conv1']['kernel']
  cfg = _opt_cfg(name=name, weight_decay=0.05, weight_decay_mode='decoupled',
                 weight_decay_exclude='bn_and_bias', lars_trust_coefficient=0.01)
  tx = optim.build_optimizer(cfg, 0.1)
  stacked = _steps(tx, params, [grads, grads])
  unstacked = _steps(tx, flat_params, [flat_grads, flat_grads])
  _assert_trees_close(scan.restack(stacked, shapes), unstacked, rtol=1e-6, atol=1e-7)


def test_lamb_step_by_hand():
  """One LAMB step: Adam's first update g / (|g| + eps) plus wd * w, times the leaf's trust
  ratio ||w|| / ||update||; the excluded leaves (BN, biases) take Adam's step alone."""
  lr, wd, eps = 0.01, 0.02, 1e-6
  cfg = _opt_cfg(name='lamb', eps=eps, weight_decay=wd, weight_decay_mode='decoupled')
  params, grads = _params(), _grads(4)
  new = _steps(optim.build_optimizer(cfg, lr, params), params, [grads])

  def reference(w, g, decayed):
    w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
    u = g / (np.abs(g) + eps)
    if not decayed:
      return w - lr * u
    u = u + wd * w
    return w - lr * np.linalg.norm(w) / np.linalg.norm(u) * u
  _assert_trees_close(new, jax.tree.map(reference, params, grads, MASK), rtol=1e-5, atol=1e-7)
  # without exclusions it is optax.lamb
  every = _opt_cfg(name='lamb', eps=eps, weight_decay=wd, weight_decay_mode='decoupled',
                   weight_decay_exclude='none')
  grads_list = [_grads(i) for i in range(3)]
  _assert_trees_close(_steps(optim.build_optimizer(every, lr), params, grads_list),
                      _steps(optax.lamb(lr, eps=eps, weight_decay=wd), params, grads_list),
                      rtol=1e-6)


def test_grad_clipping_to_global_norm():
  cfg = _opt_cfg(momentum=0.0, weight_decay=0.0, grad_clip_norm=2.0)
  params = _params()
  huge = jax.tree.map(lambda p: jnp.full_like(p, 1e6), params)
  tx = optim.build_optimizer(cfg, 1.0)
  updates, _ = tx.update(huge, tx.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(2.0, rel=1e-5)
  # Direction kept: every component equal.
  leaves = np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)])
  np.testing.assert_allclose(leaves, leaves[0], rtol=1e-6)
  # Small gradients pass through untouched.
  small = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  updates, _ = tx.update(small, tx.init(params), params)
  _assert_trees_close(updates, jax.tree.map(lambda g: -g, small), rtol=1e-6)


@pytest.mark.parametrize('fields, message', [
    ({'name': 'adam'},
     "optimizer.name='adam' is not allowed; allowed: 'sgd', 'adamw', 'lars', 'lamb'"),
    ({'momentum': 1.0}, 'optimizer.momentum'),
    ({'momentum': -0.1}, 'optimizer.momentum'),
    ({'weight_decay': -1e-4}, 'optimizer.weight_decay'),
    ({'weight_decay_mode': 'coupled'}, 'optimizer.weight_decay_mode'),
    ({'weight_decay_exclude': 'bias'}, 'optimizer.weight_decay_exclude'),
    ({'grad_clip_norm': -1.0}, 'optimizer.grad_clip_norm'),
    ({'nesterov': 'yes'}, 'optimizer.nesterov'),
    ({'b2': 1.0}, 'optimizer.b2'),
    ({'lars_trust_coefficient': 0.0}, 'optimizer.lars_trust_coefficient'),
    ({'beta1': 0.9}, 'beta1'),
])
def test_bad_optimizer_values_raise(fields, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(')) as info:
    optim.build_optimizer(_opt_cfg(**fields), 0.1)
  if fields == {'name': 'adam'}:
    assert str(info.value) == message


# ------------------------------------------------------------------------------------------------
# Losses and metrics.


def test_label_smoothing_cross_entropy():
  logits = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
  labels = jnp.array([2, 0])
  ls, k = 0.3, 3

  def by_hand(row, label):
    row = np.asarray(row, np.float64)
    log_p = row - np.log(np.sum(np.exp(row)))
    target = np.full(k, ls / k)
    target[label] += 1 - ls
    return -np.sum(target * log_p)

  loss = losses.cross_entropy(logits, labels, k, label_smoothing=ls)
  assert loss.dtype == jnp.float32 and loss.shape == (2,)
  np.testing.assert_allclose(loss, [by_hand(logits[0], 2), by_hand(logits[1], 0)], rtol=1e-6)
  # First row: target (0.1, 0.1, 0.8), log-softmax (-2.4076, -1.4076, -0.4076).
  assert float(loss[0]) == pytest.approx(0.1 * 2.40760596 + 0.1 * 1.40760596 + 0.8 * 0.40760596,
                                         rel=1e-6)


def test_cross_entropy_without_smoothing_matches_optax():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 10)) * 3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=6))
  np.testing.assert_allclose(
      losses.cross_entropy(logits, labels, 10),
      optax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6)
  # bfloat16 logits give a float32 loss.
  assert losses.cross_entropy(logits.astype(jnp.bfloat16), labels, 10).dtype == jnp.float32
  with pytest.raises(ValueError, match='num_classes'):
    losses.cross_entropy(logits, labels, 5)


def test_topk_correct():
  logits = jnp.array([
      [0.1, 0.5, 0.3, 0.2],   # order 1, 2, 3, 0
      [0.9, 0.1, 0.0, 0.8],   # order 0, 3, 1, 2
      [0.1, 0.5, 0.3, 0.2],
      [0.0, 0.0, 1.0, 0.0],   # ties broken by index: order 2, 0, 1, 3
  ])
  labels = jnp.array([1, 3, 0, 3])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 1), [1, 0, 0, 0])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 2), [1, 1, 0, 0])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 3), [1, 1, 0, 0])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 4), [1, 1, 1, 1])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 100), [1, 1, 1, 1])
  assert losses.topk_correct(logits, labels, 1).dtype == jnp.float32
  # Constant logits (a dead model) credit only the first class, as argmax does.
  const = jnp.zeros((10, 10))
  np.testing.assert_array_equal(losses.topk_correct(const, jnp.arange(10), 1), [1] + [0] * 9)
  np.testing.assert_array_equal(losses.topk_correct(const, jnp.arange(10), 5), [1] * 5 + [0] * 5)
  # A diverged (NaN) row is never counted correct.
  nan_row = jnp.full((1, 4), jnp.nan)
  np.testing.assert_array_equal(losses.topk_correct(nan_row, jnp.array([0]), 5), [0])


# ------------------------------------------------------------------------------------------------
# EMA.


def test_ema_update():
  decay, n, v = 0.9, 7, 3.0
  ema = {'w': jnp.zeros((2, 3)), 'b': jnp.zeros((3,), jnp.bfloat16)}
  new = {'w': jnp.full((2, 3), v), 'b': jnp.full((3,), v, jnp.bfloat16)}
  update = jax.jit(optim.ema_update)
  for _ in range(n):
    ema = update(ema, new, decay)
  assert ema['w'].dtype == jnp.float32 and ema['b'].dtype == jnp.bfloat16
  np.testing.assert_allclose(ema['w'], v * (1 - decay ** n), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ema['b'], np.float32), v * (1 - decay ** n), rtol=1e-2)
