"""torchvision weights: converted ResNet-18/50 and ResNeXt-50 give torch's eval logits; every
torchvision network's state dict has the keys and shapes the conversion expects; the written
checkpoint reads back through evaluation's and init_from's paths; .safetensors equals .pth; a
state dict of another model, bad files and bad command lines fail in one clear line.

The torch side (random models, their logits, saved files) runs in a separate process,
tests/torch_reference.py: torch and JAX in one process can crash at import.
"""

import json
import os
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, flax_logits, torch_reference
from resnet_flax import rundir
from resnet_flax.checkpoint import compat, pretrained
from resnet_flax.inference import predictor as inference
from resnet_flax.models import create_model, scan
from resnet_flax.models.registry import abstract_variables
from resnet_flax.train import build
from resnet_flax.train.state import create_train_state
from resnet_flax.errors import WeightsError
from resnet_flax.weights import export_checkpoint
from resnet_flax.weights import torchvision_import as tv

SCRIPT = os.path.join(REPO, 'scripts', 'convert_weights.py')
IMAGE_SIZE = 64   # as in tests/torch_reference.py
LOGIT_MODELS = ['resnet18', 'resnet50', 'resnext50_32x4d']


@pytest.fixture(scope='module')
def torch_files(tmp_path_factory):
  """The folder of tests/torch_reference.py's files, written by a separate process (this one
  never imports torch)."""
  out = tmp_path_factory.mktemp('torch')
  return torch_reference(out, ('torch', 'torchvision', 'safetensors'), [
      out, *LOGIT_MODELS, *[n for n in tv.TORCHVISION_NAMES if n not in LOGIT_MODELS]])


def numpy_state_dict(torch_files, name):
  """The state dict of tests/torch_reference.py's random `name`, read from its .pth file."""
  return tv.read_state_dict(str(torch_files / f'{name}.pth'))


@pytest.mark.parametrize('name', LOGIT_MODELS)
def test_converted_logits_equal_torchvision(torch_files, name):
  reference = np.load(torch_files / f'{name}.npz')
  fields, params, batch_stats = tv.convert_torchvision(name, numpy_state_dict(torch_files, name))
  got = flax_logits(fields, params, batch_stats, reference['images'])
  assert np.std(reference['logits']) > 0.2   # non-trivial logits
  np.testing.assert_array_less(np.abs(got - reference['logits']).max(), 1e-4)


