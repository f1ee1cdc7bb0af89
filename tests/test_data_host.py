"""Host-side preprocessing without TensorFlow (`resnet_flax.data.host`, what the Grain back end
runs): the presets' windows and pixels, the eval preprocessing inference shares, and the OpenCV
image library (or its one-line error where OpenCV is absent)."""

import io
import importlib.util

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from resnet_flax.data import host
from resnet_flax.data.info import DataInfo
from resnet_flax.errors import ConfigError

HAVE_OPENCV = importlib.util.find_spec('cv2') is not None


def _png(array) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, 'PNG')
  return buffer.getvalue()


def test_imagenet_windows_follow_the_inception_distribution():
  rng = np.random.default_rng(0)
  windows = [host.random_window(300, 400, rng, 224) for _ in range(2000)]
  area = np.array([h * w / (300 * 400) for _, _, h, w in windows])
  aspect = np.array([w / h for _, _, h, w in windows])
  assert area.min() >= 0.08 - 1e-3 and area.max() <= 1.0
  assert aspect.min() >= 0.74 and aspect.max() <= 1.35
  assert all(0 <= y and y + h <= 300 and 0 <= x and x + w <= 400 for y, x, h, w in windows)
  assert 0.3 < np.median(area) < 0.7 and area.min() < 0.15 and area.max() > 0.9
  # no window fits a 1-pixel-high strip: the eval center crop instead
  assert host.random_window(1, 50, rng, 8) == host.center_window(1, 50, 8)
  ramp = np.tile(np.arange(0, 240, 3, dtype=np.uint8)[None, :, None], (60, 1, 3))
  fn = host.make('imagenet', size=24, train=True)
  outs = [fn(_png(ramp), (7, 0, k)) for k in range(8)]
  assert all(o.shape == (24, 24, 3) and o.dtype == np.uint8 for o in outs)
  assert len({o.tobytes() for o in outs}) == 8
  assert fn(_png(ramp), (7, 0, 3)).tobytes() == outs[3].tobytes()
  flipped = [o for o in outs if int(o[:, 0, 0].mean()) > int(o[:, -1, 0].mean())]
  assert 0 < len(flipped) < 8                          # the flip is random


@pytest.mark.parametrize('library', [
    'pillow', pytest.param('opencv', marks=pytest.mark.skipif(
        not HAVE_OPENCV, reason='needs OpenCV (opencv-python-headless)'))])
def test_eval_preprocessing_is_what_inference_does(library, tmp_path):
  """Prediction prepares an image (bytes, or its file) as the run's host back end evaluated it,
  with the run's image library."""
  from resnet_flax.inference.predictor import prepare_image
  config = tiny_config().data
  config.image_library = library
  rng = np.random.default_rng(1)
  for preset, size in (('imagenet', 24), ('mnist', 32), ('cifar', 16), ('none', 20)):
    config.preprocess = preset
    fn = host.make(preset, size=size, train=False, library=library)
    for shape in ((37, 53, 3), (61, 29, 3), (24, 24, 3), (60, 45, 3)):
      encoded = _png(rng.integers(0, 256, shape, dtype=np.uint8))
      ours = fn(encoded, ())
      (tmp_path / 'image.png').write_bytes(encoded)
      for image in (encoded, str(tmp_path / 'image.png')):
        reference = prepare_image(image, config, DataInfo((size, size, 3), True))
        assert ours.tobytes() == reference.tobytes(), (preset, shape)


def test_cifar_and_mnist_presets():
  image = np.random.default_rng(0).integers(1, 256, (32, 32, 3), dtype=np.uint8)
  assert host.make('cifar', size=32, train=False)(_png(image), ()).tobytes() == image.tobytes()
  crops = [host.make('cifar', size=32, train=True)(_png(image), (k,)) for k in range(8)]
  assert any((c == 0).all(axis=-1).any() for c in crops)          # a window hits the padding
  assert all(c.shape == (32, 32, 3) for c in crops)
  grey = np.full((28, 28), 77, np.uint8)
  mnist = host.make('mnist', size=32, train=True)(_png(grey), (0,))
  assert mnist.shape == (32, 32, 3) and (mnist[2:30, 2:30] == 77).all() and mnist[:2].max() == 0


@pytest.mark.skipif(HAVE_OPENCV, reason='OpenCV is installed')
def test_opencv_library_without_opencv_is_one_line():
  with pytest.raises(ConfigError, match=r"^data.image_library='opencv' needs OpenCV \(pip "
                                        r"install opencv-python-headless\); or set "
                                        r"data.image_library='pillow'$"):
    host.make('imagenet', size=16, train=True, library='opencv')


@pytest.mark.skipif(not HAVE_OPENCV, reason='needs OpenCV (opencv-python-headless)')
def test_opencv_library_decodes_crops_and_resizes_like_pillow():
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
  encoded = _png(image)
  assert host.opencv_decode(encoded).tobytes() == image.tobytes()       # RGB, lossless
  with pytest.raises(host.BadImage, match='not an image OpenCV can decode'):
    host.opencv_decode(b'\x89PNG truncated')
  # a smooth image: the two libraries' resizes agree to a few levels
  ramp = np.broadcast_to(np.linspace(0, 255, 56)[None, :, None], (40, 56, 3)).astype(np.uint8)
  for train in (False, True):
    pillow = host.make('imagenet', size=24, train=train)
    opencv = host.make('imagenet', size=24, train=train, library='opencv')
    for k in range(4):
      a, b = pillow(_png(ramp), (1, k)), opencv(_png(ramp), (1, k))
      assert a.shape == b.shape == (24, 24, 3) and b.dtype == np.uint8
      assert np.abs(a.astype(int) - b.astype(int)).mean() < 3, (train, k)   # the same window
      assert opencv(_png(ramp), (1, k)).tobytes() == b.tobytes()            # keyed
  cifar = host.make('cifar', size=40, train=False, library='opencv')
  assert cifar(_png(image[:, :40]), ()).tobytes() == image[:, :40].tobytes()
  # a JPEG whose EXIF says 'rotate 90': both libraries keep the stored orientation
  exif = Image.Exif()
  exif[0x0112] = 6
  jpeg = io.BytesIO()
  Image.fromarray(image).save(jpeg, 'JPEG', exif=exif.tobytes(), quality=95)
  pillow_pixels = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())).convert('RGB'))
  opencv_pixels = host.opencv_decode(jpeg.getvalue())
  assert opencv_pixels.shape == pillow_pixels.shape == (40, 56, 3)
  assert np.abs(opencv_pixels.astype(int) - pillow_pixels.astype(int)).max() <= 2
