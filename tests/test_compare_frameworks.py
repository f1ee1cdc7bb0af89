"""The framework comparison: which of our models have a PyTorch or Keras counterpart, bad input
as one line and exit code 2, a missing torch reported before anything compiles, a real
side-by-side run of both frameworks in alternating rounds (torch in worker processes, never in
this one), and the Keras worker timing Keras' own network with our parameter count."""

import importlib.util
import json
import os

import numpy as np
import pytest

from conftest import REPO, subprocess_env
from resnet_flax import compiler
from resnet_flax.cli import reports
from resnet_flax.cli import tools as cli_tools
from resnet_flax.errors import ConfigError
from resnet_flax.models import create_model, model_fields
from resnet_flax.tools import benchmarking, model_stats, step_server
from resnet_flax.tools import compare_frameworks as tool


def _spec(model, **overrides):
  config = benchmarking.shipped_config(model, batch_size=8, overrides=overrides)
  return tool.torch_spec(model, dict(config.model), image_size=32, batch_size=8,
                         layout='nchw', threads=1)


def test_counterparts_follow_the_overridden_fields():
  assert _spec('resnet20')['source'] == 'cifar'
  deeper = _spec('resnet20', **{'model.depth': 56})
  assert (deeper['source'], deeper['depth']) == ('cifar', 56)
  assert _spec('resnet50', **{'model.scan_units': 'off', 'model.remat': 'unit',
                              'model.conv_impl': 'fast'})['source'] == 'torchvision'
  with pytest.raises(ConfigError, match=r'model\.width differs from the CIFAR reference'):
    _spec('resnet20', **{'model.width': 4})
  with pytest.raises(ConfigError, match=r'model\.depth differs from torchvision resnet50'):
    _spec('resnet50', **{'model.depth': 101})
  with pytest.raises(ConfigError, match='depth 6n\\+2'):
    _spec('resnet20', **{'model.depth': 9})
  with pytest.raises(ConfigError, match='model.block, model.shortcut, model.version differ'):
    _spec('preact_resnet110')
  with pytest.raises(ConfigError, match=r'model\.residual, model\.shortcut differ'):
    _spec('plain20')
  with pytest.raises(ConfigError, match='resnet50d: no PyTorch counterpart'):
    _spec('resnet50d')


def test_none_sets_a_string_field_to_its_none_choice(capsys):
  config = benchmarking.shipped_config('resnet20', batch_size=8,
                                       overrides=cli_tools.parse_assignments(
                                           ['compiler_options=none', 'model.conv_impl=xla']))
  assert (config.compiler_options, config.model.conv_impl) == ('none', 'xla')
  # the same rule for `summary --set`: the flattened head of 64 x 8 x 8 features, 10 classes
  assert cli_tools.summary(['summary', 'resnet20', '--set', 'pooling=none', '--json']) == 0
  head = json.loads(capsys.readouterr().out)['stages'][-1]
  assert head['name'] == 'head' and head['params'] == 64 * 8 * 8 * 10 + 10


def _keras_spec(model, against='keras', layout='channels_last', **overrides):
  config = benchmarking.shipped_config(model, batch_size=2, overrides=overrides)
  return tool.reference_spec(against, model, dict(config.model), image_size=32, batch_size=2,
                             layout=layout, threads=1)


def test_keras_counterparts_are_the_keras_flavour_models():
  assert _keras_spec('keras_resnet50')['application'] == 'ResNet50'
  assert _keras_spec('keras_resnet152v2')['application'] == 'ResNet152V2'
  assert _keras_spec('keras_resnet101', **{'model.scan_units': 'off'})['num_classes'] == 1000
  with pytest.raises(ConfigError, match='resnet50: no Keras counterpart; compare one of '
                                        'keras_resnet50, keras_resnet50v2'):
    _keras_spec('resnet50')
  with pytest.raises(ConfigError, match=r'model\.depth differs from Keras ResNet50, so there '
                                        r'is no Keras counterpart'):
    _keras_spec('keras_resnet50', **{'model.depth': 101})
  with pytest.raises(ConfigError, match="Keras runs channels_last only"):
    _keras_spec('keras_resnet50', layout='nchw')
  with pytest.raises(ConfigError, match="against 'mxnet': expected one of torch, keras"):
    _keras_spec('keras_resnet50', against='mxnet')