def test_converted_weights_load_into_a_scanned_resnet50(torch_files):
  """The same weights in the scanned layout (stages' identical units stacked) give the same
  logits as unrolled, and torchvision's."""
  reference = np.load(torch_files / 'resnet50.npz')
  fields, params, stats = tv.convert_torchvision('resnet50',
                                                 numpy_state_dict(torch_files, 'resnet50'))
  scanned = {**fields, 'scan_units': 'on'}
  layout = abstract_variables(scanned, 64)
  scanned_params = scan.restack(params, layout['params'])
  assert 'stage3_units2to6' in scanned_params and 'stage3_unit4' not in scanned_params
  got = flax_logits(scanned, scanned_params, scan.restack(stats, layout['batch_stats']),
                    reference['images'])
  unrolled = flax_logits(fields, params, stats, reference['images'])
  np.testing.assert_allclose(got, unrolled, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_less(np.abs(got - reference['logits']).max(), 1e-4)


@pytest.mark.parametrize('name', [n for n in tv.TORCHVISION_NAMES if n not in LOGIT_MODELS])
def test_other_torchvision_resnets_have_the_expected_keys_and_shapes(torch_files, name):
  found = json.loads((torch_files / 'shapes.json').read_text())[name]
  assert {k: tuple(v) for k, v in found.items()} == tv.expected_shapes(name)


def test_pth_reader_needs_no_torch_and_refuses_other_objects(torch_files, tmp_path):
  """The .pth reader is torch's own format read with numpy: views, dtypes and refusals."""
  state_dict = numpy_state_dict(torch_files, 'resnet18')
  assert 'torch' not in sys.modules
  assert state_dict['conv1.weight'].shape == (64, 3, 7, 7)
  assert state_dict['conv1.weight'].dtype == np.float32
  assert state_dict['bn1.num_batches_tracked'].dtype == np.int64
  with pytest.raises(WeightsError, match=r'module\.pth: it holds a torch\.nn\.modules'):
    tv.read_state_dict(str(torch_files / 'module.pth'))
  (tmp_path / 'zip.pth').write_bytes(b'PK\x05\x06' + b'\0' * 18)   # an empty zip archive
  with pytest.raises(WeightsError, match='not one torch.save wrote'):
    tv.read_state_dict(str(tmp_path / 'zip.pth'))
  (tmp_path / 'old.pth').write_bytes(b'\x80\x02not a zip')
  with pytest.raises(WeightsError, match='not a torch.save zip archive'):
    tv.read_state_dict(str(tmp_path / 'old.pth'))


def test_checkpoint_reads_back_through_evaluate_and_init_from(torch_files, tmp_path):
  name = 'resnet18'
  fields, params, batch_stats = tv.convert_torchvision(name, numpy_state_dict(torch_files, name))
  workdir = str(tmp_path / name)
  config = export_checkpoint.pretrained_config(fields)
  export_checkpoint.save_pretrained(workdir, config, params, batch_stats,
                                    source={'from': 'torchvision', 'model': name},
                                    class_names=tv.imagenet_class_names())

  # the stored config: the model's fields and ImageNet's eval preprocessing; prediction's facts
  step, _, meta, saved = pretrained.load_checkpoint(workdir)
  assert step == 0 and meta['pretrained'] == {'from': 'torchvision', 'model': name}
  predictor = inference.load(workdir)
  assert predictor.input_shape == (224, 224, 3)
  assert predictor.class_names[:2] == ['tench', 'goldfish']
  stored = compat.config_from_dict(saved)
  assert dict(stored.model) == fields
  assert (stored.data.preprocess, stored.data.image_size) == ('imagenet', 224)
  assert tuple(stored.data.mean) == (123.675, 116.28, 103.53)
  assert tuple(stored.data.std) == (58.395, 57.12, 57.375)

  # evaluate: the whole training state, restored into the trainer's template of the config
  template = _trainer_template(stored)
  _, state, _, _ = pretrained.load_checkpoint(
      rundir.checkpoint_dir(stored, workdir), -1, template)
  assert jax.tree.structure(state) == jax.tree.structure(template)
  _assert_trees_equal(state.params, params)
  _assert_trees_equal(state.batch_stats, batch_stats)

  # init_from: every array loaded by name and shape, none re-initialised, new or dropped
  new_params, new_stats, report = pretrained.load_pretrained(
      workdir, -1, template.params, template.batch_stats)
  assert not (report.reinitialised or report.new or report.dropped)
  _assert_trees_equal(new_params, params)
  _assert_trees_equal(new_stats, batch_stats)

  with pytest.raises(WeightsError, match='already holds checkpoints'):
    export_checkpoint.save_pretrained(workdir, config, params, batch_stats, source={})


def _trainer_template(config):
  """The host state `build_run(config)` builds, as zeros (restoring needs only its
  structure, shapes and dtypes; its random initialisation would take ~100 compilations)."""
  _, _, tx = build.build_optimizer(config, num_train_examples=1000)
  model = create_model({**config.model, 'dtype': config.dtype})
  shapes = jax.eval_shape(lambda: create_train_state(
      model, tx, seed=config.seed, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
      use_ema=config.ema_decay > 0))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(dict(a)) == jax.tree.structure(dict(b))
  for x, y in zip(jax.tree.leaves(dict(a)), jax.tree.leaves(dict(b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_safetensors_file_converts_as_the_pth_file(torch_files):
  from_pth = tv.convert_torchvision('resnet18', tv.read_state_dict(str(torch_files / 'resnet18.pth')))
  from_st = tv.convert_torchvision('resnet18',
                                   tv.read_state_dict(str(torch_files / 'resnet18.safetensors')))
  assert from_pth[0] == from_st[0]
  _assert_trees_equal(from_pth[1], from_st[1])
  _assert_trees_equal(from_pth[2], from_st[2])


def test_state_dict_of_another_model_is_refused(torch_files):
  state_dict = numpy_state_dict(torch_files, 'resnet50')
  with pytest.raises(WeightsError, match=r'does not fit torchvision resnet18: layer2\.0\.'
                     r'downsample\.1\.running_mean has shape \(512,\), resnet18 expects \(128,\) '
                     r'\(and 23 more shape mismatches\); keys resnet18 does not have: '
                     r'layer1\.0\.bn3\.bias, '):
    tv.convert_torchvision('resnet18', state_dict)
  del state_dict['fc.bias']
  with pytest.raises(WeightsError, match=r'missing keys: fc\.bias \(1000,\)'):
    tv.convert_torchvision('resnet50', state_dict)


def test_classifier_of_another_size_sets_the_number_of_classes(torch_files):
  state_dict = numpy_state_dict(torch_files, 'resnet18')
  for key in ('fc.weight', 'fc.bias'):   # a network fine-tuned on 10 classes
    state_dict[key] = state_dict[key][:10]
  fields, params, _ = tv.convert_torchvision('resnet18', state_dict)
  assert fields['num_classes'] == 10 and params['head']['kernel'].shape == (512, 10)


def test_unreadable_inputs_fail_in_one_line(tmp_path):
  with pytest.raises(WeightsError, match='no such file'):
    tv.read_state_dict(str(tmp_path / 'absent.pth'))
  (tmp_path / 'w.npz').write_bytes(b'')
  with pytest.raises(WeightsError, match='unknown weights file type'):
    tv.read_state_dict(str(tmp_path / 'w.npz'))
  with pytest.raises(WeightsError, match="'resnet19' is not a torchvision ResNet"):
    tv.torchvision_fields('resnet19')


def test_weights_of_two_addresses_with_one_file_name_are_cached_apart():
  """A URL's download is reused only for that URL: `.../a/model.safetensors` is not the file
  `.../b/model.safetensors` downloaded before; torchvision's own (hash-named) files keep
  torch.hub's name."""
  first = tv.cache_path('/hub', 'https://example.org/a/model.safetensors', official=False)
  second = tv.cache_path('/hub', 'https://example.org/b/model.safetensors', official=False)
  assert first != second and os.path.basename(first) == os.path.basename(second)
  assert first == tv.cache_path('/hub', 'https://example.org/a/model.safetensors',
                                official=False)
  assert tv.cache_path('/hub', 'https://download.pytorch.org/models/resnet18-f37072fd.pth',
                       official=True) == '/hub/checkpoints/resnet18-f37072fd.pth'


def _script_main():
  """The convert-weights command, run in this process: main(args) -> exit code."""
  from resnet_flax.cli.weights import convert_weights
  return lambda args: convert_weights(['convert-weights', *args])


def test_script_errors_exit_2_with_one_line(torch_files, tmp_path, capsys):
  main = _script_main()
  partial = str(torch_files / 'partial.pth')
  cases = [
      (['--model', 'resnet18', '--in', partial], 'missing keys: bn1.bias'),
      (['--model', 'resnet19', '--in', partial], 'not a torchvision ResNet'),
      (['--model', 'resnet18'], 'pass either --in FILE_OR_URL or --download'),
      (['--model', 'resnet18', '--in', str(torch_files / 'resnet18.pth'),
        '--eval-crop-fraction', '1.5'], 'data.eval_crop_fraction=1.5'),
  ]
  for args, message in cases:
    code = main(['--from', 'torchvision', '--out', str(tmp_path / 'out'), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count('\n') == 1, err
  assert not (tmp_path / 'out').exists()


def test_script_writes_a_checkpoint(torch_files, tmp_path, capsys):
  out = tmp_path / 'r18'
  code = _script_main()(['--from', 'torchvision', '--model', 'resnet18', '--in',
                         str(torch_files / 'resnet18.pth'), '--out', str(out),
                         '--eval-crop-fraction', str(224 / 232)])
  assert code == 0, capsys.readouterr().err
  assert 'resnet18.pth ->' in capsys.readouterr().out
  step, _, meta, config = pretrained.load_checkpoint(str(out))
  assert step == 0 and meta['pretrained']['file'] == 'resnet18.pth'
  assert config['data']['eval_crop_fraction'] == 224 / 232   # predict/evaluate resize to 232
  assert 'torch' not in sys.modules and 'torchvision' not in sys.modules   # see the docstring
  assert meta['data']['class_names'][:2] == ['tench', 'goldfish']   # a 1000-class head


def test_script_stores_the_class_names_it_is_given(torch_files, tmp_path, capsys):
  """A 1000-class head trained on other classes: --class-names FILE or none, not ImageNet's."""
  main, weights = _script_main(), str(torch_files / 'resnet18.pth')
  names = tmp_path / 'names.txt'
  names.write_text(''.join(f'kind{i}\n' for i in range(1000)))
  for choice, expected in ((str(names), 'kind0'), ('none', None)):
    out = tmp_path / f'r18-{expected}'
    assert main(['--from', 'torchvision', '--model', 'resnet18', '--in', weights, '--out',
                 str(out), '--class-names', choice]) == 0, capsys.readouterr().err
    stored = pretrained.load_checkpoint(str(out))[2]['data']['class_names']
    assert (stored and stored[0]) == expected
  names.write_text('a\nb\n')
  for choice, message in ((str(names), '2 class names for a model of 1000 classes'),
                          (str(tmp_path / 'absent.txt'), 'absent.txt: cannot be read')):
    assert main(['--from', 'torchvision', '--model', 'resnet18', '--in', weights, '--out',
                 str(tmp_path / 'bad'), '--class-names', choice]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1, err
  assert not (tmp_path / 'bad').exists()
