"""`model.conv_impl`: the fast formulations equal `lax.conv_general_dilated` in outputs and
gradients for every convolution the zoo uses (collected from the models themselves), whole
models give the same logits and gradients, and a trained checkpoint evaluates the same with
either implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from resnet_flax.models import conv, create_model, init_variables, model_fields
from resnet_flax.train import loop

# one model of each structure: stems (cifar, imagenet, deep, conv pool), shortcuts (A, B, avg),
# versions, groups, SE, the Keras flavour (its paddings and V2 strides); widths cut to 8
ZOO = [('resnet20', {}), ('resnet18', {'width': 8}), ('resnet50', {'width': 8}),
       ('resnet50', {'width': 8, 'version': 'v1'}), ('resnet50_v2', {'width': 8}),
       ('resnext50_32x4d', {'width': 32}), ('keras_resnet50', {'width': 8}),
       ('keras_resnet50v2', {'width': 8}), ('resnet50d', {'width': 8}),
       ('resnetrs50', {'width': 8}), ('seresnet50', {'width': 8}),
       ('preact_resnet164', {}), ('plain20', {})]


def _zoo_convs():
  """{(kernel h, kernel w, strides, padding, groups, has-bias-free input channels)} of every
  convolution of the ZOO models' forward pass at 32 and 33 px."""
  found = set()
  for name, overrides in ZOO:
    model = create_model({**model_fields(name), **overrides, 'conv_impl': 'xla',
                          'scan_units': 'off'})
    for size in (32, 33):
      x = jnp.zeros((1, size, size, 3))
      variables = jax.eval_shape(lambda v, model=model: model.init(jax.random.PRNGKey(0), v,
                                                                   train=False), x)
      jaxpr = jax.make_jaxpr(lambda v, x, model=model: model.apply(v, x, train=False))(
          variables, x)
      for eqn in jaxpr.jaxpr.eqns:
        if eqn.primitive.name == 'conv_general_dilated':
          kernel = eqn.invars[1].aval.shape
          found.add((kernel[0], kernel[1], tuple(eqn.params['window_strides']),
                     tuple(tuple(p) for p in eqn.params['padding']),
                     eqn.params['feature_group_count'], eqn.invars[0].aval.shape[1] % 2))
  return sorted(found)


ZOO_CONVS = _zoo_convs()
# beyond the zoo: flax's 'SAME' on even inputs (asymmetric), 'VALID', 5x5, a grouped 1x1
OTHER_CONVS = [(3, 3, (2, 2), ((0, 1), (0, 1)), 1, 0), (3, 3, (1, 1), ((0, 0), (0, 0)), 1, 1),
               (5, 5, (1, 1), ((2, 2), (2, 2)), 1, 1), (3, 3, (2, 2), ((0, 1), (0, 1)), 4, 0),
               (1, 1, (2, 2), ((0, 0), (0, 0)), 4, 1), (3, 3, (1, 1), ((2, 0), (0, 2)), 1, 0)]


def test_the_zoo_uses_every_kind_of_conv():
  kinds = {(kh, s, g > 1) for kh, _, s, _, g, _ in ZOO_CONVS}
  assert {(1, (1, 1), False), (1, (2, 2), False), (3, (1, 1), False), (3, (2, 2), False),
          (7, (2, 2), False), (3, (1, 1), True), (3, (2, 2), True)} <= kinds


def _rel(a, b):
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


