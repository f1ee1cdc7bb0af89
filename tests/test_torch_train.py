"""The PyTorch accuracy reference (`resnet-flax torch-train`, resnet_flax/tools/torch_train.py):
its augmentation, its refusals, and a short run that learns and writes a run folder that our
plots and tables read. torch runs only in the command's own process."""

import itertools
import json
import os

import numpy as np
import pytest

from conftest import command, run_command
from resnet_flax import rundir
from resnet_flax.configs import default
from resnet_flax.configs.paper import cifar10_budget
from resnet_flax.models import create_model, model_fields, registry
from resnet_flax.tools import torch_train
from resnet_flax.train.build import build_optimizer


def test_augment_is_a_window_of_the_zero_padded_image_flipped_or_not():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (400, 6, 5, 3), dtype=np.uint8)   # no zero pixel of its own
  out = torch_train.pad_crop_flip(images, np.random.default_rng(1), 2, True)
  assert out.shape == images.shape and out.dtype == np.uint8
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  seen = set()
  for i in range(len(images)):
    matches = [(dy, dx, flip) for dy, dx, flip in itertools.product(range(5), range(5), (0, 1))
               if np.array_equal(out[i], (lambda w: w[:, ::-1] if flip else w)(
                   padded[i, dy:dy + 6, dx:dx + 5]))]
    assert len(matches) == 1, (i, matches)
    seen.add(matches[0])
  assert len(seen) == 5 * 5 * 2            # every offset and both flips are drawn
  same = torch_train.pad_crop_flip(images, np.random.default_rng(1), 2, True)
  np.testing.assert_array_equal(out, same)  # a function of the generator's seed
  np.testing.assert_array_equal(torch_train.pad_crop_flip(images, rng, 0, False), images)


def test_the_learning_rate_of_update_k_is_the_one_optax_gives_our_update_k():
  """The reference sets lr[k] before its k-th update; our optimizer (optax, SGD without
  momentum here) applies -lr * g at its k-th update: the two must agree update for update,
  through the budget recipe's warm-up and into its cosine decay."""
  import jax.numpy as jnp
  import optax
  config = cifar10_budget.get_config()
  config.num_epochs = 2.0
  plan, schedule, _ = build_optimizer(config, 45_000)
  lrs = torch_train.learning_rates(schedule, plan.total_steps)
  assert len(lrs) == plan.total_steps == 702
  assert lrs[0] == pytest.approx(0.01) and lrs[351] == pytest.approx(0.1)   # warm-up, peak
  tx = optax.sgd(schedule)
  params, state, applied = jnp.zeros(()), tx.init(jnp.zeros(())), []
  for _ in range(360):
    updates, state = tx.update(jnp.ones(()), state, params)
    applied.append(-float(updates))
  np.testing.assert_allclose(applied, lrs[:360], rtol=1e-6)


def test_batchnorm_and_weight_decay_follow_our_fields():
  config = cifar10_budget.get_config()
  assert torch_train.batchnorm_settings(config.model) == {
      'momentum': pytest.approx(0.1), 'eps': 1e-5}       # ours: running = 0.9 running + 0.1 batch
  import jax
  from resnet_flax import optim
  from resnet_flax.tree import path_str
  params = registry.abstract_variables(config.model, 32, 3)['params']
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  named = [(path_str(k), v.shape) for k, v in leaves]
  # 19 convs, 19 BatchNorms (scale, bias), the dense kernel and bias; without those of ndim <= 1
  for exclude, decayed in (('none', 59), ('bn_and_bias', 20)):
    config.optimizer.weight_decay_exclude = exclude
    groups = torch_train.decay_groups(named, config.optimizer)
    mask = jax.tree.leaves(optim.weight_decay_mask(params, exclude))
    assert [groups[n] > 0 for n, _ in named] == mask      # the same parameters as our mask
    assert sum(wd > 0 for wd in groups.values()) == decayed
    assert set(groups.values()) <= {0.0, 1e-4}


