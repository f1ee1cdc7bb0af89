"""Bad or surprising input gives one clear line (exit code 2) or the right result, never a silent
wrong one: model names, config files and overrides, npz labels, sweeps, huge images, the set-up
contract."""

import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import (REPO, REQUIRE_SHARED_DATA, command, config_text, run_command,
                      subprocess_env, tiny_config)
from resnet_flax import config as config_lib
from resnet_flax.cli import common
from resnet_flax.data import arrays
from resnet_flax.errors import ConfigError, DataError
from resnet_flax.models import create_model
from resnet_flax.models.registry import describe
from resnet_flax.tools import model_stats
from resnet_flax.train.build import build_run


def _params(config) -> int:
  return model_stats.count_variables(create_model(config.model), 32)['params']


# --- model.name selects the model ---------------------------------------------------------------

def test_model_name_on_the_command_line_selects_that_models_fields():
  config, _ = common.load_config(['train', '--config', 'cifar10', '--config.model.name=resnet56'])
  assert config.model.depth == 56 and _params(config) == 853_018    # ResNet-56, not ResNet-20
  assert config.model.num_classes == 10 and describe(config.model) == 'resnet56'
  config, _ = common.load_config(['train', '--config', 'cifar10', '--config.model.version=v2',
                                  '--config.model.name=resnet56'])
  assert (config.model.depth, config.model.version) == (56, 'v2')     # the other field wins
  assert describe(config.model) == 'resnet56 with version=v2'
  config, _ = common.load_config(['train', '--config', 'imagenet', '--config.model=resnet152'])
  assert tuple(create_model(config.model).stage_sizes) == (3, 8, 36, 3)
  assert config.model.name == 'resnet152'
  # a recipe's model fields of training (RSB A3: the residual branches' last BatchNorm starts
  # at zero) stay with another network
  config, _ = common.load_config(['train', '--config', 'paper/imagenet_rsb_a3',
                                  '--config.model=resnet101'])
  assert config.model.depth == 101 and config.model.zero_init_residual
  assert describe(config.model).startswith('resnet101')


def test_mean_and_std_on_the_0_to_1_scale_are_refused():
  config = tiny_config(**{'data.mean': (0.485, 0.456, 0.406), 'data.std': (0.229, 0.224, 0.225)})
  with pytest.raises(ConfigError, match=r'data.std=.*looks like the 0..1 scale.*multiply both by '
                                        r'255'):
    config_lib.validate(config)
  config_lib.validate(tiny_config(**{'data.mean': (0.0,), 'data.std': (1.0,)}))  # no scaling


@pytest.mark.parametrize('name, suggestion', [('resnet_bogus', 'did you mean'),
                                              ('ResNet101', 'did you mean resnet101')])
def test_an_unknown_model_name_is_refused_with_the_closest_names(name, suggestion):
  with pytest.raises(ConfigError, match=f"unknown model name '{name}'; {suggestion}"):
    common.load_config(['train', '--config', 'cifar10', f'--config.model.name={name}'])
  config = tiny_config(**{'model.name': name})      # set in a config file: validation refuses
  with pytest.raises(ConfigError, match='unknown model name'):
    config_lib.validate(config)


# --- config files and overrides: one line, exit code 2 ------------------------------------------

@pytest.mark.parametrize('content, args, needle', [
    (None, [], 'no such file; give a config file or the name of a shipped config'),
    ('def get_config(:\n  pass\n', [], 'line 1: invalid syntax'),
    ('def get_config():\n  raise RuntimeError("no GPU here")\n', [],
     'get_config() raised RuntimeError: no GPU here'),
    ('from resnet_flax.config import base_config\ndef get_config():\n  return base_config()\n',
     ["--config.data.eval_split=test[:abc]"], "config.data.eval_split='test[:abc]': split"),
    ('from resnet_flax.config import base_config\ndef get_config():\n  return base_config()\n',
     ['--config.batch_size=abc'], '--config.batch_size=abc: invalid literal'),
])
def test_config_file_problems_are_one_line(tmp_path, content, args, needle):
  path = tmp_path / 'cfg.py'
  if content is not None:
    path.write_text(content)
  p = run_command(command('train', '--config', path, *args))
  lines = [line for line in p.stderr.splitlines() if line.strip()]
  assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
  assert lines[0].startswith('config error: ') and needle in lines[0], lines[0]