@pytest.mark.parametrize('kh, kw, strides, padding, groups, odd', ZOO_CONVS + OTHER_CONVS)
def test_fast_conv_equals_lax_in_outputs_and_gradients(kh, kw, strides, padding, groups, odd):
  cin, cout = 4 * groups, 2 * groups if groups > 1 else 6
  size = 9 if odd else 8
  keys = jax.random.split(jax.random.PRNGKey(kh * 7 + strides[0] + groups), 3)
  x = jax.random.normal(keys[0], (3, size, size, cin))
  kernel = jax.random.normal(keys[1], (kh, kw, cin // groups, cout))

  def apply(fn):
    def out(x, k):
      return fn(x, k, strides, padding, dimension_numbers=conv.DIMENSION_NUMBERS,
                feature_group_count=groups)
    y = jax.jit(out)(x, kernel)
    dy = jax.random.normal(keys[2], y.shape)
    grads = jax.jit(jax.grad(lambda x, k: jnp.sum(out(x, k) * dy), argnums=(0, 1)))(x, kernel)
    return y, grads

  y, (dx, dw) = apply(conv.conv)
  y_ref, (dx_ref, dw_ref) = apply(jax.lax.conv_general_dilated)
  assert y.shape == y_ref.shape
  assert _rel(y, y_ref) < 1e-5 and _rel(dx, dx_ref) < 1e-5 and _rel(dw, dw_ref) < 1e-5


def test_fast_conv_inside_a_scan_equals_lax():
  """The scanned stage's case: a stride-1 conv in a loop over stacked kernels."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
  kernels = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4, 4)) * 0.3

  def loss(fn, x, ks):
    def body(c, k):
      return jax.nn.relu(fn(c, k, (1, 1), ((1, 1), (1, 1)),
                            dimension_numbers=conv.DIMENSION_NUMBERS)), None
    return jnp.sum(jax.lax.scan(body, x, ks)[0] ** 2)
  got = jax.jit(jax.grad(lambda x, k: loss(conv.conv, x, k), argnums=(0, 1)))(x, kernels)
  ref = jax.jit(jax.grad(lambda x, k: loss(jax.lax.conv_general_dilated, x, k),
                         argnums=(0, 1)))(x, kernels)
  for a, b in zip(got, ref):
    assert _rel(a, b) < 1e-5


def test_the_fast_conv_falls_back_to_lax_outside_its_cases():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 9, 9))             # NCHW
  kernel = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 3, 3))        # OIHW
  np.testing.assert_array_equal(
      conv.conv(x, kernel, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=None),
      jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', rhs_dilation=(2, 2)))


X_TRANSPOSE = 'dimensions={3,1,2,0}'    # NHWC -> CHWN: the input's transpose of a weight gradient


def _input_transposes(compiled_text: str) -> tuple[int, int]:
  """(fused computations that transpose a weight gradient's input and compute a ReLU on the
  way, all such transposes in the module)."""
  bodies = compiled_text.split('\n\n')
  return (sum(1 for b in bodies if X_TRANSPOSE in b and ' maximum(' in b),
          compiled_text.count(X_TRANSPOSE))


def test_the_weight_gradient_transposes_the_stored_input_instead_of_recomputing_it():
  """A 3x3 weight gradient transposes the conv's input; left to itself, XLA's CPU fusion
  recomputes the element-wise chain that produced that input (BatchNorm, ReLU, the residual
  adds of the units before) inside the transpose, in transposed order: 22 % of a ResNet-20
  train step (docs/BENCHMARKS.md). With 'fast' convs no such transpose computes a ReLU (every
  one of them did before)."""
  model = create_model({**model_fields('resnet20'), 'depth': 8, 'conv_impl': 'fast'})
  x = jnp.ones((8, 16, 16, 3))
  variables = init_variables(model, x)

  def loss(params):
    out, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    return jnp.sum(out ** 2)

  recomputing, transposes = _input_transposes(
      jax.jit(jax.grad(loss)).lower(variables['params']).compile().as_text())
  assert transposes >= 4 and recomputing == 0     # one per 3x3 stride-1 conv of the units


def test_gradients_of_gradients_equal_lax():
  """A gradient penalty differentiates the backward pass of the fast convs too."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
  k1, k2 = (jnp.asarray(rng.standard_normal((3, 3, 4, 4)) * 0.3, jnp.float32) for _ in range(2))

  def penalty(ks, conv_fn):
    def loss(ks):
      h = jax.nn.relu(conv_fn(x, ks[0], (1, 1), 'SAME', dimension_numbers=conv.DIMENSION_NUMBERS))
      return jnp.sum(jnp.tanh(conv_fn(h, ks[1], (1, 1), 'SAME',
                                      dimension_numbers=conv.DIMENSION_NUMBERS)))
    return sum(jnp.sum(g ** 2) for g in jax.grad(loss)(ks))

  got = jax.grad(penalty)((k1, k2), conv.conv)
  ref = jax.grad(penalty)((k1, k2), jax.lax.conv_general_dilated)
  for a, b in zip(got, ref):
    assert _rel(a, b) < 1e-5


def test_auto_is_fast_on_cpu_only():
  assert conv.resolve('auto', 'cpu') == 'fast'
  assert conv.resolve('auto', 'gpu') == conv.resolve('auto', 'tpu') == 'xla'
  assert conv.resolve('xla', 'cpu') == 'xla' and conv.resolve('fast', 'gpu') == 'fast'


def _dot_count(name, impl, train):
  model = create_model({**model_fields(name), 'width': 8, **SHORT, 'conv_impl': impl})
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(lambda: init_variables(model, x))
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=train, mutable=['batch_stats']))(
      variables)
  return str(jaxpr).count('dot_general')


