"""The train loop shared by the training stages.

`train_loop` trains a `gmp_jax.TrainState` for a number of epochs on a
dataset held on the device, and keeps the device busy:

* Steps run in compiled chunks (`LoopOptions`, `gmp_jax.make_multi_step`):
  on CPU a few steps unrolled into one program (XLA:CPU runs a loop body's
  convolutions several times slower than straight-line code), on GPU and
  TPU a whole epoch as one `lax.scan`. Each call draws its batches on the device from the epoch's
  permutation, which is uploaded once per epoch.
* Metrics are summed on the device and come to the host once per epoch (or
  every `log_every_steps`); with them comes a device-side record of the
  first step whose metrics were NaN or inf. Between those points the host
  only waits for the previous chunk, so one call is always queued.
* Evaluation is one compiled call (`eval_fn`) at the end of every
  `eval_every_epochs`-th epoch.
* An optional `stop_fn` sees every epoch's record and may end training
  there (early stopping); it then gets an evaluation and a checkpoint at
  every epoch end.
* Orbax checkpoints are taken at a host sync once `checkpoint_interval_s`
  has passed since the last one, and at the stage's end; they are
  synchronous, so a kill at any moment leaves the last complete one.
* On a mesh (`runtime`, `experiments.infra.distributed`) the dataset stays on the
  host: at each epoch start every process uploads its rows of the epoch's
  batches as one global `(steps, batch, ...)` array, the chunks run
  `epoch_chunk_program` on it, and the state keeps the layout the runtime
  gave it (replicated or FSDP). All processes write the checkpoints.

The batch order of epoch `e` is `data.epoch_batches` with
`np.random.default_rng([*seed, e])`: it depends only on the seed, the stage
and the epoch, so a resumed run sees the same batches as an uninterrupted
one, and the order is the one of earlier versions of this loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

import gmp_jax
from experiments.image import data as data_lib
from experiments.infra import distributed
from experiments.infra import monitor

KINDS = ('unroll', 'scan')  # `gmp_jax.make_multi_step`'s kinds.
# Steps per call of an unrolled chunk (the CPU default): 5 steps per call
# ran 7% faster per step than 2 and 16% faster than 1 (BUILD_NOTES, issue
# 13). `unroll_steps` takes the nearest of these that divides the epoch,
# so that one program (one compilation) covers it.
UNROLL_STEPS = 5
_UNROLL_CANDIDATES = (5, 6, 4, 7, 8, 3)
_NO_BAD_STEP = np.iinfo(np.int32).max


class LoopOptions(NamedTuple):
  """How `train_loop` runs; `from_config` reads them from `config.loop`.

  Attributes:
    kind: 'unroll' (steps as straight-line code) or 'scan' (`lax.scan`).
    steps_per_call: train steps per compiled call; None means
      `unroll_steps(steps_per_epoch)` for 'unroll' and a whole epoch for
      'scan'.
    log_every_steps: host syncs (metrics, NaN check, progress, checkpoint
      opportunity) every this many steps as well as at every epoch end;
      None: at epoch ends only.
    checkpoint_interval_s: seconds between checkpoints (0: at every sync).
    eval_every_epochs: run `eval_fn` at the end of every this-many-th epoch
      and at the last; None: never during training.
  """
  kind: str
  steps_per_call: int | None = None
  log_every_steps: int | None = None
  checkpoint_interval_s: float = 60.0
  eval_every_epochs: int | None = 1

  def check(self) -> None:
    """Raises ValueError naming the first option out of range."""
    if self.kind not in KINDS:
      raise ValueError(f'loop kind must be one of {KINDS}, got {self.kind!r}.')
    for name in ('steps_per_call', 'log_every_steps', 'eval_every_epochs'):
      value = getattr(self, name)
      if value is not None and not (isinstance(value, int) and value >= 1):
        raise ValueError(f'loop.{name} must be None or an int >= 1, got '
                         f'{value!r}.')
    if not self.checkpoint_interval_s >= 0:
      raise ValueError('loop.checkpoint_interval_s must be >= 0, got '
                       f'{self.checkpoint_interval_s!r}.')

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> LoopOptions:
    lc = config.loop
    return cls(kind=lc.get('kind') or default_kind(),
               steps_per_call=lc.get('steps_per_call'),
               log_every_steps=lc.get('log_every_steps'),
               checkpoint_interval_s=lc.checkpoint_interval_s,
               eval_every_epochs=lc.get('eval_every_epochs'))


def stage_steps(epochs: int, num_examples: int, batch_size: int) -> int:
  """Train steps in `epochs` epochs (each epoch's remainder is dropped)."""
  return epochs * (num_examples // batch_size)


def cosine_schedule(learning_rate: float, decay_to: float, *, epochs: int,
                    num_examples: int, batch_size: int,
                    warmup_steps: int = 0) -> optax.Schedule:
  """Cosine decay from `learning_rate` to `decay_to * learning_rate` over
  the `stage_steps(epochs, num_examples, batch_size)` steps of a stage,
  after a linear warm-up from 0 over `warmup_steps` of them (if > 0)."""
  steps = stage_steps(epochs, num_examples, batch_size)
  if warmup_steps < 0:
    raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}.')
  if warmup_steps == 0:
    return optax.cosine_decay_schedule(learning_rate, max(steps, 1),
                                       alpha=decay_to)
  return optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps, max(steps, warmup_steps + 1),
      end_value=decay_to * learning_rate)


