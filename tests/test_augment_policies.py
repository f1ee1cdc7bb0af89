"""Per-example augmentation policies: the image ops against Pillow (what timm's and torchvision's
policies run), RandAugment / TrivialAugment / random erasing as distributions, and their place in
the preprocessing: deterministic per (key, position), training only, every back end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from conftest import tiny_config
from resnet_flax import config as config_lib
from resnet_flax.data import augment, image_ops, policies
from resnet_flax.errors import ConfigError

FILL = (124, 116, 104)       # ImageNet's mean, rounded: timm's img_mean


def image(seed=0, shape=(12, 10, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def ours(op, img, *args):
  return np.asarray(op(jnp.asarray(img, jnp.float32), *args))


@pytest.mark.parametrize('op, pillow', [
    (lambda x: image_ops.solarize(x, 128.0), lambda p: ImageOps.solarize(p, 128)),
    (lambda x: image_ops.solarize(x, 77.0), lambda p: ImageOps.solarize(p, 77)),
    (lambda x: image_ops.posterize(x, 3.0), lambda p: ImageOps.posterize(p, 3)),
    (lambda x: image_ops.posterize(x, 8.0), lambda p: p),
    (image_ops.invert, ImageOps.invert),
    (image_ops.equalize, ImageOps.equalize),
    (lambda x: image_ops.rotate(x, 90.0, FILL), lambda p: p.rotate(90)),
    (lambda x: image_ops.translate_x(x, 3.0, FILL),
     lambda p: p.transform(p.size, Image.AFFINE, (1, 0, 3, 0, 1, 0), fillcolor=FILL)),
    (lambda x: image_ops.translate_y(x, -2.0, FILL),
     lambda p: p.transform(p.size, Image.AFFINE, (1, 0, 0, 0, 1, -2), fillcolor=FILL)),
])
def test_integer_ops_equal_pillow(op, pillow):
  img = image(1, (10, 10, 3))
  np.testing.assert_array_equal(ours(op, img), np.asarray(pillow(Image.fromarray(img))))


@pytest.mark.parametrize('factor', [0.1, 0.6, 1.0, 1.9])
@pytest.mark.parametrize('name', ['Color', 'Contrast', 'Brightness', 'Sharpness'])
def test_enhance_ops_are_within_one_level_of_pillow(name, factor):
  img = image(2)
  op = getattr(image_ops, name.lower())
  expected = np.asarray(getattr(ImageEnhance, name)(Image.fromarray(img)).enhance(factor))
  assert np.abs(ours(op, img, factor) - expected).max() <= 1


@pytest.mark.parametrize('op, matrix', [
    (lambda x: image_ops.shear_x(x, 0.3, FILL), (1, 0.3, 0, 0, 1, 0)),
    (lambda x: image_ops.shear_y(x, -0.25, FILL), (1, 0, 0, -0.25, 1, 0)),
    (lambda x: image_ops.translate_x(x, 2.6, FILL), (1, 0, 2.6, 0, 1, 0)),
])
def test_affine_ops_are_within_one_level_of_pillow(op, matrix):
  img = image(3)
  pil = Image.fromarray(img)
  expected = pil.transform(pil.size, Image.AFFINE, matrix, resample=Image.BILINEAR,
                           fillcolor=FILL)
  assert np.abs(ours(op, img) - np.asarray(expected)).max() <= 1


@pytest.mark.parametrize('degrees', [17.0, -30.0, 135.0])
def test_rotate_is_within_one_level_of_pillow(degrees):
  img = image(4)
  expected = Image.fromarray(img).rotate(degrees, resample=Image.BILINEAR, fillcolor=FILL)
  assert np.abs(ours(image_ops.rotate, img, degrees, FILL) - np.asarray(expected)).max() <= 1


def test_auto_contrast_is_within_one_level_of_pillow_and_keeps_flat_channels():
  img = image(5)
  img[..., 2] = 7   # a flat channel stays as it is
  got = ours(image_ops.auto_contrast, img)
  assert np.abs(got - np.asarray(ImageOps.autocontrast(Image.fromarray(img)))).max() <= 1
  np.testing.assert_array_equal(got[..., 2], 7)
  assert got[..., 0].min() == 0 and got[..., 0].max() == 255


def batch(n=16, size=24, seed=6):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)),
                     jnp.float32)


def keys(n=16, seed=0):
  return jax.random.split(jax.random.PRNGKey(seed), n)


def changed(a, b):
  return np.asarray(jnp.any(a != b, axis=(1, 2, 3)))


def test_randaugment_applies_each_op_with_probability_half():
  x = batch(64)
  one = jax.jit(jax.vmap(policies.randaugment(1, 9.0, 0.0, FILL)))(x, keys(64))
  assert 20 <= changed(one, x).sum() <= 44          # 32 expected: each op with p = 0.5
  two = jax.jit(jax.vmap(policies.randaugment(2, 9.0, 0.5, FILL)))(x, keys(64))
  assert changed(two, x).sum() > changed(one, x).sum()   # 48 expected
  for out in (one, two):
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(out, jnp.round(out))


def test_randaugment_at_magnitude_zero_changes_only_the_unsigned_ops():
  """Magnitude 0: rotations, shears, translations and colour factors of 1 are identities, so
  only autocontrast, equalize, invert, posterize (4 bits), solarize (256: no-op) can act."""
  x = batch(64)
  out = jax.jit(jax.vmap(policies.randaugment(1, 0.0, 0.0, FILL)))(x, keys(64))
  assert 0 < changed(out, x).sum() < 32


def test_trivialaugment_picks_one_op_per_image():
  x = batch(64)
  out = jax.jit(jax.vmap(policies.trivialaugment(FILL)))(x, keys(64))
  assert 40 <= changed(out, x).sum() < 64            # identity is 1 of 14 ops
  np.testing.assert_array_equal(out, jnp.round(out))


def test_random_erasing_replaces_one_box_with_noise():
  x = jnp.zeros((64, 20, 20, 3))
  out = np.asarray(jax.jit(jax.vmap(policies.random_erasing(0.5)))(x, keys(64)))
  erased = out != 0
  assert 20 <= erased.any(axis=(1, 2, 3)).sum() <= 44
  for e in erased[erased.any(axis=(1, 2, 3))]:
    rows, cols = np.nonzero(e.any(axis=-1))
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert e.all(axis=-1).sum() == height * width          # a full rectangle
    assert 0.02 * 400 * 0.7 <= height * width <= 400 / 3 * 1.3
  none = jax.jit(jax.vmap(policies.random_erasing(0.0)))(x, keys(64))
  np.testing.assert_array_equal(none, x)


def preset_config(**data):
  c = tiny_config()
  c.data.update(data)
  return c.data


def test_policies_in_preprocessing_follow_the_example_key_and_train_only():
  data = preset_config(auto_augment='randaugment', randaugment_magnitude=9.0,
                       random_erasing=0.5, random_crop_pad=0, random_flip=False)
  fn = augment.make_preprocess(data, stored_shape=(8, 8, 3))
  images = jnp.asarray(np.random.default_rng(7).integers(0, 256, (16, 8, 8, 3)), jnp.uint8)
  positions = jnp.arange(16)
  key = jax.random.PRNGKey(3)
  out = fn(images, key, positions, True)
  again = fn(images, key, positions, True)
  np.testing.assert_array_equal(out, again)
  # an example's augmentation is a function of (key, position): a permuted batch permutes it
  order = np.random.default_rng(0).permutation(16)
  np.testing.assert_array_equal(fn(images[order], key, positions[order], True), out[order])
  plain = augment.make_preprocess(preset_config(random_crop_pad=0, random_flip=False),
                                  stored_shape=(8, 8, 3))
  reference = plain(images, key, positions, True)
  assert changed(out, reference).sum() >= 8
  np.testing.assert_array_equal(fn(images, key, positions, False), reference)   # eval: none
  # a host back end (images augmented on the host) still gets the policy on the device
  host = augment.make_preprocess(data, stored_shape=(8, 8, 3), augment_on_device=False)
  np.testing.assert_array_equal(host(images, key, positions, True), out)


def test_eval_image_size_resizes_evaluation_only():
  data = preset_config(image_size=8, eval_image_size=12, random_crop_pad=0, random_flip=False)
  fn = augment.make_preprocess(data, stored_shape=(8, 8, 3))
  images = jnp.zeros((2, 8, 8, 3), jnp.uint8)
  assert fn(images, jax.random.PRNGKey(0), jnp.arange(2), True).shape == (2, 8, 8, 3)
  assert fn(images, jax.random.PRNGKey(0), jnp.arange(2), False).shape == (2, 12, 12, 3)


@pytest.mark.parametrize('field, value, message', [
    ('auto_augment', 'autoaugment', "data.auto_augment='autoaugment' is not allowed"),
    ('randaugment_num_ops', 0, 'data.randaugment_num_ops=0 must be a positive'),
    ('randaugment_magnitude', 11.0, r'data.randaugment_magnitude=11.0 must be in \[0.0, 10.0\]'),
    ('randaugment_magnitude_std', -1.0, 'data.randaugment_magnitude_std=-1.0'),
    ('random_erasing', 1.5, r'data.random_erasing=1.5 must be in \[0.0, 1.0\]'),
    ('eval_image_size', -1, 'config.data.eval_image_size=-1'),
])
def test_bad_augmentation_fields_name_the_field(field, value, message):
  c = tiny_config()
  c.data[field] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(c)
