"""Joining a multi-process JAX cluster, before any other JAX call; what processes agree on.

`config.distributed.coordinator/num_processes/process_id` start `jax.distributed` explicitly;
`config.distributed.auto=True` lets JAX detect SLURM, Open MPI or Cloud TPU environments.
With an explicit coordinator every process first checks in with process 0 (`rendezvous`), so a
wrong address, a busy port or a process that never starts is one line, not JAX's abort.

A lost process: every process sends heartbeats to the coordination service (run by process 0).
When one stops (it crashed, was killed, its host went away) for `heartbeat_timeout_s` seconds,
the service reports "the following tasks are unhealthy (stopped sending heartbeats): <ids>"
(task id = process id) and JAX terminates every remaining process with that message; if
process 0 itself is lost, the others fail to reach the service and terminate the same way.
A run therefore never hangs forever in a collective waiting for a dead peer. See
docs/MULTIHOST.md.
"""

import inspect
import math
import sys

import jax
import numpy as np

from resnet_flax.errors import ConfigError
from resnet_flax.train import rendezvous


def _initialize(**kwargs) -> None:
  """jax.distributed.initialize with the keyword arguments this JAX version accepts."""
  accepted = inspect.signature(jax.distributed.initialize).parameters
  jax.distributed.initialize(**{k: v for k, v in kwargs.items()
                                if v is not None and (k in accepted or k in (
                                    'coordinator_address', 'num_processes', 'process_id'))})


def _timeouts(dist_cfg) -> dict:
  def get(name, default):
    try:
      value = dist_cfg[name]
    except (KeyError, AttributeError):
      return default
    return math.ceil(value) if value and value > 0 else default   # JAX takes whole seconds
  return {'heartbeat_timeout_seconds': get('heartbeat_timeout_s', None),
          'initialization_timeout': get('initialization_timeout_s', None)}


def maybe_initialize(dist_cfg) -> bool:
  """Initialises jax.distributed when the config asks for it; True if it did."""
  if dist_cfg['coordinator']:
    if dist_cfg['num_processes'] < 1 or dist_cfg['process_id'] < 0:
      raise ConfigError('config.distributed.coordinator is set: also set '
                        'config.distributed.num_processes (>= 1) and config.distributed.process_id')
    rendezvous.split_address(dist_cfg['coordinator'])
    if dist_cfg['process_id'] >= dist_cfg['num_processes']:
      raise ConfigError(f"config.distributed.process_id={dist_cfg['process_id']} must be below "
                        f"num_processes={dist_cfg['num_processes']}")
    wait_s = dist_cfg['initialization_timeout_s']
    if not wait_s or wait_s <= 0:
      raise ConfigError(f'config.distributed.initialization_timeout_s={wait_s!r}: give the '
                        f'seconds every process may take to join (e.g. 300)')
    rendezvous.check_in(str(dist_cfg['coordinator']), dist_cfg['num_processes'],
                        dist_cfg['process_id'], float(wait_s))
    _initialize(coordinator_address=dist_cfg['coordinator'],
                num_processes=dist_cfg['num_processes'],
                process_id=dist_cfg['process_id'], **_timeouts(dist_cfg))
  elif dist_cfg['auto']:
    _initialize(**_timeouts(dist_cfg))
  else:
    return False
  print(f'process {jax.process_index()} of {jax.process_count()} joined the cluster '
        f'({jax.local_device_count()} local of {jax.device_count()} devices); a process '
        f'silent for {_timeouts(dist_cfg)["heartbeat_timeout_seconds"] or "JAX default"} s '
        f'counts as lost and stops the run', file=sys.stderr, flush=True)
  return True


def process_index() -> int:
  return jax.process_index()


def same_on_every_process(value: int) -> bool:
  """True if every process passes the same `value` (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return True
  from jax.experimental import multihost_utils
  values = multihost_utils.process_allgather(np.asarray([value], np.int64))
  return bool((np.asarray(values) == value).all())


def any_process(flag: bool) -> bool:
  """True if `flag` is true on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray([1 if flag else 0], np.int32))
  return bool(np.asarray(flags).max() > 0)
