"""`profile-step`: the time of a train or eval step per kind of operation, from a thunk trace."""

import pytest

from conftest import command, run_command, tiny_config
from resnet_flax.tools import step_profile
from resnet_flax.tools.hlo_kinds import KINDS

GRADIENTS = {'conv input-gradient', 'conv weight-gradient'}


def _kinds(record) -> set:
  rows = record['kinds']
  assert rows and all(r['kind'] in KINDS and r['ms_per_step'] > 0 for r in rows), rows
  assert len({r['kind'] for r in rows}) == len(rows)
  rounding = 0.001 * len(rows)
  assert sum(r['ms_per_step'] for r in rows) == pytest.approx(record['busy_ms_per_step'],
                                                              abs=rounding)
  assert sum(r['fraction'] for r in rows) == pytest.approx(1.0, abs=1e-4 * len(rows))
  assert all(0 <= r['layout_ms_per_step'] <= r['ms_per_step'] + 0.001 for r in rows)
  return {r['kind'] for r in rows}


def test_a_train_step_splits_into_forward_and_gradient_convs_and_the_rest():
  record = step_profile.profile(tiny_config(), mode='train', steps=2, warmup=1)
  kinds = _kinds(record)
  assert {'conv forward', 'conv weight-gradient'} <= kinds, kinds
  assert record['mode'] == 'train' and record['batch_size'] == 16
  assert record['xla_options'][step_profile.TRACE_OPTION] == 'True'


def test_an_eval_step_has_no_gradient_kinds():
  record = step_profile.profile(tiny_config(), mode='eval', steps=2, warmup=0)
  kinds = _kinds(record)
  assert 'conv forward' in kinds and not kinds & GRADIENTS, kinds


def test_the_command_refuses_a_bad_config_field_in_one_line():
  p = run_command(command('profile_step', '--config', 'cifar10', '--config.model.bogus=1'))
  lines = [line for line in p.stderr.splitlines() if line.strip()]
  assert p.returncode == 2 and len(lines) == 1 and 'model' in lines[0] and 'bogus' in lines[0], \
      p.stderr[-2000:]