def test_auto_evaluates_keras_flavour_on_xlas_convs():
  """On CPU 'auto' takes the 1x1 convs as dots in training and in a torchvision-flavour
  network's evaluation, but as XLA's convolutions in the evaluation of Keras' flavour (the
  head's dot is the only one left there); an explicit 'fast' keeps the dots everywhere."""
  if jax.default_backend() != 'cpu':
    pytest.skip("'auto' is XLA's convolution for everything off the CPU")
  assert conv.resolve('auto', 'cpu', 'keras') == 'fast-train'
  assert conv.resolve('auto', 'gpu', 'keras') == 'xla'
  assert conv.resolve('fast', 'cpu', 'keras') == 'fast'
  assert _dot_count('keras_resnet50', 'auto', train=False) == 1
  assert _dot_count('keras_resnet50', 'auto', train=True) > 10
  assert _dot_count('keras_resnet50', 'fast', train=False) > 10
  assert _dot_count('resnet50', 'fast', train=False) > 10


def _tree_rel(a, b):
  pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return np.sqrt(sum(float(jnp.sum((x - y) ** 2)) for x, y in pairs) /
                 sum(float(jnp.sum(y ** 2)) for _, y in pairs))


# ImageNet-family nets at width 8 (ResNeXt: 32) with one unit a stage but stage 2's two: every
# conv kind and shortcut of the full depth, a third of its compile time
SHORT = {'stage_sizes': (1, 2, 1, 1)}


@pytest.mark.parametrize('name, overrides, modes', [
    ('resnet50', {'width': 8, **SHORT}, (False,)),
    ('resnext50_32x4d', {'width': 32, **SHORT}, (False,)),
    ('keras_resnet50v2', {'width': 8, **SHORT}, (False,)),
    ('resnet20', {'scan_units': 'on'}, (False, True))])
def test_models_give_the_same_logits_and_gradients(name, overrides, modes):
  """Logits and parameter gradients within 2e-5, in eval mode with the running statistics of a
  real batch. A whole network is held to twice the per-conv bound: float32 round-off adds up
  over its layers (ResNet-50 at width 8, measured on an AVX2 machine: its logits differ from a
  float64 evaluation by 2.3e-5 with XLA's convs and by 2.0e-5 with the fast ones, and from each
  other by 1.1e-5), so between two float32 implementations 1e-5 is below the noise; the
  shortened nets here (`SHORT`) add up less of it. Train mode is compared where BatchNorm is
  well conditioned (CIFAR nets: 8x8 maps in the last stage); in an ImageNet net at 32 px the
  last stages normalise over 4 values per channel, which turns float32 round-off into 1e-3
  differences for XLA's own convs alone (the per-conv tests above cover those convs in both
  directions)."""
  fields = {**model_fields(name), **overrides}
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  variables = init_variables(create_model({**fields, 'conv_impl': 'xla'}), x[:1])
  calibrating = create_model({**fields, 'conv_impl': 'xla', 'bn_momentum': 0.0})
  _, calibrated = jax.jit(lambda v, batch: calibrating.apply(v, batch, train=True,
                                                             mutable=['batch_stats']))(
      variables, jax.random.normal(jax.random.PRNGKey(2), (64, 32, 32, 3)))
  variables = {'params': variables['params'], 'batch_stats': calibrated['batch_stats']}
  out = {}
  for impl in ('xla', 'fast'):
    model = create_model({**fields, 'conv_impl': impl})

    def loss(p, x, train, model=model):
      logits = model.apply({**variables, 'params': p}, x, train=train,
                           mutable=['batch_stats'] if train else False)
      logits = logits[0] if train else logits
      return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), logits
    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
    out[impl] = [grad(variables['params'], x, train) for train in modes]
  for i, _ in enumerate(modes):
    (_, fast_logits), fast_grads = out['fast'][i]
    (_, xla_logits), xla_grads = out['xla'][i]
    assert _rel(fast_logits, xla_logits) < 2e-5
    assert _tree_rel(fast_grads, xla_grads) < 2e-5


def test_a_checkpoint_evaluates_the_same_with_either_implementation(tmp_path):
  """Trained with XLA's convs (projection shortcuts: 1x1 strided convs too), evaluated with
  each implementation from the same checkpoint."""
  config = tiny_config(**{'model.conv_impl': 'xla', 'model.shortcut': 'B', 'num_train_steps': 4})
  trained = loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  results = {}
  for impl in ('xla', 'fast'):
    step, results[impl] = loop.evaluate_checkpoint(
        tiny_config(**{'model.conv_impl': impl, 'model.shortcut': 'B', 'num_train_steps': 4}),
        str(tmp_path), devices=jax.devices()[:1])
    assert step == 4
  assert results['xla']['eval_loss'] == pytest.approx(trained['eval_loss'], rel=1e-6)
  assert results['fast']['eval_top1'] == results['xla']['eval_top1']
  assert results['fast']['eval_loss'] == pytest.approx(results['xla']['eval_loss'], rel=1e-5)