def default_kind(backend: str | None = None) -> str:
  """'unroll' on CPU, 'scan' on GPU and TPU (BUILD_NOTES, issue 13)."""
  return 'unroll' if (backend or jax.default_backend()) == 'cpu' else 'scan'


def unroll_steps(steps_per_epoch: int) -> int:
  """Default steps per unrolled call: one size that divides the epoch.

  The size in 3..8 nearest `UNROLL_STEPS` that divides `steps_per_epoch`
  (234 -> 6; ties go to the larger), so that no second program is compiled
  for the epoch's remainder; `UNROLL_STEPS` if none does.

  Each unrolled step costs ~1.9 s of CPU compilation for the poster net,
  so a 5-step program plus a 4-step remainder program took 17 s where one
  6-step program takes ~10 s.
  """
  for size in _UNROLL_CANDIDATES:
    if steps_per_epoch % size == 0:
      return size
  return UNROLL_STEPS


def chunk_program(train_step: Callable[..., Any], kind: str, size: int):
  """Pure `(state, acc, data, order, offset, first_step) -> (state, acc)`.

  Runs `size` steps on the batches `order[offset:offset + size]` and adds
  their scalar metrics to `acc['sums']`; `acc['first_bad']` becomes the
  smallest step number (1-based, `first_step + 1` for the first of this
  call) whose scalar metrics are not all finite, or stays `_NO_BAD_STEP`.
  """
  steps = gmp_jax.make_multi_step(train_step, kind=kind)

  def chunk(state, acc, data, order, offset, first_step):
    indices = jax.lax.dynamic_slice_in_dim(order, offset, size, axis=0)
    state, metrics = steps(state, data, indices)
    return state, _accumulate(acc, metrics, first_step, size)

  return chunk


def epoch_chunk_program(train_step: Callable[..., Any], kind: str,
                        size: int):
  """Pure `(state, acc, batches, offset, first_step) -> (state, acc)`.

  `chunk_program` for a mesh: the epoch's batches come pre-gathered as
  `(steps, batch, ...)` arrays (`distributed.Runtime.epoch_batches`, each
  batch split over the devices) and the call runs rows `offset` to
  `offset + size`.
  """
  steps = gmp_jax.make_multi_step(train_step, kind=kind, indexed=False)

  def chunk(state, acc, batches, offset, first_step):
    window = jax.tree.map(
        lambda a: jax.lax.dynamic_slice_in_dim(a, offset, size, axis=0),
        batches)
    state, metrics = steps(state, window)
    return state, _accumulate(acc, metrics, first_step, size)

  return chunk


def _accumulate(acc, metrics, first_step, size):
  """Adds a chunk's stacked scalar metrics to `acc`; records a bad step."""
  scalars = {k: v for k, v in metrics.items() if v.ndim == 1}
  finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in scalars.values()]),
                   axis=0)
  number = first_step + 1 + jnp.arange(size, dtype=jnp.int32)
  bad = jnp.min(jnp.where(finite, _NO_BAD_STEP, number))
  return {'sums': {k: acc['sums'][k] + jnp.sum(v) for k, v in scalars.items()},
          'first_bad': jnp.minimum(acc['first_bad'], bad)}


def zero_accumulator(train_step, state, data) -> dict[str, Any]:
  """The loop's metric accumulator before any step: zero sums, no bad step."""
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]),
                                                      a.dtype), data)
  _, metrics = jax.eval_shape(train_step, state, batch)
  return {'sums': {k: jnp.zeros((), jnp.float32) for k, v in metrics.items()
                   if v.ndim == 0},
          'first_bad': jnp.asarray(_NO_BAD_STEP, jnp.int32)}


def _checkpoint_manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
          max_to_keep=2, create=True, enable_async_checkpointing=False))


