"""What a run reports while it works: logs, the metrics log, stage timings.

Output goes one way: a tqdm bar per training stage and absl logging for
everything else (resumes, per-epoch summaries, stage results); `log_info`
keeps the bars intact. `quiet_third_party_logs` keeps Orbax's per-save INFO
lines out of it. `MetricsLog` is the per-epoch `metrics.jsonl`, and
`StageTimer` charges wall time to the sections of a stage
(`benchmarks.pipeline` prints them).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
import contextlib
import logging as py_logging
import os
import time
from typing import Any

from absl import logging
import jax
import tqdm

import gmp_jax
from experiments.infra import workdir_layout

# Sections of a stage's wall time (`StageTimer`); the rest is 'other'.
# `runner.run_stage` records each stage's whole time as section 'total'.
SECTIONS = ('compile', 'step', 'sync', 'eval', 'checkpoint', 'data')

# gmp_jax/ and experiments/ (this file is experiments/infra/monitor.py).
_OUR_PACKAGES = tuple(
    os.path.dirname(os.path.abspath(m)) + os.sep
    for m in (gmp_jax.__file__, os.path.dirname(os.path.abspath(__file__))))


class _ThirdPartyFilter(py_logging.Filter):
  """Drops records below `level` that come from outside this project."""

  def __init__(self, level: int):
    super().__init__()
    self.level = level

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= self.level:
      return True
    return os.path.abspath(record.pathname).startswith(_OUR_PACKAGES)


def quiet_third_party_logs(level: int = py_logging.WARNING) -> None:
  """Hides other libraries' log records below `level` (ours stay).

  Orbax logs every checkpoint save at INFO through absl, the logger this
  project uses too, so a logger level cannot tell them apart; the filter
  looks at the file a record comes from instead. `experiments.mnist` calls
  it unless run with `-v 1`.
  """
  # On absl's handler, which every propagated record reaches (a logger's
  # own filters only see records logged on that logger).
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _ThirdPartyFilter) for f in handler.filters):
    handler.addFilter(_ThirdPartyFilter(level))


def log_info(message: str, *args) -> None:
  """`logging.info` that leaves tqdm bars intact."""
  with tqdm.tqdm.external_write_mode():
    logging.info(message, *args, stacklevel=2)  # Name the caller's line.


class StageTimer:
  """Wall time per (stage, section); see `SECTIONS`.

  `run(stage, section, fn, *args)` calls `fn` and adds its wall time to the
  section; `steps[stage]` counts the train steps run. With `block=True`
  `run` waits for the result's device buffers, so device work is charged to
  the section that launched it rather than to whichever later call waits for
  it (profiling; it costs the overlap of host and device work).
  `mark(stage)` records the clock at a stage's epoch boundaries;
  `epoch_seconds(stage)` gives the wall time between them.
  """

  def __init__(self, *, block: bool = False):
    self.block = block
    self.seconds: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float))
    self.cpu_seconds: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float))
    self.steps: dict[str, int] = collections.defaultdict(int)
    self.marks: dict[str, list[float]] = collections.defaultdict(list)

  def mark(self, stage: str) -> None:
    """Records the wall clock now, at an epoch boundary of `stage`."""
    self.marks[stage].append(time.perf_counter())

  def epoch_seconds(self, stage: str) -> list[float]:
    """Wall seconds between consecutive `mark`s of `stage`."""
    marks = self.marks.get(stage, [])
    return [b - a for a, b in zip(marks, marks[1:])]

  def run(self, stage: str, section: str, fn: Callable[..., Any], *args,
          **kwargs) -> Any:
    with self.section(stage, section):
      out = fn(*args, **kwargs)
      if self.block:
        out = jax.block_until_ready(out)
    return out

  @contextlib.contextmanager
  def section(self, stage: str, section: str):
    """Adds the wall and process CPU seconds of the block to a section."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
      yield
    finally:
      self.seconds[stage][section] += time.perf_counter() - start
      self.cpu_seconds[stage][section] += time.process_time() - cpu


class MetricsLog:
  """Appends one JSON record per line to `<workdir>/metrics.jsonl`.

  An append log rather than an atomic rewrite: a line cut short by a kill is
  skipped when read back, and a resumed epoch's record supersedes the old.
  Records hold JSON types only (numbers, strings, lists).
  """

  def __init__(self, workdir: str, *, tensorboard_dir: str | None = None):
    self.path = workdir_layout.metrics_path(workdir)
    self._tensorboard_dir = tensorboard_dir
    self._tensorboard = None

  def write(self, record: Mapping[str, Any]) -> None:
    """Appends `record`; with a `tensorboard_dir`, also as TensorBoard events."""
    with open(self.path, 'a') as f:
      f.write(workdir_layout.metrics_lines([record]))
      f.flush()
      os.fsync(f.fileno())
    if self._tensorboard_dir is not None:
      if self._tensorboard is None:  # Built on first use: no empty event files.
        from experiments.tools import tensorboard  # pylint: disable=g-import-not-at-top
        self._tensorboard = tensorboard.TensorBoardWriter(self._tensorboard_dir)
      self._tensorboard.write(record)

  def records(self) -> list[dict[str, Any]]:
    """The records, keeping the last one per (stage, step) after resumes."""
    return workdir_layout.read_metrics(self.path, latest=True)