@pytest.mark.parametrize('field, value, message', [
    ('image_size', -1, 'must be >= 0'), ('channels', -3, 'must be >= 0'),
    ('synthetic_train_size', -5, 'must be at least 1'),
    ('synthetic_num_classes', 0, 'must be at least 1')])
def test_negative_sizes_and_counts_of_the_data_are_refused(field, value, message):
  """They stopped in NumPy or XLA tracebacks (negative dimensions, high <= 0)."""
  with pytest.raises(ConfigError, match=rf'data.{field}={value}: {message}'):
    config_lib.validate(tiny_config(**{f'data.{field}': value}))


@pytest.mark.parametrize('overrides, message', [
    ({'model.width': -16}, 'model.width=-16 must be 0'),
    ({'model.stage_sizes': (1, 1, 1.5)}, 'model.stage_sizes=1.5 must be an integer'),
    ({'model.block': 'bottleneck', 'model.depth': 11, 'model.width_per_group': 8},
     'gives bottleneck units of 0 channels'),
    ({'model.stem': 'deep', 'model.width': 1}, "the 'deep' stem's first convs"),
    ({'model.bn_momentum': 1.5}, r'model.bn_momentum=1.5 must be in \[0.0, 1.0\)'),
    ({'model.bn_epsilon': -1.0}, r'model.bn_epsilon=-1.0 must be in \(0.0, inf\)'),
    ({'model.include_top': False}, 'training needs the classification head')])
def test_model_fields_that_cannot_build_or_train_are_refused(overrides, message):
  """They stopped in tracebacks (negative or zero widths, float unit counts, a loss without
  logits) or trained silently wrong (a BatchNorm momentum of 1.5, a negative epsilon)."""
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(tiny_config(**overrides))


@pytest.mark.parametrize('field, value', [('mean', None), ('mean', ('a',)), ('std', None),
                                          ('std', ())])
def test_mean_and_std_must_be_numbers(field, value):
  config = tiny_config()
  config.data[field] = value
  with pytest.raises(ConfigError, match=rf'data.{field}=.*must be a tuple of finite numbers'):
    config_lib.validate(config)


def test_odd_stage_sizes_coordinators_and_summary_sizes_are_one_line(capsys):
  from resnet_flax.train import distributed
  with pytest.raises(ConfigError, match=r'model.stage_sizes=3 must be a tuple of unit counts'):
    create_model({**tiny_config().model, 'stage_sizes': 3})
  dist = {**config_lib.base_config().distributed, 'coordinator': 'nohost', 'num_processes': 1,
          'process_id': 0}
  with pytest.raises(ConfigError, match=r"coordinator='nohost' must be HOST:PORT"):
    distributed.maybe_initialize(dist)
  from resnet_flax.cli import tools as cli_tools
  with pytest.raises(SystemExit) as e:
    cli_tools.summary(['summary', 'resnet20', '--image-size', '-3'])
  assert e.value.code == 2 and '--image-size -3: give a positive side' in capsys.readouterr().err


@pytest.mark.parametrize('seed', [-1, 2**32])
def test_a_seed_outside_32_bits_is_refused(seed):
  """-1 stopped in a NumPy traceback; 2**32 trained as seed 0 (the key keeps 32 bits)."""
  with pytest.raises(ConfigError, match=rf'seed={seed}.*must be in \[0, 2\*\*32\)'):
    config_lib.validate(tiny_config(seed=seed))


def test_infinite_learning_rate_fails_validation():
  with pytest.raises(ConfigError, match=r'schedule.base_lr=inf must be a finite number'):
    config_lib.validate(tiny_config(**{'schedule.base_lr': float('inf')}))


def test_a_batch_larger_than_the_training_set_names_batch_size():
  with pytest.raises(ConfigError, match=r'config.batch_size=128 is larger than the training '
                                        r"split 'train' \(64 examples\)"):
    build_run(tiny_config(batch_size=128), devices=jax.devices()[:1])


# --- npz labels ---------------------------------------------------------------------------------

def _npz(path, y_train, y_test=(0, 1)):
  y_train = np.asarray(y_train)
  np.savez(path, x_train=np.zeros((len(y_train), 4, 4), np.uint8), y_train=y_train,
           x_test=np.zeros((len(y_test), 4, 4), np.uint8), y_test=np.asarray(y_test))
  return str(path)


