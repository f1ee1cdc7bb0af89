"""Test set-up: 8 CPU devices (multi-device tests on a CPU machine) and a compilation cache.

Both must be configured before JAX runs anything, so this module does it at import.
"""

import os

import jax

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('RESNET_FLAX_JAX_CACHE',
                                 os.path.join(os.path.dirname(__file__), '..', '.jax_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
