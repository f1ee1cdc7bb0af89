"""Gradient-flow diagnostics: per-layer numbers in network order, and the measured difference
between plain and residual networks at initialisation.

With BatchNorm the deep plain network's gradients do not vanish at initialisation (He et al.
2015, Sec. 4.1 say as much): they grow towards the input, more the deeper the network, while
the residual network keeps them within a small factor across its depth. The property tests
assert that, on our own models.
"""

import csv
import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from resnet_flax.experiments import gradient_flow
from resnet_flax.models import create_model, init_variables, model_fields
from resnet_flax.train import loop, steps


def _init_rows(name, depth, seed=0):
  fields = {**model_fields(name), 'depth': depth, 'width': 8}
  model = create_model(fields)
  images = jax.random.normal(jax.random.PRNGKey(seed + 1), (32, 16, 16, 3))
  labels = jax.random.randint(jax.random.PRNGKey(seed + 2), (32,), 0, 10)
  variables = init_variables(model, images[:1], jax.random.PRNGKey(seed))
  return gradient_flow.layer_statistics(model, variables['params'], variables['batch_stats'],
                                        images, labels, 10)


def test_layers_are_listed_in_network_order():
  rows = _init_rows('resnet20', 14)
  names = [r['layer'] for r in rows]
  assert names[0] == 'stem_conv' and names[-1] == 'head' and len(names) == 14
  assert names[1:5] == ['stage1_unit1/conv1', 'stage1_unit1/conv2', 'stage1_unit2/conv1',
                        'stage1_unit2/conv2']
  assert names[5] == 'stage2_unit1/conv1' and names[-2] == 'stage3_unit2/conv2'
  for r in rows:
    assert r['grad_norm'] > 0 and r['weight_norm'] > 0 and r['activation_rms'] > 0
    assert r['relative_grad'] == pytest.approx(r['grad_norm'] / r['weight_norm'])


@pytest.mark.parametrize('seed', [0, 1])
def test_plain_gradients_grow_towards_the_input_residual_ones_stay_level(seed):
  ratio = {(name, depth): gradient_flow.early_to_late_ratio(_init_rows(name, depth, seed))
           for name in ('plain20', 'resnet20') for depth in (8, 32)}
  # the deep plain net: early layers get much larger gradients than late ones ...
  # (measured: plain 24-28, residual 2.5-3.1 at depth 32; both 1.0-1.4 at depth 8)
  assert ratio['plain20', 32] > 5 * ratio['resnet20', 32]
  # ... and the imbalance grows with depth far faster without the shortcuts
  plain_growth = ratio['plain20', 32] / ratio['plain20', 8]
  residual_growth = ratio['resnet20', 32] / ratio['resnet20', 8]
  assert plain_growth > 4 * residual_growth


def test_diagnose_measures_at_init_and_after_training(tmp_path):
  config = tiny_config(num_train_steps=50)
  rows = gradient_flow.diagnose(config, ['plain20', 'resnet20'], steps=3, log=lambda *a: None,
                                model_overrides={'width': 4, 'depth': 8})
  assert [(m, s) for m, s in dict.fromkeys((r['model'], r['step']) for r in rows)] == [
      ('plain20', 0), ('plain20', 3), ('resnet20', 0), ('resnet20', 3)]
  assert all(sum(1 for r in rows if (r['model'], r['step']) == key) == 8
             for key in dict.fromkeys((r['model'], r['step']) for r in rows))
  before = [r['weight_norm'] for r in rows if r['model'] == 'plain20' and r['step'] == 0]
  after = [r['weight_norm'] for r in rows if r['model'] == 'plain20' and r['step'] == 3]
  assert not np.allclose(before, after)              # the steps trained the model
  path = gradient_flow.write_csv(rows, str(tmp_path / 'g.csv'))
  with open(path) as f:
    written = list(csv.DictReader(f))
  assert len(written) == 32 and float(written[0]['grad_norm']) == pytest.approx(rows[0]['grad_norm'])
  fig, data = gradient_flow.figure(rows)
  assert [len(ax.get_lines()) for ax in fig.axes] == [4, 4]
  assert data['relative_grad'][0][2] == [r['relative_grad'] for r in rows[:8]]


def test_per_stage_gradient_norms_cover_every_parameter():
  rows = {'stem_conv': {'kernel': np.full((3, 3, 3, 4), 1.0)},
          'stage1_unit1': {'conv1': {'kernel': np.full((2,), 3.0)}},
          'stage1_unit2': {'norm1': {'scale': np.full((2,), 4.0)}},
          'head': {'kernel': np.full((4,), 0.5), 'bias': np.zeros(4)}}
  squares = jax.device_get(steps.per_stage_grad_squares(rows))
  assert set(squares) == {'grad_norm_stem_sq', 'grad_norm_stage1_sq', 'grad_norm_head_sq'}
  assert squares['grad_norm_stem_sq'] == pytest.approx(108)
  assert squares['grad_norm_stage1_sq'] == pytest.approx(2 * 9 + 2 * 16)
  assert squares['grad_norm_head_sq'] == pytest.approx(1.0)


@pytest.mark.parametrize('parallelism', ['jit', 'pmap'])
def test_log_grad_norms_logs_each_stage_and_they_add_up(tmp_path, parallelism):
  config = tiny_config(num_train_steps=4, log_every_steps=2, log_grad_norms=True,
                       parallelism=parallelism)
  loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2])
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [r for r in map(json.loads, f) if 'train_loss' in r]
  assert len(records) == 2
  stages = ['grad_norm_stem', 'grad_norm_stage1', 'grad_norm_stage2', 'grad_norm_stage3',
            'grad_norm_head']
  for r in records:
    assert all(r[k] > 0 for k in stages)
    assert sum(r[k] ** 2 for k in stages) == pytest.approx(r['grad_norm'] ** 2, rel=1e-4)