@pytest.mark.parametrize('override, field', [
    ('--config.model.version=v2', 'model.version'),
    ('--config.model.residual=false', 'model.residual'),
    ('--config.model.block=bottleneck', 'model.block'),
    ('--config.model.stem=deep', 'model:'),       # caught by the parameter counts
    ('--config.optimizer.name=adamw', 'optimizer.name'),
    ('--config.mixup_alpha=0.2', 'mixup_alpha'),
    ('--config.nan_policy=skip_step', 'nan_policy'),
    ('--config.batch_size=4096', 'batch_size'),      # more than the 1,348 training digits
])
def test_what_the_reference_does_not_implement_is_one_line_and_exit_code_2(tmp_path, override,
                                                                           field):
  result = run_command(command('torch_train', '--workdir', tmp_path / 'run', override))
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'config error: config.{field}'), lines
  assert 'PyTorch reference' in lines[0] or field == 'batch_size'   # our trainer's own check
  assert not (tmp_path / 'run').exists()     # nothing written


def test_reference_learns_the_digits_and_writes_a_run_folder_like_ours(tmp_path):
  workdir = tmp_path / 'run'
  result = run_command(command('torch_train', '--workdir', workdir, '--threads', 1,
                               '--config.num_epochs=3'))
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((workdir / rundir.RESULTS_FILE).read_text())
  assert results['framework'] == 'torch'
  # the same network as ours: our ResNet-20 on the one-channel digits has this many parameters
  import jax
  model = create_model(model_fields('resnet20'))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1)),
                                             train=False))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))
  assert results['num_params'] == ours == 269_434
  assert results['steps'] == 63                    # 3 epochs of 21 steps of batch 64
  assert results['eval_top1'] > 0.7, results       # chance: 0.1
  records = rundir.read_metrics(str(workdir))
  evals = [r for r in records if 'eval_top1' in r]
  assert [r['epoch'] for r in evals] == [1.0, 2.0, 3.0]
  assert {'eval_loss', 'eval_top5', 'train_time_s'} <= set(evals[-1])
  for r in evals:   # every one of the 449 test digits counted once (the last batch is padded)
    assert r['eval_top1'] * 449 == pytest.approx(round(r['eval_top1'] * 449), abs=1e-6)
  times = [r['train_time_s'] for r in evals]
  assert times == sorted(times) and times[0] > 0
  logs = [r for r in records if 'train_loss' in r]
  assert {'train_top1', 'lr', 'images_per_sec'} <= set(logs[-1])
  # our loop's windows: every log_every (21) steps and at each evaluation (also 21 here)
  assert [r['step'] for r in logs] == [21, 42, 63]
  quick = default.get_config()
  quick.num_epochs = 3.0
  _, schedule, _ = build_optimizer(quick, 1_348)
  assert [r['lr'] for r in logs] == pytest.approx(
      [float(schedule(r['step'] - 1)) for r in logs], rel=1e-4)   # each window's last update
  saved = rundir.read_config(str(workdir))
  assert saved['model']['depth'] == 20 and rundir.framework_of(saved) == 'torch'
  # beside a run of ours (the same config, without the framework key) the plots label both
  from resnet_flax.experiments import plotting
  ours = tmp_path / 'ours'
  ours.mkdir()
  (ours / rundir.CONFIG_FILE).write_text(json.dumps(
      {k: v for k, v in saved.items() if k != rundir.FRAMEWORK_KEY}))
  (ours / rundir.METRICS_FILE).write_text((workdir / rundir.METRICS_FILE).read_text())
  labels = sorted(r.label for r in plotting.load_runs([str(workdir), str(ours)]))
  assert labels == ['framework=jax', 'framework=torch']
  # a second run into the same folder is refused: the reference does not resume
  again = run_command(command('torch_train', '--workdir', workdir, '--config.num_epochs=1'))
  assert again.returncode == 2
  assert again.stderr.strip().startswith('workdir error:') and 'already holds a run' in \
      again.stderr, again.stderr
  assert os.path.getsize(workdir / rundir.METRICS_FILE) > 0
