"""The host a measurement ran on: CPU model and vector-instruction flags (what `lscpu` prints
as "Model name" and "Flags", read from /proc/cpuinfo), the cores this process may use, the
load average, the user's `XLA_FLAGS`. Standard library only (no JAX, no torch)."""

import os
import platform
from typing import Optional


def cores() -> int:
  """The CPUs this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _cpuinfo_field(name: str) -> Optional[str]:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, sep, value = line.partition(':')
        if sep and key.strip() == name:
          return value.strip()
  except OSError:
    pass
  return None


def cpu_model() -> str:
  return _cpuinfo_field('model name') or platform.processor() or platform.machine()


def vector_flags() -> list[str]:
  """The AVX (and AMX) flags of the CPU, sorted; [] where /proc/cpuinfo is not readable."""
  flags = (_cpuinfo_field('flags') or '').split()
  return sorted(f for f in flags if f.startswith(('avx', 'amx')))


def load_average() -> Optional[float]:
  """The 1-minute load average (runnable processes of the whole machine), where known."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def describe() -> dict:
  return {'cpu_model': cpu_model(), 'vector_flags': vector_flags(), 'cores': cores(),
          'cpu_count': os.cpu_count(), 'python': platform.python_version(),
          'load_average_1m': load_average(), 'xla_flags': os.environ.get('XLA_FLAGS', '')}
