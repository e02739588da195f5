"""The train loop shared by the training stages, and where its time goes.

`train_loop` trains a `gmp_jax.TrainState` for a number of epochs on a
dataset held on the device, with Orbax checkpoints that a killed run resumes
from. The batch order of epoch `e` depends only on `(seed, e)`, so a resumed
run sees the same batches as an uninterrupted one.

Output goes one way: a tqdm bar per stage and absl logging for everything
else (resumes, per-epoch summaries). `quiet_third_party_logs` keeps Orbax's
per-save INFO lines out of it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
import contextlib
import json
import logging as py_logging
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm

import gmp_jax
from experiments import data as data_lib

# Sections of a stage's wall time (`StageTimer`); the rest is 'other'.
SECTIONS = ('compile', 'step', 'sync', 'eval', 'checkpoint', 'data')

_OUR_PACKAGES = tuple(
    os.path.dirname(os.path.abspath(m.__file__)) + os.sep
    for m in (gmp_jax, data_lib))


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
  section. With `block=True` it waits for the result's device buffers
  first, so device work is charged to the section that launched it rather
  than to whichever later call waits for it (profiling; it costs some
  overlap between host and device).
  """

  def __init__(self, *, block: bool = False):
    self.block = block
    self.seconds: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float))

  def run(self, stage: str, section: str, fn: Callable[..., Any], *args,
          **kwargs) -> Any:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if self.block:
      out = jax.block_until_ready(out)
    self.seconds[stage][section] += time.perf_counter() - start
    return out

  @contextlib.contextmanager
  def section(self, stage: str, section: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[stage][section] += time.perf_counter() - start


class MetricsLog:
  """Appends one JSON record per line to `<workdir>/metrics.jsonl`.

  An append log rather than an atomic rewrite: a line cut short by a kill is
  skipped when read back, and a resumed epoch's record supersedes the old.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')

  def write(self, record: Mapping[str, Any]) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps(record, default=_jsonable) + '\n')
      f.flush()
      os.fsync(f.fileno())

  def records(self) -> list[dict[str, Any]]:
    """The records, keeping the last one per (stage, step) after resumes."""
    if not os.path.exists(self.path):
      return []
    latest = {}
    with open(self.path) as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue  # A line cut short by a kill.
        latest[(rec.get('stage'), rec.get('step'))] = rec
    return list(latest.values())


def _jsonable(x):
  if isinstance(x, (np.ndarray, jax.Array, np.generic)):
    return np.asarray(x).tolist()
  raise TypeError(f'not JSON serialisable: {type(x).__name__}')


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Means over the step axis of the scalar metrics."""
  out = {}
  for k, v in metrics.items():
    v = np.asarray(v)
    if v.ndim == 1:
      out[k] = float(v.mean())
  return out


def _checkpoint_manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
          max_to_keep=2, create=True, enable_async_checkpointing=False))


def train_loop(*, stage: str, state: gmp_jax.TrainState,
               multi_step: Callable[..., Any], data: Mapping[str, jax.Array],
               num_epochs: int, batch_size: int, seed: Sequence[int],
               checkpoint_dir: str, steps_per_call: int,
               checkpoint_every: int, log: MetricsLog,
               eval_fn: Callable[[gmp_jax.TrainState], dict] | None = None,
               timer: StageTimer | None = None) -> gmp_jax.TrainState:
  """Trains `state` for `num_epochs`, checkpointing and resuming.

  Batches are drawn on the device from `data` (a dict of arrays with a
  leading example axis) by index arrays, `steps_per_call` steps per call of
  the compiled `multi_step(state, data, indices)`. Epoch `e` uses the
  permutation drawn by `np.random.default_rng([*seed, e])`.

  Args:
    stage: the stage's name, used in logs, metrics and errors.
    state: the initial state (ignored when a checkpoint exists).
    multi_step: compiled `(state, data, indices) -> (state, metrics)`.
    data: the training arrays, on the device.
    num_epochs: epochs to train.
    batch_size: examples per step; the epoch's remainder is dropped.
    seed: the entropy of the epoch permutations.
    checkpoint_dir: Orbax checkpoint directory of the stage.
    steps_per_call: train steps per dispatch.
    checkpoint_every: steps between checkpoints (and at every epoch end).
    log: receives one record per epoch.
    eval_fn: `state -> metrics` run at every epoch end.
    timer: collects the wall time per section.

  Returns:
    The trained state.

  Raises:
    ValueError: `batch_size` exceeds the number of examples.
    FloatingPointError: a metric became NaN or inf; names the stage and the
      steps, and keeps the last checkpoint.
  """
  timer = timer or StageTimer()
  n = int(next(iter(data.values())).shape[0])
  if batch_size > n:
    raise ValueError(f'{stage}: batch_size {batch_size} exceeds the '
                     f'{n} training examples.')
  steps_per_epoch = n // batch_size
  total = num_epochs * steps_per_epoch
  chunk = max(1, int(steps_per_call))
  manager = _checkpoint_manager(checkpoint_dir)
  step = 0
  latest = manager.latest_step()
  if latest is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = timer.run(stage, 'checkpoint', manager.restore, latest,
                      args=ocp.args.StandardRestore(abstract))
    step = int(latest)
    log_info('%s: resuming from step %d/%d', stage, step, total)
  last_saved = step
  epoch_metrics: list[dict[str, float]] = []
  bar = tqdm.tqdm(total=total, initial=step, desc=stage, unit='step',
                  dynamic_ncols=True, mininterval=2.0)
  try:
    while step < total:
      epoch, offset = divmod(step, steps_per_epoch)
      size = min(chunk, steps_per_epoch - offset)
      with timer.section(stage, 'data'):
        order = data_lib.epoch_batches(
            np.random.default_rng([*seed, epoch]), n, batch_size)
        indices = jnp.asarray(order[offset:offset + size])
      state, metrics = timer.run(stage, 'step', multi_step, state, data,
                                 indices)
      scalars = timer.run(stage, 'sync', _scalars, metrics)
      if not all(math.isfinite(v) for v in scalars.values()):
        bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
        raise FloatingPointError(
            f'Stage {stage!r}: non-finite metrics {bad} in steps '
            f'{step + 1}-{step + size} (epoch {epoch + 1}). Lower the '
            'learning rates or tau; the run stops here and the last '
            'checkpoint is kept.')
      step += size
      epoch_metrics.append(scalars)
      bar.update(size)
      bar.set_postfix(loss=f"{scalars['loss']:.4g}")
      epoch_end = step % steps_per_epoch == 0
      if epoch_end or step - last_saved >= checkpoint_every:
        with timer.section(stage, 'checkpoint'):
          manager.save(step, args=ocp.args.StandardSave(state))
          manager.wait_until_finished()
        last_saved = step
      if epoch_end:
        record = {'stage': stage, 'step': step, 'epoch': epoch + 1}
        for k in epoch_metrics[0]:
          record[k] = float(np.mean([m[k] for m in epoch_metrics]))
        epoch_metrics = []
        if eval_fn is not None:
          record.update(timer.run(stage, 'eval', eval_fn, state))
        log.write(record)
        _log_epoch(stage, epoch + 1, num_epochs, record)
  finally:
    bar.close()
    manager.close()
  return state


def _log_epoch(stage: str, epoch: int, num_epochs: int,
               record: Mapping[str, Any]) -> None:
  shown = ' '.join(f'{k}={v:.4g}' for k, v in record.items()
                   if k not in ('stage', 'step', 'epoch')
                   and isinstance(v, float))
  log_info('%s epoch %d/%d: %s', stage, epoch, num_epochs, shown)
