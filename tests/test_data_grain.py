"""The Grain back end (`resnet_flax.data.grain`): determinism, resume, process shares, eval
coverage, worker counts, bad data, the config's choices, a training run that imports no
TensorFlow, workers that exit with their process, real JPEGs. (The ArrayRecord files it reads:
test_data_arrayrecord; the host presets: test_data_host.)"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('grain')
from PIL import Image  # noqa: E402

from conftest import REPO, subprocess_env, tiny_config, unpacked_shared  # noqa: E402
from grain_trees import CLASSES, assert_same, make_tree, source  # noqa: E402
from resnet_flax import data as data_lib  # noqa: E402
from resnet_flax.data.grain.source import GrainSource  # noqa: E402
from resnet_flax.data.info import DataInfo  # noqa: E402
from resnet_flax.errors import ConfigError, DataError  # noqa: E402


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  return make_tree(tmp_path_factory.mktemp('tree') / 'images')


def test_same_seed_same_batches_other_seed_other_order(tree):
  tb = source(tree).train_batches(8, seed=0)
  assert tb.steps_per_epoch == 27 // 8 == 3
  run = [tb.batch(k) for k in range(7)]
  for b in run:
    assert b['image'].shape == (8, 12, 12, 3) and b['image'].dtype == np.uint8
    assert b['label'].dtype == np.int32 and b['position'].tolist() == list(range(8))
    # the class colour (red channel) survives the crop, except where the zero padding shows
    red = b['image'][..., 0]
    for image, label in zip(red, b['label']):
      assert abs(np.median(image) - (40 + 80 * label)) <= 3
  again = source(tree).train_batches(8, seed=0)
  for k in range(7):
    assert_same(again.batch(k), run[k])
  epoch0 = np.concatenate([tb.indices(k) for k in range(3)])
  assert len(set(epoch0.tolist())) == 24 and set(epoch0.tolist()) <= set(range(27))
  epoch1 = np.concatenate([tb.indices(k) for k in range(3, 6)])
  assert not np.array_equal(epoch0, epoch1)                     # reshuffled per epoch
  other = source(tree).train_batches(8, seed=1)
  assert not np.array_equal(np.concatenate([other.indices(k) for k in range(3)]), epoch0)
  assert not np.array_equal(other.batch(0)['image'], run[0]['image'])


def test_batch_k_after_a_restart_equals_the_uninterrupted_stream(tree):
  tb = source(tree).train_batches(8, seed=3)
  run = [tb.batch(k) for k in range(10)]
  for k in (7, 2, 8, 3):              # a fresh stream opened at step k (a resume)
    fresh = source(tree).train_batches(8, seed=3)
    assert_same(fresh.batch(k), run[k])
    assert_same(fresh.batch(k + 1), run[k + 1])           # and on, consecutively
  assert_same(tb.batch(4), run[4])    # backwards on the same object, then on from there
  assert_same(tb.batch(5), run[5])


def test_process_shares_are_disjoint_cover_and_form_the_global_batch(tree):
  one = source(tree).train_batches(12, seed=0)
  two = [source(tree).train_batches(12, seed=0, process_index=p, process_count=2)
         for p in range(2)]
  assert one.steps_per_epoch == two[0].steps_per_epoch == two[1].steps_per_epoch == 2
  for k in range(5):
    whole, halves = one.batch(k), [t.batch(k) for t in two]
    assert halves[1]['position'].tolist() == list(range(6, 12))
    for key in ('image', 'label', 'position'):
      joined = np.concatenate([h[key] for h in halves])
      assert joined.tobytes() == whole[key].tobytes(), (k, key)   # bit for bit
    shares = [set(t.indices(k).tolist()) for t in two]
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(one.indices(k).tolist())
  epoch = [set(np.concatenate([t.indices(k) for k in range(2)]).tolist()) for t in two]
  assert not epoch[0] & epoch[1] and len(epoch[0] | epoch[1]) == 24


def test_eval_counts_every_example_exactly_once(tree):
  val = source(tree, 'val', preprocess='imagenet', image_size=8)     # 15 examples
  want = sorted([0] * 5 + [1] * 5 + [2] * 5)
  for count, batch in ((1, 4), (2, 4), (3, 6)):
    labels, pixels = [], []
    for p in range(count):
      batches = list(val.eval_batches(batch, p, count))
      assert len(batches) == -(-15 // batch)             # the same number on every process
      for b in batches:
        local = batch // count
        assert b['position'].tolist() == list(range(p * local, (p + 1) * local))
        keep = b['mask'] > 0
        labels.extend(b['label'][keep].tolist())
        pixels.extend(img.tobytes() for img in b['image'][keep])
        assert not b['image'][~keep].any()
    assert sorted(labels) == want and len(set(pixels)) == 15, count


def test_zero_and_two_workers_give_the_same_batches(tree):
  in_process = source(tree, worker_count=0).train_batches(8, seed=5)
  workers = source(tree, worker_count=2, worker_buffer_size=1).train_batches(8, seed=5)
  try:
    for k in range(5):
      assert_same(workers.batch(k), in_process.batch(k))
    assert_same(workers.batch(1), in_process.batch(1))         # a reopened stream, too
  finally:
    workers.close()
  evals = [list(source(tree, 'val', worker_count=w).eval_batches(4)) for w in (0, 2)]
  assert len(evals[0]) == len(evals[1]) == 4
  for a, b in zip(*evals):
    assert_same(a, b, ('image', 'label', 'mask', 'position'))


# --- bad data -----------------------------------------------------------------------------

def test_bad_files_name_the_file_or_are_skipped(tmp_path, capsys):
  root = make_tree(tmp_path / 'tree')
  bad = os.path.join(root, 'train', 'bee', '03.png')
  with open(bad, 'wb') as f:
    f.write(b'\x89PNG truncated, not an image')
  for workers in (0, 2):
    with pytest.raises(DataError, match=rf'^{re.escape(bad)}: cannot be decoded as an image '
                                        r'.*on_bad_image=skip'):
      tb = source(root, worker_count=workers).train_batches(27, seed=0)
      tb.batch(0)
  with pytest.raises(DataError, match=rf'{re.escape(bad)}: cannot be decoded'):
    list(source(root).eval_batches(9))
  capsys.readouterr()
  skipping = source(root, on_bad='skip')
  assert skipping.num_examples == 26
  assert 'skipped 1 unreadable image' in capsys.readouterr().err
  labels = np.concatenate([b['label'][b['mask'] > 0] for b in skipping.eval_batches(8)])
  assert sorted(labels.tolist()) == [0] * 9 + [1] * 8 + [2] * 9
  os.remove(bad)
  Image.new('RGB', (13, 12)).save(os.path.join(root, 'train', 'cat', '99.png'))
  with pytest.raises(DataError, match=r'99\.png: is 13x12: an image is not the size of the '
                                      r'first image \(12x12\).*data.image_size'):
    list(source(root, random_crop_pad=0, random_flip=False).eval_batches(27))


def test_an_eval_image_that_cannot_be_decoded_keeps_the_training_before_it(tmp_path):
  """A streamed eval split is decoded at evaluation: the run stops in one line, with the step
  it reached saved (without an evaluation), and once the image is fixed the same command ends
  the run, evaluating that step again."""
  import jax
  from resnet_flax.train import loop
  root = make_tree(tmp_path / 'tree')
  bad = os.path.join(root, 'val', 'bee', '03.png')
  os.rename(bad, bad + '.good')
  with open(bad, 'wb') as f:
    f.write(b'\x89PNG truncated, not an image')
  config = tiny_config(**{'data.source': 'folder', 'data.backend': 'grain', 'data.dir': root,
                          'data.eval_split': 'val', 'data.image_size': 0, 'model.num_classes': 3,
                          'batch_size': 9, 'num_train_steps': 4, 'eval_every_steps': 4,
                          'checkpoint_every_steps': 100})
  workdir = str(tmp_path / 'run')
  with pytest.raises(DataError, match=rf'{re.escape(bad)}: cannot be decoded.*\(checkpoint 4 '
                                      r'saved in .*, without this evaluation: fix that and run '
                                      r'the same command to resume\)'):
    loop.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  saved = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert sorted(n for n in saved if n.isdigit()) == ['4']
  os.replace(bad + '.good', bad)
  results = loop.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  assert results['steps'] == 4 and 0.0 <= results['eval_top1'] <= 1.0
  assert results['eval_top1'] == loop.evaluate_checkpoint(
      config, workdir, devices=jax.devices()[:1])[1]['eval_top1']


def test_config_and_source_choices(tree):
  from resnet_flax import config as config_lib
  config = tiny_config(**{'data.worker_count': -2})
  with pytest.raises(ConfigError, match='data.worker_count=-2'):
    config_lib.validate(config)
  config = tiny_config(**{'data.backend': 'grain'})
  with pytest.raises(DataError, match="data.backend=grain reads the 'folder' and "
                                      "'arrayrecord' sources, not 'synthetic'"):
    data_lib.load_datasets(config.data)
  config = tiny_config(**{'data.source': 'tfds', 'data.name': 'cifar10',
                          'data.backend': 'grain'})
  with pytest.raises(DataError, match=r"does not read data.source=tfds: convert the dataset "
                                      r"once \(resnet-flax make-arrayrecord --from tfds --name "
                                      r"cifar10 --out DIR\)"):
    data_lib.load_datasets(config.data)
  config = tiny_config(**{'data.source': 'arrayrecord', 'data.backend': 'memory'})
  with pytest.raises(DataError, match='arrayrecord is read by Grain'):
    data_lib.load_datasets(config.data)
  config = tiny_config(**{'data.source': 'folder', 'data.backend': 'grain', 'data.dir': tree,
                          'data.eval_split': 'val', 'data.image_size': 0})
  train, val = data_lib.load_datasets(config.data)
  assert isinstance(train, GrainSource) and train.augmented_on_host
  assert train.image_shape == (12, 12, 3) and val.num_examples == 15
  assert train.class_names == list(CLASSES)
  config.data.eval_image_size = 16               # evaluation at another side
  train, val = data_lib.load_datasets(config.data)
  assert train.image_shape == (12, 12, 3) and val.image_shape == (16, 16, 3)
  assert next(iter(val.eval_batches(5)))['image'].shape == (5, 16, 16, 3)


# --- training -----------------------------------------------------------------------------

# TensorFlow made unimportable at the top level, which the worker processes (started with
# spawn) run too: neither the training process nor its workers may need it. The training
# modules are imported under the guard only, as in scripts/train.py, so the workers import
# just what their batches need.
TRAIN_WITHOUT_TF = '''
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
      raise ImportError(f'{name} is not installed here')
sys.meta_path.insert(0, Block())
if __name__ == '__main__':
  from resnet_flax.config import base_config
  from resnet_flax.models import model_fields
  from resnet_flax.train import loop
  c = base_config()
  c.model.update(model_fields('resnet20'))
  c.model.depth, c.model.width, c.model.num_classes = 8, 4, 3
  c.data.source, c.data.backend, c.data.dir = 'folder', 'grain', sys.argv[1]
  c.data.eval_split, c.data.preprocess, c.data.worker_count = 'val', 'cifar', 1
  c.batch_size, c.num_train_steps, c.log_tensorboard, c.progress_bar = 9, 3, False, False
  results = loop.train_and_evaluate(c, sys.argv[2])
  print(json.dumps({'steps': results['steps'], 'eval_top1': results['eval_top1'],
                    'tf': sorted(m for m in sys.modules if m.split('.')[0] in
                                 ('tensorflow', 'tensorflow_datasets'))}))
'''


def test_training_with_grain_imports_no_tensorflow(tree, tmp_path):
  script = tmp_path / 'train_grain.py'
  script.write_text(TRAIN_WITHOUT_TF)
  p = subprocess.run([sys.executable, str(script), tree, str(tmp_path / 'run')], cwd=REPO,
                     capture_output=True, text=True, env=subprocess_env(), timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(p.stdout.strip().splitlines()[-1])
  assert out['steps'] == 3 and 0.0 <= out['eval_top1'] <= 1.0
  assert out['tf'] == []


HOLD_WORKERS = '''
import sys, time
from resnet_flax.data.grain.source import GrainSource
if __name__ == '__main__':
  tb = GrainSource.from_folder(sys.argv[1], 'train', worker_count=2).train_batches(9, seed=0)
  if sys.argv[2] == 'running':
    tb.batch(0)
  print('ready', flush=True)
  tb.batch(1)
  time.sleep(600)
'''


def _stat(pid: int):
  """The fields of /proc/PID/stat after the command name, or None when it is gone."""
  try:
    return open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
  except OSError:
    return None


def _children(pid: int) -> set:
  return {int(n) for n in os.listdir('/proc') if n.isdigit() and
          (_stat(int(n)) or [None, None])[1] == str(pid)}


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='reads /proc')
@pytest.mark.parametrize('when', ['starting', 'running'])
def test_workers_exit_when_their_process_is_killed(tree, tmp_path, when):
  """SIGKILL leaves the workers no one to stop them: they exit by themselves, also when the
  kill comes while they are still starting (importing Grain)."""
  import signal
  from conftest import wait_for
  script = tmp_path / 'hold.py'
  script.write_text(HOLD_WORKERS)
  proc = subprocess.Popen([sys.executable, str(script), tree, when], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          env=subprocess_env())
  try:
    assert proc.stdout.readline().strip() == 'ready'
    assert wait_for(proc, lambda: len(_children(proc.pid)) >= 2)   # workers (and a tracker)
    workers = _children(proc.pid)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

  def alive():
    return {p for p in workers if (_stat(p) or ['Z'])[0] != 'Z'}

  def cpu():   # the live workers' CPU ticks (1/100 s)
    return tuple(sum(int(x) for x in (_stat(p) or [0] * 15)[11:13]) for p in sorted(alive()))

  def gone():   # fails once the orphans have used 20 CPU-seconds more (working on, not exiting)
    assert sum(cpu()) < start + 2000, f'{len(alive())} worker(s) still alive'
    return not alive()
  start = sum(cpu())
  assert wait_for([], gone, progress=cpu, stall_s=60)


def test_real_imagenette_jpegs_at_224():
  root = unpacked_shared('imagenette-128')
  val = GrainSource.from_folder(root, 'val[:24]', preprocess='imagenet', image_size=224)
  from resnet_flax.inference.predictor import prepare_image
  config = tiny_config(**{'data.preprocess': 'imagenet'}).data
  batch = next(iter(val.eval_batches(8)))
  assert batch['image'].shape == (8, 224, 224, 3) and batch['mask'].all()
  for index in range(8):
    reference = prepare_image(val.records.paths[index], config, DataInfo((224, 224, 3), True))
    assert reference.tobytes() == batch['image'][index].tobytes()
  train = GrainSource.from_folder(root, 'train[:64]', preprocess='imagenet', image_size=224)
  b = train.train_batches(16, seed=0).batch(1)
  assert b['image'].shape == (16, 224, 224, 3) and b['label'].max() < 10

