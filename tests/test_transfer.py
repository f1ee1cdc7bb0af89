"""Transfer learning: `freeze` (frozen parameters and BatchNorm statistics stay bit-identical,
under jit and pmap), the MLP head `model.head_hidden`, a new head from `init_from`, resuming a
frozen run, config errors, and configs/transfer_mnist.py."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_data, tiny_config
from resnet_flax import config as configuration
from resnet_flax import transfer
from resnet_flax import tree as tree_lib
from resnet_flax.checkpoint import compat, pretrained
from resnet_flax.errors import ConfigError
from resnet_flax.models import create_model, model_fields
from resnet_flax.train import loop, resume
from resnet_flax.train.build import build_run

SOURCE_CLASSES = 1000   # the "ImageNet" backbone: a 1000-class head to be replaced


def _flat(tree):
  return {name: np.asarray(value) for name, value in tree_lib.flatten(tree).items()}


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A saved tiny run with a 1000-class head and running statistics far from the batches':
  (workdir, saved params, saved batch_stats). Saved as the trainer saves, without training
  (which would only add compilation time)."""
  workdir = str(tmp_path_factory.mktemp('source'))
  config = tiny_config(**{'model.num_classes': SOURCE_CLASSES,
                          'data.synthetic_num_classes': SOURCE_CLASSES})
  run = build_run(config, devices=jax.devices()[:1])
  host = jax.device_get(run.par.host_state(run.state))
  rng = np.random.default_rng(0)
  host = host.replace(batch_stats=jax.tree.map(
      lambda s: (s + rng.uniform(0.5, 1.5, s.shape)).astype(s.dtype), host.batch_stats))
  ckpts = loop.open_checkpoints(config, workdir, log=lambda *a: None)
  ckpts.save(2, host, meta={}, config=config, metrics=None)
  ckpts.wait()
  ckpts.close()
  return workdir, _flat(host.params), _flat(host.batch_stats)


def _finetune_config(**overrides):
  """The tiny model with a (12,) MLP head and a frozen backbone, its EMA kept."""
  return tiny_config(freeze='backbone', ema_decay=0.9, **{'model.head_hidden': (12,)},
                     **overrides)


def _train(config, devices, num_steps, init_from=None):
  """(run, host state after init_from, host state after `num_steps` steps)."""
  run = build_run(config, devices=devices)
  state = run.state
  if init_from:
    state, _ = resume.init_from_checkpoint(run, init_from)
  start = jax.tree.map(np.array, jax.device_get(run.par.host_state(state)))
  for step in range(num_steps):
    state, metrics = run.p_train(state, run.par.put_batch(run.train_batches.batch(step)))
    assert float(np.min(jax.device_get(metrics['finite']))) == 1.0
  return run, start, jax.device_get(run.par.host_state(state))


@pytest.mark.parametrize('mode', ['jit', 'pmap'])
def test_backbone_freeze_keeps_backbone_and_statistics_bit_identical(mode, source):
  """After fine-tuning from a saved checkpoint with freeze='backbone', every backbone parameter,
  every BatchNorm statistic and their EMA are bit-identical to the loaded ones; the head moved."""
  workdir, saved_params, saved_stats = source
  run, start, end = _train(_finetune_config(parallelism=mode), jax.devices()[:2], 3,
                           init_from=workdir)
  params, stats = _flat(end.params), _flat(end.batch_stats)
  backbone = [n for n in params if not n.startswith('head')]
  assert len(backbone) == len(params) - 4 and stats
  for name in backbone:
    assert params[name].tobytes() == saved_params[name].tobytes(), name
    assert _flat(end.ema_params)[name].tobytes() == saved_params[name].tobytes(), name
  for name, value in stats.items():
    assert value.tobytes() == saved_stats[name].tobytes(), name
    assert _flat(end.ema_batch_stats)[name].tobytes() == saved_stats[name].tobytes(), name
  start_params = _flat(start.params)
  for name in ('head/kernel', 'head/bias', 'head_hidden1/kernel', 'head_hidden1/bias'):
    assert np.max(np.abs(params[name] - start_params[name])) > 1e-6, name
  assert len(run.freeze.norm_paths) == len(stats) // 2   # every BatchNorm layer of the backbone
  assert run.freeze.num_frozen == sum(saved_params[n].size for n in backbone)


