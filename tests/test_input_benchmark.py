"""The input benchmark (`resnet_flax.tools.input_benchmark`): CPU time of worker processes
counted, side-by-side variants in rounds with their ratios, an outside reference pipeline, and
bad variants or references as one line."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, subprocess_env, tiny_config
from resnet_flax import config as config_lib
from resnet_flax.errors import ConfigError
from resnet_flax.tools import input_benchmark as bench

pytest.importorskip('grain')

# an outside tf.data preprocessing function, as the Flax example's preprocess_for_train is one
REFERENCE = '''
import tensorflow as tf

def preprocess(image_bytes):
  image = tf.io.decode_png(image_bytes, channels=3)
  return tf.image.resize(image, (16, 16)) / 255.0
'''


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  """ROOT/{train,val}/<class>/: 24 and 6 random 12x12 PNGs in 3 classes."""
  root = tmp_path_factory.mktemp('bench') / 'images'
  rng = np.random.default_rng(0)
  for split, n in (('train', 8), ('val', 2)):
    for c in range(3):
      os.makedirs(root / split / f'c{c}')
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
            root / split / f'c{c}' / f'{i}.png')
  return str(root)


def folder_config(tree, **overrides):
  return tiny_config(**{'data.source': 'folder', 'data.backend': 'grain', 'data.dir': tree,
                        'data.eval_split': 'val', 'data.image_size': 0, 'batch_size': 8,
                        **overrides})


def test_cpu_time_of_child_processes_counts():
  """Grain's workers are child processes: their CPU time is the pipeline's too."""
  before = bench.cpu_seconds()
  busy = subprocess.Popen([sys.executable, '-c', 'import sys, time\nt = time.process_time()\n'
                           'while time.process_time() - t < 0.6: pass\nsys.stdin.read()'],
                          stdin=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 120
    while (bench.cpu_between(before, bench.cpu_seconds()) < 0.5 and
           time.monotonic() < deadline):
      time.sleep(0.05)
    assert busy.pid in bench.cpu_seconds()
    assert bench.cpu_between(before, bench.cpu_seconds()) >= 0.5
  finally:
    busy.communicate('', timeout=60)


def test_variants_side_by_side_with_a_reference(tree, tmp_path):
  pytest.importorskip('tensorflow')
  reference = tmp_path / 'reference.py'
  reference.write_text(REFERENCE)
  variants = [{}, {'data.image_size': 16}, {'reference': f'{reference}:preprocess'}]
  out = bench.compare(folder_config(tree), variants, rounds=2, batches=2, warmup=1)
  assert out['rounds'] == 2 and out['variants'] == variants
  assert [len(r) for r in out['results']] == [2, 2, 2]
  assert out['median_ratio_to_first'][0] == 1.0 and out['median_ratio_to_reference'][2] == 1.0
  ours, resized, ref = (rs[0] for rs in out['results'])
  assert ours['backend'] == resized['backend'] == 'grain'
  assert ours['image_shape'] == [12, 12, 3] and ours['image_dtype'] == 'uint8'
  assert resized['image_shape'] == [16, 16, 3]               # the variant's field applied
  assert ref['backend'] == 'reference' and ref['num_examples'] == 24
  assert ref['image_shape'] == [16, 16, 3] and ref['image_dtype'] == 'float32'
  for rs in out['results']:
    for r in rs:
      assert r['batch_size'] == 8 and r['images_per_cpu_second'] > 0
  from resnet_flax.cli.tools import compare_table
  table = compare_table(out)
  assert 'variant 1: data.image_size=16' in table and 'x1.00 of the reference' in table


def test_bad_variants_and_references_are_one_line(tree, tmp_path):
  config = folder_config(tree)
  with pytest.raises(ConfigError, match=r"--variant data\.worker_cout=1: the config has no "
                                        r"field 'data\.worker_cout'"):
    config_lib.with_fields(config, {'data.worker_cout': 1})
  with pytest.raises(ConfigError, match='expected FILE.py:FUNCTION'):
    bench.load_reference('preprocess_for_train')
  with pytest.raises(ConfigError, match=r'nothing\.py is not a file'):
    bench.load_reference(str(tmp_path / 'nothing.py') + ':fn')
  module = tmp_path / 'module.py'
  module.write_text('x = 1\n\ndef fn(image_bytes):\n  return image_bytes\n')
  with pytest.raises(ConfigError, match="has no function 'x'"):
    bench.load_reference(f'{module}:x')
  with pytest.raises(ConfigError, match="--reference reads the files of data.source=folder, "
                                        "not 'synthetic'"):
    bench.measure(tiny_config(), batches=1, warmup=0, reference=f'{module}:fn')
  p = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'input_benchmark.py'),
                      '--config', 'configs/cifar10.py', '--variant', 'data.backend',
                      '--variant', 'data.backend=grain'],
                     capture_output=True, text=True, cwd=REPO, env=subprocess_env())
  assert p.returncode == 2
  assert p.stderr.strip().splitlines() == [
      "error: --variant 'data.backend': expected FIELD=VALUE pairs separated by spaces"]