@pytest.mark.parametrize('args,start', [
    (['--set', 'model.width=4'], 'config error: model.width differs'),
    (['--set', 'model.dept=8'], 'config error: model.dept: the config has no such field'),
    (['--set', 'model.depth'], 'error: --set expects FIELD=VALUE'),
    (['--kinds', 'train,infer'], 'config error: kinds'),
    (['--rounds', '0'], 'config error: rounds=0'),
    (['--batch', '-4'], 'config error: batch size -4'),
    (['--against', 'keras'], 'config error: resnet20: no Keras counterpart'),
    (['--model', 'keras_resnet50', '--against', 'keras-program'],
     'config error: --against keras-program times the forward pass only: add --kinds eval'),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, args, start):
  assert reports.compare_frameworks(['compare-frameworks', *args]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(start), err


@pytest.mark.parametrize('kwargs,message', [
    (dict(against='keras-program'), 'times the forward pass only: add --kinds eval'),
    (dict(against='keras', keras_eval='predict'), "keras eval 'predict': expected one of"),
    (dict(against='torch', keras_eval='program', model='resnet50'),
     "keras eval 'program' is a setting of --against keras, not torch"),
    (dict(against='keras-program', kinds=['eval'], program_options='ours'),
     "program options 'ours': expected one of auto, none"),
    (dict(against='keras', program_options='auto'),
     "program options 'auto' are a setting of --against keras-program, not keras"),
])
def test_keras_settings_are_checked_before_any_worker_starts(monkeypatch, kwargs, message):
  def no_worker(*args, **kw):
    raise AssertionError('a worker started before the arguments were checked')
  monkeypatch.setattr(tool.step_server, 'Worker', no_worker)
  with pytest.raises(ConfigError, match=message):
    tool.compare(kwargs.pop('model', 'keras_resnet50'), **kwargs)


def _blocked_torch(tmp_path) -> str:
  """A folder whose `torch` package fails to import, as where torch is not installed."""
  package = tmp_path / 'blocked' / 'torch'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text("raise ImportError(\"No module named 'torch'\")\n")
  return str(tmp_path / 'blocked')


def test_missing_torch_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv('PYTHONPATH', _blocked_torch(tmp_path))
  code = reports.compare_frameworks(['compare-frameworks', '--model', 'resnet20'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1, err
  assert err[0].startswith('missing dependency: torch is not importable'), err
  assert 'requirements-test.txt' in err[0]


@pytest.mark.slow
def test_side_by_side_rounds_alternate_on_the_same_network(tmp_path, monkeypatch):
  """ResNet-8 (resnet20's recipe at depth 8) in both frameworks, 2 rounds of 1 timed step."""
  if importlib.util.find_spec('torch') is None:
    pytest.skip('torch missing: test requirements, pip install -r requirements-test.txt')
  # the workers inherit this environment: the shared compilation cache, every program in it
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', subprocess_env()['JAX_COMPILATION_CACHE_DIR'])
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  flags = '--xla_cpu_enable_fast_min_max=false'     # XLA's default: the record names it
  monkeypatch.setenv('XLA_FLAGS', flags)
  record = str(tmp_path / 'record.json')
  code = reports.compare_frameworks([
      'compare-frameworks', '--model', 'resnet20', '--set', 'model.depth=8', '--set',
      'model.scan_units=off', '--set', 'model.conv_impl=xla', '--batch', '8', '--rounds', '2', '--steps', '1', '--warmup', '0',
      '--threads', '1', '--json', record])
  assert code == 0
  r = json.load(open(record))
  ours, torch = r['ours'], r['torch']
  # the same network: the reference code's parameter count is ours (75,290 at depth 8)
  assert ours['num_params'] == torch['num_params'] == 75290 and r['same_parameter_count']
  assert ours['model_fields']['depth'] == 8 and ours['model_fields']['scan_units'] == 'off'
  assert ours['model_fields']['conv_impl'] == ours['conv_impl'] == 'xla'   # 'auto' is 'fast'
  assert torch['model_source'] == os.path.join('tests', 'torch_models.py')
  assert torch['threads'] == 1 and torch['layout'] == 'channels_last'
  assert not ours['imports_torch'] and not torch['imports_jax']   # one framework a process
  assert [p['first'] for p in r['per_round']] == ['ours', 'torch']
  for kind in ('train', 'eval'):
    for p in r['per_round']:
      v = p[kind]
      assert v['ours']['step_ms'] > 0 and v['torch']['step_ms'] > 0
      assert v['time_ratio'] == pytest.approx(v['ours']['step_ms'] / v['torch']['step_ms'],
                                              rel=1e-3)
      assert v['ours']['images_per_sec'] == pytest.approx(8e3 / v['ours']['step_ms'], rel=1e-3)
    s = r['summary'][kind]
    ratios = sorted(p[kind]['time_ratio'] for p in r['per_round'])
    assert s['time_ratio_min'] == ratios[0] and s['time_ratio_max'] == ratios[-1]
    assert s['time_ratio_median'] == pytest.approx(sum(ratios) / 2, rel=1e-3)
  assert os.path.isfile(os.path.join(REPO, torch['model_source']))
  assert r['machine']['xla_flags'] == flags and f'XLA_FLAGS: {flags}' in tool.table(r)


@pytest.mark.slow
def test_keras_worker_times_keras_own_network_with_our_parameter_count():
  """Keras applications' ResNet50 at 32 px, batch 2, in its worker: the same parameter count
  as our keras_resnet50 (10 classes), TensorFlow's back end, no JAX in that process."""
  if importlib.util.find_spec('tensorflow') is None:
    pytest.skip('tensorflow missing: pip install -r requirements.txt')
  # its eval step: the forward program of --against keras-program, on TensorFlow's XLA
  spec = {**_keras_spec('keras_resnet50', **{'model.num_classes': 10}), 'eval_call': 'program'}
  fields = {**model_fields('keras_resnet50'), 'num_classes': 10}
  ours = model_stats.count_variables(create_model(fields), 32)
  worker = step_server.Worker('keras', tool.WORKERS['keras'], spec, env=subprocess_env(),
                              timeout_s=900)
  try:
    info = worker.info
    # Keras' ResNet50: 25,583,592 trainable weights with 1000 classes (25,636,712 with the
    # BatchNorm moving statistics); 990 fewer classes of a 2048-wide head
    assert info['num_params'] == ours['params'] == 25_583_592 - 990 * (2048 + 1)
    assert info['keras_backend'] == 'tensorflow' and not info['imports_jax']
    assert info['model_source'] == 'keras.applications.ResNet50' and info['threads'] == 1
    assert info['eval_call'] == 'program'
    for kind in ('train', 'eval'):
      reply = worker.time(kind, warmup=0, steps=2)
      assert len(reply['seconds']) == 2 and min(reply['seconds']) > 0
  finally:
    worker.close()


@pytest.mark.slow
def test_keras_program_runs_on_our_xla_with_keras_logits(tmp_path, monkeypatch):
  """`--against keras-program`: Keras' ResNet50 forward program (32 px, batch 2, 10 classes),
  exported by a Keras worker and run by JAX's XLA in another, computes Keras' logits from the
  weights it is given, and is timed against our eval step."""
  if importlib.util.find_spec('tensorflow') is None:
    pytest.skip('tensorflow missing: pip install -r requirements.txt')
  from resnet_flax.tools import keras_program, xla_program
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', subprocess_env()['JAX_COMPILATION_CACHE_DIR'])
  program_dir = str(tmp_path / 'program')
  r = tool.compare('keras_resnet50', against='keras-program', batch_size=2, rounds=2, steps=1,
                   warmup=0, threads=1, kinds=['eval'], program_dir=program_dir,
                   program_options='auto',
                   overrides={'model.num_classes': 10, 'data.image_size': 32})
  program = r['keras-program']
  # compiled with our eval step's options for bottleneck networks (the worker's own check
  # passed with them)
  assert program['xla_options'] == dict(compiler.options('auto', 'cpu', 'eval', 'bottleneck'))
  assert program['xla_options'] != dict(compiler.options('auto', 'cpu', 'eval', 'basic'))
  assert program['xla_options']
  assert program['max_relative_difference_from_keras'] <= xla_program.TOLERANCE
  assert not program['imports_tensorflow'] and not r['keras']['imports_jax']
  # counted from the program's weight arguments, by Keras and by us
  assert program['num_params'] == r['keras']['num_params'] == r['ours']['num_params']
  assert r['reference_threads'] is None
  assert [p['first'] for p in r['per_round']] == ['ours', 'keras-program']
  assert all(p['eval']['keras-program']['step_ms'] > 0 for p in r['per_round'])
  assert 'keras-program ms' in tool.table(r)
  # the program computes from its arguments: zeroing the head's kernel leaves the head's bias
  # (zeros) as the logits, where Keras' logits are not zero
  run, arguments, difference = xla_program.load(program_dir)   # XLA's defaults
  assert difference <= xla_program.TOLERANCE
  expected = np.load(os.path.join(program_dir, keras_program.LOGITS))
  head = [i for i, a in enumerate(arguments) if a.shape == (2048, 10)]
  assert len(head) == 1 and np.abs(expected).max() > 1e-3
  arguments[head[0]] = arguments[head[0]] * 0
  assert np.abs(np.asarray(run(arguments)[0])).max() == 0
