"""Joining a multi-process JAX cluster, before any other JAX call.

`config.distributed.coordinator/num_processes/process_id` start `jax.distributed` explicitly;
`config.distributed.auto=True` lets JAX detect SLURM, Open MPI or Cloud TPU environments.
"""

import jax


def maybe_initialize(dist_cfg) -> bool:
  """Initialises jax.distributed when the config asks for it; True if it did."""
  if dist_cfg['coordinator']:
    if dist_cfg['num_processes'] < 1 or dist_cfg['process_id'] < 0:
      raise ValueError('config.distributed.coordinator is set: also set '
                       'config.distributed.num_processes (>= 1) and config.distributed.process_id')
    if dist_cfg['process_id'] >= dist_cfg['num_processes']:
      raise ValueError(f"config.distributed.process_id={dist_cfg['process_id']} must be below "
                       f"num_processes={dist_cfg['num_processes']}")
    jax.distributed.initialize(coordinator_address=dist_cfg['coordinator'],
                               num_processes=dist_cfg['num_processes'],
                               process_id=dist_cfg['process_id'])
    return True
  if dist_cfg['auto']:
    jax.distributed.initialize()
    return True
  return False
