"""timm weights: converted SE-ResNet-50, SE-ResNeXt-50, ResNet-50-D and ResNet-RS-50 give timm's
eval logits; every other timm name's state dict has the keys and shapes the conversion expects;
the command writes a checkpoint that reads back; a state dict of another variant is refused.

The torch side (random timm models, their logits, saved files) runs in a separate process,
tests/torch_reference.py --timm: torch and JAX in one process can crash at import.
"""

import json
import sys

import jax
import numpy as np
import pytest

from conftest import flax_logits, torch_reference
from resnet_flax.checkpoint import compat, pretrained
from resnet_flax.errors import WeightsError
from resnet_flax.models import model_fields
from resnet_flax.weights import timm_import
from resnet_flax.weights.torch_state_dict import read_state_dict

LOGIT_MODELS = ['seresnet50', 'seresnext50_32x4d', 'resnet50d', 'resnetrs50']


@pytest.fixture(scope='module')
def timm_files(tmp_path_factory):
  """The folder of tests/torch_reference.py --timm's files, written by a separate process (this
  one never imports torch or timm)."""
  out = tmp_path_factory.mktemp('timm')
  others = [n for n in timm_import.TIMM_NAMES if n not in LOGIT_MODELS]
  return torch_reference(out, ('torch', 'timm', 'safetensors'),
                         ['--timm', out, *LOGIT_MODELS, *others])


@pytest.mark.parametrize('name', LOGIT_MODELS)
def test_converted_logits_equal_timm(timm_files, name):
  reference = np.load(timm_files / f'{name}.npz')
  fields, params, batch_stats = timm_import.convert_timm(
      name, read_state_dict(str(timm_files / f'{name}.pth')))
  assert fields == model_fields(name)
  got = flax_logits(fields, params, batch_stats, reference['images'])
  assert np.std(reference['logits']) > 0.2   # non-trivial logits
  difference = np.abs(got - reference['logits']).max()
  print(f'{name}: max |logit difference| {difference:.2e}')
  np.testing.assert_array_less(difference, 1e-4)


@pytest.mark.parametrize('name', [n for n in timm_import.TIMM_NAMES if n not in LOGIT_MODELS])
def test_other_timm_resnets_have_the_expected_keys_and_shapes(timm_files, name):
  found = json.loads((timm_files / 'shapes.json').read_text())[name]
  assert {k: tuple(v) for k, v in found.items()} == timm_import.expected_shapes(name)


def test_safetensors_file_converts_as_the_pth_file(timm_files):
  name = LOGIT_MODELS[0]
  from_pth = timm_import.convert_timm(name, read_state_dict(str(timm_files / f'{name}.pth')))
  from_st = timm_import.convert_timm(
      name, read_state_dict(str(timm_files / f'{name}.safetensors')))
  assert from_pth[0] == from_st[0]
  for a, b in zip(from_pth[1:], from_st[1:]):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y)


def test_state_dict_of_another_variant_is_refused(timm_files):
  se = read_state_dict(str(timm_files / 'seresnet50.pth'))
  with pytest.raises(WeightsError, match=r'does not fit timm resnet50: keys resnet50 does not '
                     r'have: layer1\.0\.se\.fc1\.bias, '):
    timm_import.convert_timm('resnet50', se)
  d = read_state_dict(str(timm_files / 'resnet50d.pth'))
  with pytest.raises(WeightsError, match=r'does not fit timm resnetrs50: .*missing keys: '
                     r'layer1\.0\.se\.fc1\.bias'):
    timm_import.convert_timm('resnetrs50', d)
  with pytest.raises(WeightsError, match="'resnet50e' is not a timm ResNet"):
    timm_import.timm_fields('resnet50e')


def _convert_weights(args):
  from resnet_flax.cli.weights import convert_weights
  return convert_weights(['convert-weights', *args])


def test_script_writes_a_checkpoint(timm_files, tmp_path, capsys):
  out = tmp_path / 'r50d'
  code = _convert_weights(['--from', 'timm', '--model', 'resnet50d', '--in',
                           str(timm_files / 'resnet50d.pth'), '--out', str(out),
                           '--eval-crop-fraction', '0.95'])
  assert code == 0, capsys.readouterr().err
  assert 'resnet50d.pth ->' in capsys.readouterr().out
  step, _, meta, saved = pretrained.load_checkpoint(str(out))
  assert step == 0 and meta['pretrained'] == {'from': 'timm', 'model': 'resnet50d',
                                              'file': 'resnet50d.pth'}
  stored = compat.config_from_dict(saved)
  assert dict(stored.model) == model_fields('resnet50d')
  assert stored.data.eval_crop_fraction == 0.95
  assert 'torch' not in sys.modules and 'timm' not in sys.modules   # see the docstring


def test_script_errors_exit_2_with_one_line(timm_files, tmp_path, capsys):
  cases = [
      (['--model', 'resnet50e', '--in', str(timm_files / 'partial.pth')], 'not a timm ResNet'),
      (['--model', 'resnet50d'], 'pass either --in FILE (.pth, .safetensors) or --download'),
      (['--model', 'seresnet50', '--in', str(timm_files / 'partial.pth')],
       'missing keys: bn1.bias'),
  ]
  for args, message in cases:
    code = _convert_weights(['--from', 'timm', '--out', str(tmp_path / 'out'), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count('\n') == 1, err
  assert not (tmp_path / 'out').exists()
