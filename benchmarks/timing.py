"""Timing helper shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Callable
import statistics
import time
from typing import Any


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
