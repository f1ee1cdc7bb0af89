"""`compare-variants`: config variants measured side by side in alternating rounds."""

import json

import pytest

from conftest import command, run_command, tiny_config
from resnet_flax.errors import ConfigError
from resnet_flax.tools import variants


def test_memory_grows_with_the_batch():
  """XLA's temporary memory of the train step, per variant; the ratio is to the first."""
  record = variants.compare(tiny_config(), [{}, {'batch_size': 64}], kind='memory')
  small, large = record['variants']
  assert record['median'][large] > 2 * record['median'][small] > 0
  assert record['median_ratio'][large] == pytest.approx(
      record['median'][large] / record['median'][small])
  assert record['median_ratio'][small] == 1.0


def test_step_times_alternate_and_are_quoted_as_ratios():
  record = variants.compare(tiny_config(), [{}, {'model.conv_impl': 'xla'}], kind='eval',
                            rounds=2, steps=1, warmup=0)
  assert record['variants'] == ['(config)', 'model.conv_impl=xla']
  assert all(len(v) == 2 and min(v) > 0 for v in record['per_round'].values())
  first, second = (record['per_round'][n] for n in record['variants'])
  ratios = sorted(b / a for a, b in zip(first, second))
  assert record['median_ratio']['model.conv_impl=xla'] == pytest.approx(sum(ratios) / 2)


def test_an_unknown_field_or_a_bad_value_is_refused_before_anything_runs():
  with pytest.raises(ConfigError, match='no field'):
    variants.compare(tiny_config(), [{}, {'model.conv_impls': 'xla'}])
  with pytest.raises(ConfigError, match='model.depth'):
    variants.compare(tiny_config(), [{}, {'model.depth': 'deep'}])


def test_the_command_prints_a_record_and_refuses_bad_input_in_one_line():
  p = run_command(command('compare_variants', '--config', 'cifar10', '--config.batch_size=8',
                          '--config.model.depth=8', '--variant', '',
                          '--variant', 'model.conv_impl=xla;compiler_options=none',
                          '--what', 'eval', '--rounds', '1', '--steps', '1', '--json'))
  assert p.returncode == 0, p.stderr[-2000:]
  record = json.loads(p.stdout.strip().splitlines()[-1])
  assert record['variants'] == ['(config)', 'model.conv_impl=xla,compiler_options=none']
  assert record['kind'] == 'eval' and len(record['per_round']['(config)']) == 1
  p = run_command(command('compare_variants', '--config', 'cifar10', '--variant', '',
                          '--variant', 'model.bogus=1'))
  lines = [line for line in p.stderr.splitlines() if line.strip()]
  assert p.returncode == 2 and 'model.bogus' in lines[-1], p.stderr[-2000:]