def _load(path, split='train'):
  c = config_lib.base_config().data
  c.update({'source': 'npz', 'dir': path})
  return arrays.load(c, split)


def test_npz_fractional_labels_are_refused_with_the_example(tmp_path):
  with pytest.raises(DataError, match=r'y_train\[2\] = 2.5 is not a class index'):
    _load(_npz(tmp_path / 'f.npz', [0.0, 1.0, 2.5, 3.0]))
  assert _load(_npz(tmp_path / 'whole.npz', [0.0, 1.0, 3.0])).labels.tolist() == [0, 1, 3]


def test_npz_one_hot_labels_are_recognised(tmp_path, capsys):
  classes = np.asarray([3, 0, 9, 9, 1])
  one_hot = np.eye(10, dtype=np.float32)[classes]
  ds = _load(_npz(tmp_path / 'oh.npz', one_hot))
  assert ds.labels.tolist() == classes.tolist() and len(ds) == 5 and ds.num_classes == 10
  assert 'one-hot' in capsys.readouterr().err
  bad = one_hot.copy()
  bad[2, 0] = 1.0
  with pytest.raises(DataError, match=r'row 2 is not one-hot'):
    _load(_npz(tmp_path / 'bad.npz', bad))


def test_npz_label_beyond_the_models_classes_names_the_example(tmp_path):
  labels = list(range(10)) * 3
  labels[17] = 12
  path = _npz(tmp_path / 'twelve.npz', labels, list(range(10)))
  config = tiny_config(**{'data.source': 'npz', 'data.dir': path, 'data.image_size': 0,
                          'data.channels': 0, 'data.random_crop_pad': 0})
  with pytest.raises(ConfigError, match=r"example 17 of 'train' has label 12, outside \[0, 10\)"):
    build_run(config, devices=jax.devices()[:1])


# --- sweeps: failed points say why; dry runs validate ---------------------------------------------

def _sweep(tmp_path, *args):
  config = tmp_path / 'tiny.py'
  config.write_text(config_text('memory', tmp_path))
  return run_command(command('sweep', '--config', config, '--workdir', tmp_path / 'sweep',
                             '--config.num_train_steps=8', '--config.eval_every_steps=8',
                             *args))


def test_sweep_dry_run_validates_every_point(tmp_path):
  p = _sweep(tmp_path, '--sweep', 'model.depth=8,abc,7', '--dry-run')
  assert p.returncode == 2, p.stderr[-2000:]
  lines = p.stdout.splitlines()
  assert len([line for line in lines if '-m resnet_flax train' in line]) == 3
  problems = [line for line in lines if line.startswith('sweep: point ')]
  assert len(problems) == 2
  assert problems[0].startswith("sweep: point depth=abc cannot run: config error: "
                                "--config.model.depth=abc")
  assert problems[1].startswith('sweep: point depth=7 cannot run: config error: model.depth=7')
  assert not (tmp_path / 'sweep').exists()


@pytest.mark.slow
def test_sweep_records_failed_points_with_their_reason(tmp_path):
  p = _sweep(tmp_path, '--sweep', 'model.depth=8,abc', '--sweep',
             'data.source=synthetic,npz')
  assert p.returncode == 1, p.stderr[-2000:]
  rows = {(r['model.depth'], r['data.source']): r
          for r in csv.DictReader(open(tmp_path / 'sweep' / 'results.csv'))}
  assert rows['8', 'synthetic']['status'] == 'finished' and rows['8', 'synthetic']['error'] == ''
  assert rows['8', 'npz']['status'] == 'failed'       # fails when it runs: no npz file
  assert rows['8', 'npz']['error'].startswith('data error: data.source=npz needs data.dir')
  for source in ('synthetic', 'npz'):                  # refused before anything runs
    assert rows['abc', source]['status'] == 'failed'
    assert '--config.model.depth=abc' in rows['abc', source]['error']
  table = open(tmp_path / 'sweep' / 'results.md').read()
  assert 'data error: data.source=npz needs data.dir' in table


# --- prediction of huge images ---------------------------------------------------------------------

