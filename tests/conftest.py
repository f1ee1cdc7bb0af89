"""Test set-up and the helpers the test modules share.

At import: 8 CPU devices (multi-device tests on a CPU machine) and a compilation cache, both
configured before JAX runs anything. Then:

* `REPO`, `shared_data(name)`: the real datasets beside the repository (`../shared/datasets/`);
  a test that needs one skips with the reason when it is absent, and fails instead when
  `RESNET_FLAX_REQUIRE_SHARED_DATA=1` (what CI sets, so CI never skips them silently);
* `tiny_config(**overrides)`: ResNet-8 on 8x8 synthetic images, compiles in seconds;
  `mnist_config(**overrides)`: the same network on 6,000 real MNIST digits (learning tests);
  `run_steps`, `assert_trees_close`, `assert_trees_differ`, `assert_bitwise_equal`;
* torch references: `torch_reference(out, modules, args)` runs tests/torch_reference.py in a
  separate process (skips when a module of `modules` is missing); `flax_logits`;
* the command line: `subprocess_env()`, `command(NAME, ...)` (`scripts/NAME.py`),
  `config_text(backend, root)` (the tiny model as a config file for a subprocess);
* run folders: `saved_steps`, `metrics_events`, `without_time`, `final_state`, `wait_for`
  (waits while a process makes progress, not for a fixed time).
"""

import json
import os
import sys
import time