def test_regex_freeze_fixes_only_the_matching_subtrees_and_mlp_head_trains():
  config = tiny_config(freeze='stem|stage1', **{'model.head_hidden': (12,)})
  run, start, end = _train(config, jax.devices()[:1], 2)
  before, after = _flat(start.params), _flat(end.params)
  stats_before, stats_after = _flat(start.batch_stats), _flat(end.batch_stats)
  frozen = [n for n in before if n.startswith(('stem', 'stage1'))]
  assert frozen and len(frozen) < len(before) and 'head_hidden1/kernel' in before
  for name in before:
    changed = np.max(np.abs(after[name] - before[name])) > 0
    assert changed == (name not in frozen), name
  for name in stats_before:
    same = stats_after[name].tobytes() == stats_before[name].tobytes()
    assert same == name.startswith(('stem', 'stage1')), name
  assert run.freeze.norm_paths == {'stem_norm', 'stage1_unit1/norm1', 'stage1_unit1/norm2'}


def test_frozen_norms_run_in_inference_mode():
  """Inside the training forward pass a frozen norm normalises with its running statistics:
  with every norm frozen, train=True gives the train=False output and writes nothing back."""
  model = create_model({**model_fields('resnet20'), 'depth': 8, 'width': 4})
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
  variables = {'params': variables['params'], 'batch_stats': jax.tree.map(
      lambda s: s + 0.25, variables['batch_stats'])}   # running statistics unlike the batch's
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
  all_norms = transfer.frozen_norm_paths(jax.tree.map(lambda _: True, variables['params']),
                                      variables['batch_stats'])

  @jax.jit
  def forward(variables, x):
    with transfer.norms_in_inference_mode(all_norms):
      frozen_all = model.apply(variables, x, train=True, mutable=['batch_stats'])
    with transfer.norms_in_inference_mode({'stem_norm'}):
      frozen_stem = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return frozen_all, frozen_stem, model.apply(variables, x, train=False)

  (out, new), (_, new_stem), eval_out = forward(variables, x)
  np.testing.assert_array_equal(out, eval_out)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                   new['batch_stats'], variables['batch_stats']))
  new = new_stem
  assert np.array_equal(new['batch_stats']['stem_norm']['mean'],
                        variables['batch_stats']['stem_norm']['mean'])
  assert not np.array_equal(new['batch_stats']['stage1_unit1']['norm1']['mean'],
                            variables['batch_stats']['stage1_unit1']['norm1']['mean'])


def test_partly_frozen_norm_keeps_training_mode():
  params = {'stem_norm': {'scale': 1, 'bias': 2}, 'other_norm': {'scale': 1, 'bias': 2},
            'head': {'kernel': 3}}
  stats = {'stem_norm': {'mean': 0, 'var': 1}, 'other_norm': {'mean': 0, 'var': 1}}
  frozen = transfer.frozen_mask(params, 'stem_norm|other_norm/scale')
  assert frozen['other_norm'] == {'scale': True, 'bias': False}
  assert transfer.frozen_norm_paths(frozen, stats) == {'stem_norm'}
  assert transfer.frozen_mask(params, 'backbone')['head'] == {'kernel': False}


def test_head_hidden_param_shapes_and_plain_head_unchanged():
  base = {**model_fields('resnet20'), 'depth': 8, 'width': 4}
  x = jnp.zeros((1, 8, 8, 3))

  def shapes(**fields):
    model = create_model({**base, **fields})
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))['params']
    return dict(zip(jax.tree.leaves(tree_lib.leaf_paths(params)),
                    (leaf.shape for leaf in jax.tree.leaves(params))))

  plain = shapes()
  assert shapes(head_hidden=()) == plain
  assert sorted(n for n in plain if n.startswith('head')) == ['head/bias', 'head/kernel']
  mlp = shapes(head_hidden=(12, 6))
  assert {n: s for n, s in mlp.items() if n.startswith('head')} == {
      'head_hidden1/kernel': (16, 12), 'head_hidden1/bias': (12,),
      'head_hidden2/kernel': (12, 6), 'head_hidden2/bias': (6,),
      'head/kernel': (6, 10), 'head/bias': (10,)}
  assert {n: s for n, s in mlp.items() if not n.startswith('head')} == {
      n: s for n, s in plain.items() if not n.startswith('head')}
  assert create_model({**base, 'head_hidden': (12, 6)}).head_names == (
      'head_hidden1', 'head_hidden2', 'head')


