"""Timing and machine-description helpers shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Callable
import os
import platform
import statistics
import subprocess
import time
from typing import Any

import jax


def median_seconds(fn: Callable[[], Any], runs: int) -> dict[str, float]:
  """Times `fn()`: one first call (warm-up, compilation), then `runs` more.

  Returns:
    `{'first_s': seconds of the first call, 'median_s': median seconds of
    the other calls, 'runs': runs}`.
  """
  if runs < 1:
    raise ValueError(f'runs must be >= 1, got {runs!r}.')
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {'first_s': first, 'median_s': statistics.median(times),
          'runs': runs}


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def load() -> dict[str, Any]:
  """The machine's load: `uptime`'s line and the load averages."""
  try:
    uptime = subprocess.run(['uptime'], capture_output=True, text=True,
                            check=False).stdout.strip()
  except OSError:
    uptime = ''
  return {'uptime': uptime, 'loadavg': list(os.getloadavg())}


def devices() -> dict[str, Any]:
  """What `jax.devices()` reports: platform, device kind and count."""
  devs = jax.devices()
  return {'platform': devs[0].platform, 'device_kind': devs[0].device_kind,
          'count': len(devs), 'jax_devices': [str(d) for d in devs]}


def machine() -> dict[str, Any]:
  """The host CPU, its cores and the jax devices the figures come from."""
  return {'cpu': cpu_name(), 'cores': os.cpu_count(), **devices()}
