"""Every config file loads and validates, and the paper recipes hold the papers' numbers."""

import glob
import importlib.util
import os

import pytest

from resnet_flax import config as configuration
from resnet_flax.tools import model_stats
from resnet_flax.models import create_model

from conftest import REPO

CONFIGS = sorted(os.path.relpath(p, REPO) for p in
                 glob.glob(os.path.join(REPO, 'configs', '**', '*.py'), recursive=True)
                 if not p.endswith('__init__.py'))


def load(relpath):
  spec = importlib.util.spec_from_file_location('config_under_test', os.path.join(REPO, relpath))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('relpath', CONFIGS)
def test_config_loads_and_validates(relpath):
  config = load(relpath)
  configuration.validate(config, device_count=1)
  create_model(config.model)


def test_paper_recipes():
  c = load('configs/paper/cifar10_resnet.py')
  assert (c.data.train_split, c.data.eval_split, c.batch_size) == ('train[:45000]', 'test', 128)
  assert (c.num_train_steps, tuple(c.schedule.boundaries_steps)) == (64_000, (32_000, 48_000))
  assert (c.schedule.base_lr, c.optimizer.momentum, c.optimizer.weight_decay) == (0.1, 0.9, 1e-4)
  assert (c.model.depth, c.model.version, c.model.shortcut) == (20, 'v1', 'A')

  c = load('configs/paper/cifar10_preact.py')
  assert (c.model.depth, c.model.version, c.model.block) == (164, 'v2', 'bottleneck')
  assert (c.schedule.warmup_steps, c.schedule.warmup_type, c.schedule.warmup_init_lr) == (
      400, 'constant', 0.01)
  assert c.data.train_split == 'train'
  # ResNet-164 has 1.7M parameters (He et al. 2016, Table 3)
  assert round(model_stats.count_variables(create_model(c.model), 32)['params'] / 1e6, 1) == 1.7

  c = load('configs/paper/cifar10_plain_vs_residual.py')
  assert (c.model.depth, c.model.residual) == (20, False)

  c = load('configs/paper/imagenet_resnet.py')
  assert (c.model.depth, c.model.version, c.num_epochs, c.batch_size) == (50, 'v1', 90, 256)
  assert (c.schedule.name, tuple(c.schedule.boundaries_epochs)) == ('step', (30, 60))

  c = load('configs/paper/imagenette.py')
  assert (c.model.depth, c.model.num_classes, c.data.image_size) == (18, 10, 128)


def test_modern_recipes():
  c = load('configs/paper/imagenet_rsb_a3.py')
  assert (c.model.name, c.model.zero_init_residual, c.model.drop_path_rate) == (
      'resnet50', True, 0.0)
  assert (c.data.image_size, c.data.eval_image_size, c.data.eval_crop_fraction) == (
      160, 224, 0.95)
  assert (c.batch_size, c.num_epochs, c.dtype) == (2048, 100, 'bfloat16')
  assert (c.optimizer.name, c.optimizer.weight_decay, c.optimizer.weight_decay_mode,
          c.optimizer.weight_decay_exclude) == ('lamb', 0.02, 'decoupled', 'bn_and_bias')
  assert (c.schedule.name, c.schedule.base_lr, c.schedule.base_batch_size,
          c.schedule.warmup_epochs) == ('cosine', 8e-3, 2048, 5)
  assert (c.loss, c.label_smoothing, c.mixup_alpha, c.cutmix_alpha, c.mixup_switch_prob) == (
      'bce', 0.0, 0.1, 1.0, 0.5)
  assert (c.data.auto_augment, c.data.randaugment_num_ops, c.data.randaugment_magnitude,
          c.data.randaugment_magnitude_std, c.data.random_erasing) == (
              'randaugment', 2, 6.0, 0.5, 0.0)
  assert c.ema_decay == 0.0

  c = load('configs/paper/cifar10_stochastic_depth.py')
  assert (c.model.name, c.model.version, c.model.drop_path_rate) == ('preact_resnet164', 'v2',
                                                                      0.5)
  assert (c.num_train_steps, c.num_epochs, c.batch_size) == (-1, 500, 128)
  assert (c.schedule.name, tuple(c.schedule.boundaries_epochs), c.optimizer.nesterov) == (
      'step', (250, 375), True)
  # another depth from the command line keeps the recipe's stochastic depth
  c.model.name = 'preact_resnet1001'
  configuration.select_model_name(c, {'model.name': 'preact_resnet1001'})
  assert (c.model.depth, c.model.drop_path_rate) == (1001, 0.5)


@pytest.mark.parametrize('epochs', [30, 60])
def test_the_budget_recipe_spans_its_budget(epochs):
  """configs/paper/cifar10_budget.py: the paper's network, data, batch, optimizer and weight
  decay; `num_epochs` is the budget, and the cosine decay spans exactly that many epochs after
  one warm-up epoch from lr 0.01."""
  from resnet_flax.train.build import build_optimizer
  c = load('configs/paper/cifar10_budget.py')
  assert (c.model.depth, c.model.version, c.model.shortcut, c.data.preprocess) == (
      20, 'v1', 'A', 'cifar')
  assert (c.data.train_split, c.data.eval_split, c.batch_size) == ('train[:45000]', 'test', 128)
  assert (c.optimizer.momentum, c.optimizer.weight_decay, c.optimizer.weight_decay_mode) == (
      0.9, 1e-4, 'l2')
  assert c.num_epochs == 30
  c.num_epochs = float(epochs)
  plan, schedule, _ = build_optimizer(c, 45_000)
  per_epoch = 45_000 // 128
  assert (plan.steps_per_epoch, plan.total_steps) == (per_epoch, epochs * per_epoch)
  assert float(schedule(0)) == pytest.approx(0.01)
  assert float(schedule(per_epoch)) == pytest.approx(0.1)
  middle = per_epoch + (plan.total_steps - per_epoch) // 2
  assert float(schedule(middle)) == pytest.approx(0.05, rel=1e-2)
  assert float(schedule(plan.total_steps)) == pytest.approx(0.0, abs=1e-6)