import jax
import numpy as np
import pytest

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('RESNET_FLAX_JAX_CACHE',
                                 os.path.join(os.path.dirname(__file__), '..', '.jax_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

from resnet_flax import config as config_lib  # noqa: E402
from resnet_flax import rundir  # noqa: E402
from resnet_flax.models import model_fields  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.join(REPO, '..', 'shared', 'datasets')
REQUIRE_SHARED_DATA = os.environ.get('RESNET_FLAX_REQUIRE_SHARED_DATA', '') not in ('', '0')
TIME_FIELDS = ('train_time_s', 'compile_time_s', 'images_per_sec', 'data_wait_fraction')


def shared_data(name: str) -> str:
  """The path of `../shared/datasets/NAME`; skips the test (fails under
  RESNET_FLAX_REQUIRE_SHARED_DATA=1) when it is absent."""
  path = os.path.join(SHARED_DATASETS, name)
  if not os.path.exists(path):
    why = f'{os.path.normpath(path)} is absent (the real datasets beside the repository)'
    if REQUIRE_SHARED_DATA:
      pytest.fail(f'{why}, and RESNET_FLAX_REQUIRE_SHARED_DATA is set')
    pytest.skip(why)
  return path


def unpacked_shared(name: str) -> str:
  """`NAME.tar.gz` of the shared datasets, unpacked once into the cache folder
  (`RESNET_FLAX_DATA_CACHE`, default ~/.cache/resnet_flax); skips as `shared_data` does."""
  import shutil
  import tarfile
  import tempfile
  cache = os.environ.get('RESNET_FLAX_DATA_CACHE', os.path.expanduser('~/.cache/resnet_flax'))
  target = os.path.join(cache, name)
  if os.path.isdir(target):
    return target
  archive = shared_data(name + '.tar.gz')
  os.makedirs(cache, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix=f'.{name}-unpacking-', dir=cache)
  try:
    with tarfile.open(archive) as tar:
      if hasattr(tarfile, 'data_filter'):
        tar.extractall(scratch, filter='data')
      else:  # Python without extraction filters
        tar.extractall(scratch)
    try:
      os.rename(os.path.join(scratch, name), target)   # atomic: readers see all or nothing
    except OSError:
      if not os.path.isdir(target):                    # not just a lost race with a worker
        raise
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return target


def set_fields(config, overrides: dict):
  """`config` with 'a.b' = value overrides applied."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split('.')
    for part in path:
      node = node[part]
    node[last] = value
  return config


def tiny_config(**overrides):
  """ResNet-8 (CIFAR family, width 4) on 8x8 synthetic images: compiles in seconds."""
  c = config_lib.base_config()
  c.model.update(model_fields('resnet20'))
  c.model.depth = 8
  c.model.width = 4
  c.model.num_classes = 10
  c.data.source = 'synthetic'
  c.data.image_size = 8
  c.data.channels = 3
  c.data.synthetic_num_classes = 10
  c.data.synthetic_train_size = 64
  c.data.synthetic_eval_size = 37
  c.data.random_crop_pad = 2
  c.data.random_flip = True
  c.data.mean = (127.0,)
  c.data.std = (64.0,)
  c.batch_size = 16
  c.num_train_steps = 2
  c.schedule.name = 'constant'
  c.schedule.base_lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-3
  c.log_tensorboard = False
  c.progress_bar = False
  return set_fields(c, overrides)


def mnist_config(**overrides):
  """`tiny_config`'s ResNet-8 (width 8) on 6,000 MNIST training and 2,000 test digits, batch 64,
  240 steps of cosine decay from 0.1 (skips as `shared_data` when MNIST is absent)."""
  return tiny_config(**{'model.width': 8, 'data.source': 'npz',
                        'data.dir': shared_data('mnist.npz'), 'data.image_size': 0,
                        'data.channels': 0, 'data.random_crop_pad': 0,
                        'data.random_flip': False, 'data.train_split': 'train[:6000]',
                        'data.eval_split': 'test[:2000]', 'data.mean': (33.0,),
                        'data.std': (79.0,), 'batch_size': 64, 'num_train_steps': 240,
                        'schedule.name': 'cosine', 'eval_every_steps': 240,
                        'log_every_steps': 40, **overrides})


def torch_reference(out, modules, args):
  """Runs tests/torch_reference.py ARGS (with `out`, its output folder, among them) in a separate
  process: the test process never imports torch. Skips when a module of `modules` is missing."""
  import importlib.util
  import subprocess
  missing = [m for m in modules if importlib.util.find_spec(m) is None]
  if missing:
    pytest.skip(f'{", ".join(missing)} missing: test requirements, pip install -r '
                f'requirements-test.txt')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'torch_reference.py'),
                           *map(str, args)], capture_output=True, text=True, timeout=900,
                          env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return out


def flax_logits(fields, params, batch_stats, nchw):
  """Eval-mode logits of converted weights on torch-layout (N, C, H, W) images."""
  import functools
  from resnet_flax.models import create_model
  model = create_model(fields)
  apply = jax.jit(functools.partial(model.apply, train=False))
  return np.asarray(apply({'params': params, 'batch_stats': batch_stats},
                          nchw.transpose(0, 2, 3, 1)))


def run_steps(config, devices, num_steps=2):
  """Runs `num_steps` train steps; returns (host state, list of host metrics)."""
  from resnet_flax.train.build import build_run
  run = build_run(config, devices=devices)
  state, metrics = run.state, []
  for step in range(num_steps):
    state, m = run.p_train(state, run.par.put_batch(run.train_batches.batch(step)))
    metrics.append(run.par.host_metrics(m))
  return run.par.host_state(state), metrics


def assert_trees_close(a, b, tol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=tol, atol=tol), a, b)


def assert_trees_differ(a, b):
  diffs = [float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  assert max(diffs) > 1e-4


def assert_bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


# --- the command line -------------------------------------------------------------------------

def subprocess_env(**extra) -> dict:
  """The environment of a command under test: this checkout's package, the CPU, the shared
  compilation cache."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['PYTHONPATH'] = REPO
  env['JAX_PLATFORMS'] = 'cpu'
  env['JAX_COMPILATION_CACHE_DIR'] = os.environ.get(
      'RESNET_FLAX_JAX_CACHE', os.path.join(REPO, '.jax_cache'))
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.5'
  env.update(extra)
  return env


def command(name: str, *args) -> list[str]:
  """The command line of `scripts/NAME.py ARGS`."""
  return [sys.executable, os.path.join(REPO, 'scripts', f'{name}.py'), *map(str, args)]


def train_cmd(config_path, workdir, *extra) -> list[str]:
  return command('train', '--config', config_path, '--workdir', workdir, *extra)


def run_command(cmd, timeout=600, **env):
  """Runs a command to its end (`timeout` only stops a hung one); returns the CompletedProcess."""
  import subprocess
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                        env=subprocess_env(**env))


# The tiny_config model and data as a config file for a training subprocess.
_CONFIG_FILE = '''
from resnet_flax.config import base_config
from resnet_flax.models import model_fields


def get_config():
  c = base_config()
  c.model.update(model_fields('resnet20'))
  c.model.depth = 8
  c.model.width = 4
  c.model.num_classes = 10
{data_lines}
  c.data.random_crop_pad = 2
  c.data.random_flip = True
  c.data.mean = (127.0,)
  c.data.std = (64.0,)
  c.batch_size = 16
  c.num_train_steps = 60
  c.schedule.name = 'cosine'
  c.schedule.base_lr = 0.1
  c.schedule.warmup_steps = 5
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-3
  c.ema_decay = 0.9
  c.log_every_steps = 4
  c.eval_every_steps = 20
  c.checkpoint_every_steps = 6     # not a multiple of log_every: the metric window is saved
  c.log_tensorboard = False
  c.progress_bar = False
  return c
'''

_DATA_LINES = {
    'memory': '''  c.data.source = 'synthetic'
  c.data.image_size = 8
  c.data.channels = 3
  c.data.synthetic_num_classes = 10
  c.data.synthetic_train_size = 64
  c.data.synthetic_eval_size = 37''',
    'tfdata': '''  c.data.source = 'folder'
  c.data.backend = 'tfdata'
  c.data.dir = {root!r}
  c.data.shuffle_buffer = 32''',
    'grain': '''  c.data.source = 'folder'
  c.data.backend = 'grain'
  c.data.dir = {root!r}
  c.data.worker_count = 0''',
}
# the in-memory data with ResNet-20's depth, its stages' units 2-3 as one nn.scan
_DATA_LINES['scan'] = _DATA_LINES['memory'] + (
    "\n  c.model.depth = 20\n  c.model.scan_units = 'on'")


def image_tree(root):
  """10 classes of 8x8 PNGs: 64 train and 37 test images (the synthetic shapes)."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (('train', 64), ('test', 37)):
    for i in range(n):
      folder = os.path.join(root, split, f'class{i % 10}')
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
          os.path.join(folder, f'{i:03d}.png'))
  return root


def config_text(backend, root):
  """The tiny model as a config file, on synthetic data ('memory'; 'scan': at depth 20 with
  scanned stages) or a PNG folder (written under `root`) read by tf.data ('tfdata') or by Grain
  ('grain', in the training process: worker processes give the same batches, which
  test_data_grain checks, and would cost seconds of start-up per stream)."""
  lines = _DATA_LINES[backend]
  if backend in ('tfdata', 'grain'):
    lines = lines.format(root=str(image_tree(os.path.join(root, 'images'))))
  return _CONFIG_FILE.format(data_lines=lines)


# --- run folders ------------------------------------------------------------------------------

def saved_steps(workdir):
  folder = os.path.join(workdir, rundir.CHECKPOINTS)
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def without_time(record):
  return {k: v for k, v in record.items() if k not in TIME_FIELDS}


def metrics_events(workdir):
  return [without_time(r) for r in rundir.read_metrics(str(workdir))]


def results(workdir) -> dict:
  with open(os.path.join(workdir, rundir.RESULTS_FILE)) as f:
    return json.load(f)


def final_state(workdir):
  from resnet_flax.checkpoint.pretrained import load_checkpoint
  step, state, _, _ = load_checkpoint(str(workdir))
  return step, state


def wait_for(procs, predicate, *, progress=None, stall_s=300.0, poll=0.002,
             until_all_exit=False):
  """Waits until `predicate()`; True then, False when a process of `procs` ended first (with
  `until_all_exit`, until every process ended; True then).

  There is no fixed deadline: a loaded machine may be slow. The wait fails only when nothing
  moves for `stall_s` seconds: `progress()` (default: the processes' CPU time) stays the same.
  """
  procs = procs if isinstance(procs, (list, tuple)) else [procs]
  progress = progress or (lambda: tuple(_cpu_ticks(p.pid) for p in procs))
  if until_all_exit:
    predicate = lambda: all(p.poll() is not None for p in procs)  # noqa: E731
  last, since = progress(), time.time()
  while True:
    if predicate():
      return True
    if not until_all_exit and any(p.poll() is not None for p in procs):
      return bool(predicate())
    now = progress()
    if now != last:
      last, since = now, time.time()
    elif time.time() - since > stall_s:
      raise AssertionError(f'no progress for {stall_s:.0f} s while waiting for the processes')
    time.sleep(poll)


def _cpu_ticks(pid: int) -> int:
  """User + system CPU ticks of a process and its children so far (Linux /proc)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    return sum(int(x) for x in fields[11:15])
  except (OSError, IndexError, ValueError):
    return -1