def test_new_head_from_a_checkpoint_with_other_classes_resumes_and_refuses_freeze_change(
    source, tmp_path, capsys):
  """A 10-class MLP head on a 1000-class checkpoint: the head is freshly initialised and
  reported; the frozen run saves, resumes (optimizer state without the frozen leaves) and
  refuses to resume with another freeze."""
  workdir, saved_params, _ = source
  devices = jax.devices()[:2]   # the config and devices of the jit test above: cached compiles
  config = _finetune_config(init_from=workdir, num_train_steps=2)
  run = build_run(config, devices=devices)
  state, report = resume.init_from_checkpoint(run, workdir)
  assert sorted(report.reinitialised) == [
      f'params/head/bias ({SOURCE_CLASSES},) -> (10,)',
      f'params/head/kernel (16, {SOURCE_CLASSES}) -> (12, 10)']
  assert report.new == ['params/head_hidden1/bias', 'params/head_hidden1/kernel']
  fresh, loaded = run.par.host_state(run.state), run.par.host_state(state)
  np.testing.assert_array_equal(loaded.params['head']['kernel'], fresh.params['head']['kernel'])

  finetune = str(tmp_path / 'finetune')
  capsys.readouterr()
  results = loop.train_and_evaluate(config, finetune, devices=devices)
  out = capsys.readouterr().out
  assert 're-initialised (shape mismatch): params/head/bias' in out
  assert "freeze='backbone'" in out and 'parameters frozen' in out
  assert results['init_from']['new'] == report.new
  assert results['num_trainable_params'] == 16 * 12 + 12 + 12 * 10 + 10
  config.num_train_steps = 3
  results = loop.train_and_evaluate(config, finetune, devices=devices)
  assert 'resuming from checkpoint 2' in capsys.readouterr().out and results['steps'] == 3
  _, host, _, _ = pretrained.load_checkpoint(finetune)
  assert _flat(host['params'])['stem_conv/kernel'].tobytes() == \
      saved_params['stem_conv/kernel'].tobytes()
  config.num_train_steps = 4
  config.freeze = 'stem'
  with pytest.raises(ConfigError, match=r"freeze \('backbone' -> 'stem'\)"):
    loop.train_and_evaluate(config, finetune, devices=devices)


def test_runs_saved_before_freeze_and_head_hidden_existed_still_resume():
  config = tiny_config()
  saved = compat.config_to_dict(config)
  del saved['freeze'], saved['model']['head_hidden']
  assert compat.incompatible_fields(saved, config) == []
  assert compat.incompatible_fields(saved, tiny_config(freeze='stem')) == [
      "freeze ('' -> 'stem')"]


@pytest.mark.parametrize('overrides,needle', [
    ({'freeze': 'nothing_here'}, "freeze='nothing_here' matches no parameter"),
    ({'freeze': '.'}, "freeze='.' freezes every parameter"),
    ({'freeze': 'stage(1'}, "freeze='stage(1' is not a valid regular expression"),
    ({'freeze': 'backbone', 'model.include_top': False}, "freeze='backbone'"),
    ({'model.head_hidden': (0,)}, 'model.head_hidden=(0,)'),
    ({'model.head_hidden': (8,), 'model.include_top': False}, 'needs model.include_top=True'),
    ({'model.pooling': 'none', 'data.image_size': 16, 'data.eval_image_size': 24},
     'must be 0 (the training size) or data.image_size with model.pooling=none'),
])
def test_freeze_and_head_config_errors_name_the_field(overrides, needle):
  with pytest.raises(ConfigError) as e:
    configuration.validate(tiny_config(**overrides))
  assert needle in str(e.value) and '\n' not in str(e.value)


