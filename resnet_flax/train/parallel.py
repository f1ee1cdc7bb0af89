"""Data parallelism around the pure step functions: `jit` over a device `Mesh` or `pmap`.

Both modes implement one declared interface (`Parallel`: `axis_name`, `put_state`,
`put_batch`, `compile_train`, `compile_eval`, `host_state`, `host_metrics`), so the loop does
not care which one runs.

* `jit`: one `Mesh` over every device of every process with a single axis 'data'; batches are
  global `jax.Array`s sharded along it (assembled from each process's share with
  `jax.make_array_from_process_local_data`), the state is replicated. BatchNorm statistics are
  over the global batch because the model sees the global batch.
* `pmap`: each local device gets a slice of this process's batch; gradients are averaged and
  BatchNorm statistics are synchronised over the named axis.
"""

from typing import Any, Callable, Optional, Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_flax import compiler
from resnet_flax.errors import ConfigError

BATCH_AXIS = 'data'


class Parallel(Protocol):
  """The interface the loop, benchmarks and tools use; both modes implement it."""
  mode: str                       # 'jit' or 'pmap' (config.parallelism)
  axis_name: Optional[str]        # the device axis for BatchNorm and collectives (pmap only)
  num_devices: int                # over all processes
  compiler_options: str           # compiler.CHOICES, for the steps compiled next
  block: str                      # compiler.BLOCKS: the unit type of the model compiled next

  def put_state(self, state: Any) -> Any:
    """A host state (numpy or jax arrays) on the devices, replicated."""

  def put_batch(self, host_batch: dict) -> dict:
    """This process's share of a global batch -> the device batch the steps take."""

  def compile_train(self, train_step: Callable) -> Callable:
    """train_step(state, batch) -> (state, metrics), compiled; the state is donated."""

  def compile_eval(self, eval_step: Callable) -> Callable:
    """eval_step(state, batch) -> summed metrics, compiled."""

  def host_state(self, state: Any) -> Any:
    """One copy of the device state on the host."""

  def host_metrics(self, metrics: Any) -> Any:
    """One copy of (summed) metrics on the host."""


class JitParallel:
  """jax.jit with NamedSharding over a 1-D mesh of all devices."""
  mode = 'jit'
  axis_name = None
  block = compiler.DEFAULT_BLOCK

  def __init__(self, devices=None, compiler_options: str = compiler.DEFAULT):
    devices = jax.devices() if devices is None else devices
    self.platform = devices[0].platform
    self.compiler_options = compiler_options
    self.mesh = Mesh(np.asarray(devices), (BATCH_AXIS,))
    self.num_devices = len(devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(BATCH_AXIS))

  def put_state(self, state):
    return jax.device_put(state, self.replicated)

  def put_batch(self, host_batch):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), host_batch)

  def compile_train(self, train_step):
    return compiler.jit(train_step, self.compiler_options, self.platform, 'train', self.block,
                        in_shardings=(self.replicated, self.batch_sharding),
                        out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

  def compile_eval(self, eval_step):
    return compiler.jit(eval_step, self.compiler_options, self.platform, 'eval', self.block,
                        in_shardings=(self.replicated, self.batch_sharding),
                        out_shardings=self.replicated)

  def host_state(self, state):
    return jax.device_get(state)

  def host_metrics(self, metrics):
    return jax.device_get(metrics)


class PmapParallel:
  """jax.pmap over this process's local devices; collectives over the axis 'batch'. (pmap takes
  no compiler options: `compiler_options` is accepted for the common signature.)"""
  mode = 'pmap'
  axis_name = 'batch'
  block = compiler.DEFAULT_BLOCK   # unused, as compiler_options

  def __init__(self, devices=None, compiler_options: str = compiler.DEFAULT):
    if jax.process_count() > 1:   # its collectives would stay within each process
      raise ConfigError('config.parallelism=pmap runs on the devices of one process; with '
                        f'{jax.process_count()} processes use config.parallelism=jit (the '
                        'default), which shards over every process')
    self.compiler_options = compiler_options   # unused: jax.pmap takes none
    self.devices = jax.local_devices() if devices is None else devices
    self.num_local = len(self.devices)
    self.num_devices = self.num_local * jax.process_count()
    self._put = jax.pmap(lambda x: x, devices=self.devices)

  def put_state(self, state):
    stacked = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (self.num_local,) + np.shape(x)), state)
    return self._put(stacked)

  def put_batch(self, host_batch):
    def split(x):
      if x.shape[0] % self.num_local:
        raise ValueError(f'a batch of {x.shape[0]} does not split over {self.num_local} devices')
      return x.reshape((self.num_local, x.shape[0] // self.num_local) + x.shape[1:])
    return jax.tree.map(split, host_batch)

  def compile_train(self, train_step):
    return jax.pmap(train_step, axis_name=self.axis_name, devices=self.devices,
                    donate_argnums=(0,))

  def compile_eval(self, eval_step):
    return jax.pmap(eval_step, axis_name=self.axis_name, devices=self.devices)

  def host_state(self, state):
    return jax.tree.map(first_replica, state)

  def host_metrics(self, metrics):
    return jax.tree.map(first_replica, metrics)


def first_replica(x) -> np.ndarray:
  """The first local device's copy of a pmapped array, read from that device alone: indexing
  the global array (`x[0]`) would run a program on every device for it."""
  return np.asarray(x.addressable_data(0))[0, ...]


MODES = {'jit': JitParallel, 'pmap': PmapParallel}   # config.PARALLELISM, checked by validate


def create(mode: str, devices=None, compiler_options: str = compiler.DEFAULT) -> Parallel:
  """The `mode` ('jit' | 'pmap') over `devices`, compiling with `compiler_options`
  (`compiler.CHOICES`)."""
  return MODES[mode](devices, compiler_options)