_PEAK = '''
import resource, sys
sys.argv = ['predict'] + sys.argv[1:]
from resnet_flax.cli import inference
code = inference.predict(sys.argv)
print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
'''


@pytest.mark.slow
def test_prediction_memory_is_bounded_by_the_models_input(tmp_path):
  from PIL import Image
  from resnet_flax.train import loop
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(num_train_steps=1), workdir, devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  for side in (400, 6000):
    noise = rng.integers(0, 256, (side // 10, side // 10, 3), dtype=np.uint8)
    Image.fromarray(noise).resize((side, side)).save(tmp_path / f'{side}.jpg', quality=90)
  peaks = {}
  for side in (400, 6000):
    p = subprocess.run([sys.executable, '-c', _PEAK, '--workdir', workdir,
                        str(tmp_path / f'{side}.jpg')], capture_output=True, text=True,
                       cwd=REPO, env=subprocess_env())
    assert p.returncode == 0, p.stderr[-2000:]
    peaks[side] = int(p.stdout.split('peak_kb')[1])
  # a 6000 x 6000 RGB image is 108 MB as uint8 and 432 MB as float32; decoded at 1/8 it is not
  assert peaks[6000] - peaks[400] < 60_000, peaks
  p = subprocess.run([sys.executable, '-c', _PEAK, '--workdir', workdir, '--max-image-pixels',
                      '1000000', str(tmp_path / '6000.jpg')], capture_output=True, text=True,
                     cwd=REPO, env=subprocess_env())
  lines = [line for line in p.stderr.splitlines() if line.strip()]
  assert p.returncode == 2 and len(lines) == 1 and '--max-image-pixels' in lines[0], p.stderr


# --- the set-up contract ---------------------------------------------------------------------------

def test_shared_data_skips_or_fails_when_absent(monkeypatch):
  import conftest
  monkeypatch.setattr(conftest, 'REQUIRE_SHARED_DATA', False)
  with pytest.raises(pytest.skip.Exception, match='no-such-set.npz is absent'):
    conftest.shared_data('no-such-set.npz')
  monkeypatch.setattr(conftest, 'REQUIRE_SHARED_DATA', True)
  with pytest.raises(pytest.fail.Exception, match='RESNET_FLAX_REQUIRE_SHARED_DATA is set'):
    conftest.shared_data('no-such-set.npz')
  assert isinstance(REQUIRE_SHARED_DATA, bool)


def test_readme_set_up_is_two_commands_and_ci_runs_the_second():
  readme = open(os.path.join(REPO, 'README.md')).read()
  block = readme.split('## Quick start')[1].split('```')[1].strip().splitlines()
  assert block == ['pip install -r requirements.txt && resnet-flax train',
                   'pip install -r requirements-test.txt && python -m pytest -n 2 -q']
  ci = open(os.path.join(REPO, '.ci', 'run')).read().strip().splitlines()
  assert ci[-1] == block[1] and 'RESNET_FLAX_REQUIRE_SHARED_DATA=1' in '\n'.join(ci)
  requirements = open(os.path.join(REPO, 'requirements.txt')).read().split()
  assert 'matplotlib==3.11.2' in requirements and '-e' in requirements   # plots after set-up
  assert '-r requirements.txt' in open(os.path.join(REPO, 'requirements-test.txt')).read()


@pytest.mark.slow
def test_tf_data_decode_noise_stays_out_of_the_output(tmp_path):
  """A corrupt JPEG skipped by the tf.data back end: the skip is reported in one line, and
  libjpeg's own complaints do not reach the terminal."""
  pytest.importorskip('tensorflow')
  config = tmp_path / 'tiny.py'
  config.write_text(config_text('tfdata', tmp_path).replace(     # writes the PNGs too
      "c.data.dir = ", "c.data.on_bad_image = 'skip'\n  c.data.dir = "))
  (tmp_path / 'images' / 'train' / 'class0' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0xx')
  p = run_command(command('train', '--config', config, '--workdir', tmp_path / 'run',
                          '--config.num_train_steps=6'))
  assert p.returncode == 0, p.stderr[-2000:]
  assert 'skipped 1 unreadable file' in p.stderr
  for noise in ('jpeg_mem', 'JPEG library', 'oneDNN', 'absl::InitializeLog'):
    assert noise not in p.stdout + p.stderr, noise