def _transfer_config():
  from resnet_flax.configs import transfer_mnist
  return transfer_mnist.get_config()


def test_transfer_mnist_config_is_the_keras_recipe():
  c = _transfer_config()
  configuration.validate(c)
  assert (c.freeze, tuple(c.model.head_hidden), c.model.family) == ('backbone', (1000,), 'cifar')
  assert (c.data.source, c.data.preprocess, c.model.num_classes) == ('npz', 'mnist', 10)


@pytest.mark.slow
def test_transfer_mnist_runs_from_a_backbone(source, tmp_path):
  """configs/transfer_mnist.py (shrunk to the tiny backbone and a few steps) on real MNIST."""
  workdir, saved_params, _ = source
  c = _transfer_config()
  c.model.depth, c.model.width = 8, 4
  c.model.head_hidden = (32,)
  c.init_from, c.data.dir = workdir, shared_data('mnist.npz')
  c.data.train_split, c.data.eval_split = 'train[:256]', 'test[:64]'
  c.batch_size, c.num_train_steps, c.log_tensorboard, c.progress_bar = 32, 4, False, False
  results = loop.train_and_evaluate(c, str(tmp_path), devices=jax.devices()[:1])
  assert results['steps'] == 4 and np.isfinite(results['eval_loss'])
  assert results['init_from']['loaded'] == len(saved_params) - 2 + len(source[2])


def test_a_unit_pattern_freezes_a_scanned_run_as_its_unrolled_units():
  """A scanned run keeps one array per layer for all its units: a pattern over unit names
  freezes it when it names every unit (as the unrolled network's units), and is refused when
  it names some of them only (they would have trained silently)."""
  x = jnp.zeros((1, 16, 16, 3))

  def shapes(scan_units):
    model = create_model({**model_fields('resnet20'), 'width': 4, 'scan_units': scan_units})
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))['params']

  def frozen_values(params, pattern):
    mask = transfer.frozen_mask(params, pattern)
    return sum(int(np.prod(p.shape)) for p, m in zip(jax.tree.leaves(params),
                                                       jax.tree.leaves(mask)) if m)
  scanned, unrolled = shapes('on'), shapes('off')
  assert 'stage2_units2to3' in scanned
  for pattern in ('stem|stage1_unit[1-3]/', 'stage2_unit[23]/', 'stage2'):
    assert frozen_values(scanned, pattern) == frozen_values(unrolled, pattern) > 0, pattern
  with pytest.raises(ConfigError, match=r"freeze='stage2_unit2/' names 1 of the 2 units of "
                                        r'stage2_units2to3, a scanned run'):
    transfer.frozen_mask(scanned, 'stage2_unit2/')
  assert frozen_values(unrolled, 'stage2_unit2/') > 0


def test_init_from_refuses_frozen_arrays_it_does_not_load_and_names_other_architectures(
    tmp_path, capsys):
  """A depth-8 source under a deeper frozen backbone: the extra units would stay random and
  frozen, refused. A plain network from a residual source: the arrays fit by name and shape,
  and the log says that they compute something else here."""
  source = str(tmp_path / 'source')
  loop.train_and_evaluate(tiny_config(num_train_steps=1), source, devices=jax.devices()[:1])
  deeper = tiny_config(num_train_steps=1, init_from=source, freeze='backbone',
                       **{'model.depth': 14})
  with pytest.raises(ConfigError, match=r"config.freeze='backbone' freezes \d+ arrays that "
                                        r'init_from .* does not provide \(params/stage1_unit2/'):
    loop.train_and_evaluate(deeper, str(tmp_path / 'deeper'), devices=jax.devices()[:1])
  capsys.readouterr()
  plain = tiny_config(num_train_steps=1, init_from=source, **{'model.residual': False})
  loop.train_and_evaluate(plain, str(tmp_path / 'plain'), devices=jax.devices()[:1])
  out = capsys.readouterr().out
  assert ('warning: the init_from model differs from this one (model.residual=True there, '
          'False here)') in out