def train_loop(*, stage: str, state: gmp_jax.TrainState,
               train_step: Callable[..., Any], data: Mapping[str, jax.Array],
               num_epochs: int, batch_size: int, seed: Sequence[int],
               checkpoint_dir: str, options: LoopOptions,
               log: monitor.MetricsLog,
               eval_fn: Callable[[gmp_jax.TrainState],
                                 dict[str, float]] | None = None,
               summary_fn: Callable[[gmp_jax.TrainState], dict] | None = None,
               timer: monitor.StageTimer | None = None,
               runtime: distributed.Runtime | None = None,
               stop_fn: Callable[[int, gmp_jax.TrainState,
                                  Mapping[str, Any]], bool] | None = None
               ) -> gmp_jax.TrainState:
  """Trains `state` for `num_epochs`, checkpointing and resuming.

  Args:
    stage: the stage's name, used in logs, metrics and errors.
    state: the initial state (ignored when a checkpoint exists).
    train_step: pure `(state, batch) -> (state, metrics)`.
    data: the training arrays with a leading example axis, on the device.
    num_epochs: epochs to train.
    batch_size: examples per step; the epoch's remainder is dropped.
    seed: the entropy of the epoch permutations.
    checkpoint_dir: Orbax checkpoint directory of the stage.
    options: how the loop runs (`LoopOptions`).
    log: receives one record per epoch.
    eval_fn: `state -> {name: float}` (`evaluation.epoch_metrics`).
    summary_fn: `state -> {name: JSON value}` for every epoch's record.
    timer: collects the wall time per section.
    runtime: the mesh (`experiments.infra.distributed`), or None for one device.
      With a mesh, `data` stays on the host: every epoch each process
      uploads only its rows of the epoch's batches, the state is laid out
      by `runtime.state_sharding` (and keeps that layout), every process
      writes its checkpoint shards, and only process 0 writes the metrics
      log.
    stop_fn: `(epoch, state, record) -> stop`, called at every epoch end
      (`epoch` 1-based) with the epoch's record (its metric means and
      `eval_fn`'s metrics) before the checkpoint; True ends training after
      that epoch. With it, `eval_fn` runs at every epoch end (whatever
      `options.eval_every_epochs`) and a checkpoint is taken at every
      epoch end right after the call, so a kill leaves the hook at most one
      epoch ahead of the last checkpoint: after a resume it may be called
      again for the epoch it saw last, and must then answer as before (and
      keep its own state, e.g. in the workdir). The state it gets is
      donated by the next step: copy what it keeps. On a mesh every process
      calls it, and all must return the same answer. The loop keeps no
      record of a stop: called again on the same checkpoints it trains on
      from the stopping epoch, so a caller whose hook stopped does not call
      it again (the teacher stage asks its `early_stopping.Stopper`).

  Returns:
    The trained state (at the stopping epoch's end, if `stop_fn` stopped).

  Raises:
    ValueError: `batch_size` exceeds the number of examples, or an option
      is out of range.
    FloatingPointError: a metric became NaN or inf; names the stage, the
      first bad step and the steps since the last sync, and keeps the last
      checkpoint (every checkpoint was taken from a finite state).
  """
  options.check()
  timer = timer or monitor.StageTimer()
  n = int(next(iter(data.values())).shape[0])
  if batch_size > n:
    raise ValueError(f'{stage}: batch_size {batch_size} exceeds the '
                     f'{n} training examples.')
  steps_per_epoch = n // batch_size
  total = num_epochs * steps_per_epoch
  chunk = options.steps_per_call or (
      unroll_steps(steps_per_epoch) if options.kind == 'unroll'
      else steps_per_epoch)
  sync_every = min(options.log_every_steps or steps_per_epoch,
                   steps_per_epoch)
  writer = runtime is None or runtime.is_writer
  manager = _checkpoint_manager(checkpoint_dir)
  step = 0
  if runtime is not None:  # Laid out on the mesh before a restore.
    state_sharding = runtime.state_sharding(state)
    state = runtime.put(state, state_sharding)
  latest = manager.latest_step()
  if latest is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = timer.run(stage, 'checkpoint', manager.restore, latest,
                      args=ocp.args.StandardRestore(abstract))
    step = int(latest)
    monitor.log_info('%s: resuming from step %d/%d', stage, step, total)
  # The chunks donate the state; the caller's arrays stay untouched.
  state = jax.tree.map(jnp.copy, state)
  zero = zero_accumulator(train_step, state, data)
  if runtime is not None:
    zero = runtime.put(zero)
    make_chunk = epoch_chunk_program
    out_shardings = (state_sharding,
                     jax.tree.map(lambda _: runtime.replicated, zero))
  else:
    make_chunk, out_shardings = chunk_program, None
  programs: dict[int, Any] = {}

  def program(size, *args):
    if size not in programs:
      jitted = gmp_jax.compile_step(
          make_chunk(train_step, options.kind, size), donate_state=True,
          out_shardings=out_shardings)
      programs[size] = timer.run(stage, 'compile',
                                 lambda: jitted.lower(*args).compile())
    return programs[size]

  bar = tqdm.tqdm(total=total, initial=step, desc=stage, unit='step',
                  dynamic_ncols=True, mininterval=2.0, disable=not writer)
  saved_at = time.monotonic()
  timer.mark(stage)
  order_epoch, order, acc, acc_from = None, None, zero, step
  synced = step  # Steps up to here were checked and shown.
  queued: list[tuple[Any, int]] = []  # Calls not yet waited for.
  try:
    while step < total:
      epoch, offset = divmod(step, steps_per_epoch)
      if epoch != order_epoch:
        order = data_lib.epoch_batches(
            np.random.default_rng([*seed, epoch]), n, batch_size)
        if runtime is None:
          order = timer.run(stage, 'data', jax.device_put, order)
        else:  # This process's rows of every batch of the epoch.
          batches = timer.run(stage, 'data', runtime.epoch_batches, data,
                              order)
        order_epoch, acc, acc_from = epoch, zero, step
      next_sync = min((step // sync_every + 1) * sync_every,
                      (epoch + 1) * steps_per_epoch)
      size = min(chunk, next_sync - step)
      if runtime is None:
        args = (state, acc, data, order, np.int32(offset), np.int32(step))
      else:
        args = (state, acc, batches, np.int32(offset), np.int32(step))
      state, acc = timer.run(stage, 'step', program(size, *args), *args)
      step += size
      timer.steps[stage] += size
      queued.append((acc['first_bad'], size))
      if len(queued) > 1:  # Keep one call queued; show the finished one.
        done, done_size = queued.pop(0)
        timer.run(stage, 'sync', jax.block_until_ready, done)
        bar.update(done_size)
      if step != next_sync:
        continue
      host = timer.run(stage, 'sync', jax.device_get, acc)
      bar.update(sum(s for _, s in queued))
      queued.clear()
      first_bad = int(host['first_bad'])
      if first_bad != _NO_BAD_STEP:
        raise FloatingPointError(
            f'Stage {stage!r}: non-finite metrics from step {first_bad} '
            f'(steps {synced + 1}-{step} checked, epoch {epoch + 1}). Lower '
            'the learning rates or tau; the run stops here and the last '
            'checkpoint is kept.')
      synced = step
      epoch_end = step % steps_per_epoch == 0
      evaluated = {}
      if eval_fn is not None and epoch_end and (stop_fn is not None or (
          _eval_due(epoch + 1, num_epochs, options.eval_every_epochs))):
        evaluated = timer.run(stage, 'eval', eval_fn, state)
      means = {k: float(v) / (step - acc_from)
               for k, v in host['sums'].items()}
      # The data term and the prior's share of the gradient: the loss
      # itself is dominated by tau / N times the prior's log-density.
      bar.set_postfix({k: f'{means[k]:.4g}' for k in
                       ('data_loss', 'grad_ratio') if k in means}
                      or {'loss': f"{means['loss']:.4g}"})
      record, stop = None, False
      if epoch_end:
        record = {'stage': stage, 'step': step, 'epoch': epoch + 1, **means,
                  **evaluated}
        if summary_fn is not None:
          record.update(summary_fn(state))
        if stop_fn is not None:
          # Before the checkpoint: a kill in between replays this epoch. On
          # a mesh every process computes the same record (the metric means
          # and `eval_fn`'s results are replicated), so all processes take
          # the same decision and leave the loop at the same step.
          stop = bool(stop_fn(epoch + 1, state, record))
      if step == total or stop or (stop_fn is not None and epoch_end) or (
          time.monotonic() - saved_at >= options.checkpoint_interval_s):
        with timer.section(stage, 'checkpoint'):
          manager.save(step, args=ocp.args.StandardSave(state))
          manager.wait_until_finished()
        saved_at = time.monotonic()
      if epoch_end:
        if writer:
          log.write(record)
        _log_epoch(stage, epoch + 1, num_epochs, record)
        timer.mark(stage)
      if stop:
        monitor.log_info('%s: stopped after epoch %d/%d.', stage, epoch + 1,
                         num_epochs)
        break
  finally:
    bar.close()
    manager.close()
  return state


def _eval_due(epoch: int, num_epochs: int, every: int | None) -> bool:
  return every is not None and (epoch % every == 0 or epoch == num_epochs)


def _log_epoch(stage: str, epoch: int, num_epochs: int,
               record: Mapping[str, Any]) -> None:
  shown = ' '.join(f'{k}={v:.4g}' for k, v in record.items()
                   if k not in ('stage', 'step', 'epoch')
                   and isinstance(v, float))
  monitor.log_info('%s epoch %d/%d: %s', stage, epoch, num_epochs, shown)


__all__ = ('KINDS', 'LoopOptions', 'UNROLL_STEPS', 'chunk_program',
           'cosine_schedule', 'stage_steps',
           'default_kind', 'epoch_chunk_program', 'train_loop',
           'unroll_steps')
