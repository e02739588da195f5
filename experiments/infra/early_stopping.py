"""Early stopping on a validation metric, resumable after a kill.

The rule (`best_index`, `should_stop`) is a pure function of the metric's
values at the ends of epochs 1, 2, ...: the best epoch is the first whose
value is strictly better than every earlier one's and no later one's is
strictly better (ties keep the earlier epoch), and training stops once
`patience` epochs have passed since the best one without a strictly better
value.

`Stopper` applies it as `loop.train_loop`'s `stop_fn` and keeps what it
needs to survive a kill in a directory of its own:

  <directory>/state.json            the values so far, the best epoch and its
                                    record, the params file, the decision
  <directory>/best_epoch_<k>.gmpz   the best epoch's params (raw leaves)

Each is written atomically, the params file before the JSON that names it,
and an older params file is removed only after the JSON stopped naming it,
so a kill at any moment leaves a JSON whose params file exists and holds
the weights that scored its best value. The loop calls the hook before the
epoch's checkpoint, so after a kill the hook is at most one epoch ahead of
the checkpoint and sees that epoch again: it then answers from what it
recorded (`Stopper.__call__`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import glob
import json
import math
import numbers
import os
import time
from typing import Any

import numpy as np

import gmp_jax
from experiments.infra import jsonio

STATE_FILE = 'state.json'
PARAMS_PATTERN = 'best_epoch_{epoch:04d}.gmpz'


def check_patience(patience: Any, *, name: str = 'patience') -> None:
  """Raises ValueError unless `patience` is None or an int >= 1."""
  if patience is not None and not (
      isinstance(patience, int) and not isinstance(patience, bool)
      and patience >= 1):
    raise ValueError(f'{name} must be None (no early stopping) or an int '
                     f'>= 1 (epochs without improvement before stopping), '
                     f'got {patience!r}.')


def _check_values(values: Sequence[float]) -> list[float]:
  out = []
  for i, v in enumerate(values):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or (
        not math.isfinite(v)):
      raise ValueError(f'validation value of epoch {i + 1} must be a finite '
                       f'number, got {v!r}.')
    out.append(float(v))
  return out


def best_index(values: Sequence[float], *, higher_is_better: bool) -> int:
  """0-based index of the best value; ties keep the earliest.

  Raises:
    ValueError: no values, or one that is not a finite number.
  """
  values = _check_values(values)
  if not values:
    raise ValueError('best_index needs at least one value.')
  best = 0
  for i, v in enumerate(values):
    if (v > values[best]) if higher_is_better else (v < values[best]):
      best = i
  return best


def should_stop(values: Sequence[float], *, patience: int,
                higher_is_better: bool) -> bool:
  """Whether to stop after the last of `values` (one per epoch, in order).

  True when the last `patience` values brought no strict improvement on
  the best value before them, i.e. ``len(values) - 1 - best_index >=
  patience``; False for no values.

  Raises:
    ValueError: `patience` is not an int >= 1, or a value is not finite.
  """
  check_patience(patience)
  if patience is None:
    raise ValueError('should_stop needs a patience, got None.')
  if not values:
    _check_values(values)
    return False
  best = best_index(values, higher_is_better=higher_is_better)
  return len(values) - 1 - best >= patience


class Stopper:
  """`loop.train_loop`'s `stop_fn` for early stopping, resumable.

  Reads its state from `directory` when there is one (a resumed run), and
  after every new epoch writes it back: the epoch's value of `key` in the
  loop's record, and the params when they are the best so far.

  On a mesh every process makes one and calls it with the same
  (replicated) metrics, so all take the same decisions and all take part
  in `host_params`; only the writer (`is_writer`) writes files.

  Attributes:
    values: the key's value at the end of each epoch so far (epoch 1 first).
    best_epoch: the best epoch (1-based), or None before the first.
    best_record: that epoch's record (as the loop passed it).
    stopped: whether the rule fired at the last epoch.
    elapsed_s: wall seconds from the start of training to the end of the
      last recorded epoch, summed over the runs that resumed it (a killed
      run's time after its last recorded epoch is not counted).
  """

  def __init__(self, directory: str, *, key: str, higher_is_better: bool,
               patience: int,
               host_params: Callable[[Any], Any],
               write_params: Callable[[str, Any], None],
               is_writer: bool = True,
               params_of: Callable[[Any], Any] = lambda state: state.params):
    """Sets the rule and reads the state a killed run left, if any.

    Args:
      directory: where the state and the best params are kept.
      key: the record's entry to watch, e.g. 'valid_bits_per_byte'.
      higher_is_better: the direction of `key`.
      patience: epochs without improvement before stopping (int >= 1).
      host_params: params -> whole host arrays (on a mesh a collective
        every process calls).
      write_params: `(path, host params)`, writing them exactly (a no-op
        except on the writer).
      is_writer: whether this process writes the state file.
      params_of: the params of the loop's state.

    Raises:
      ValueError: a bad patience, or a state in `directory` kept for another
        key, direction or patience.
    """
    check_patience(patience)
    if patience is None:
      raise ValueError('Stopper needs a patience, got None.')
    self.directory = directory
    self.key, self.higher_is_better = key, bool(higher_is_better)
    self.patience = patience
    self._host_params, self._write_params = host_params, write_params
    self._params_of = params_of
    self.is_writer = is_writer
    self.values: list[float] = []
    self.best_epoch: int | None = None
    self.best_record: dict[str, Any] | None = None
    self.stopped = False
    self.elapsed_s = 0.0
    self._params_file: str | None = None
    self._best_params = None
    self._started = time.perf_counter()
    self._elapsed_before = 0.0
    if os.path.exists(self.state_path):
      self._read()

  @property
  def state_path(self) -> str:
    return os.path.join(self.directory, STATE_FILE)

  def _read(self) -> None:
    with open(self.state_path) as f:
      state = json.load(f)
    kept = (state['key'], state['higher_is_better'], state['patience'])
    if kept != (self.key, self.higher_is_better, self.patience):
      raise ValueError(
          f'{self.state_path} was kept for key={kept[0]!r}, '
          f'higher_is_better={kept[1]}, patience={kept[2]}, not '
          f'{self.key!r}, {self.higher_is_better}, {self.patience}: '
          'resume with the same config, or remove the stage directory to '
          'train afresh.')
    self.values = _check_values(state['values'])
    self.best_epoch = state['best_epoch']
    self.best_record = state['best_record']
    self.stopped = bool(state['stopped'])
    self.elapsed_s = self._elapsed_before = float(state['elapsed_s'])
    self._params_file = state['params_file']

  def _write(self) -> None:
    if not self.is_writer:
      return
    os.makedirs(self.directory, exist_ok=True)
    jsonio.write_json_atomic(self.state_path, {
        'key': self.key, 'higher_is_better': self.higher_is_better,
        'patience': self.patience, 'values': self.values,
        'best_epoch': self.best_epoch, 'best_record': self.best_record,
        'params_file': self._params_file, 'stopped': self.stopped,
        'elapsed_s': self.elapsed_s})
    for path in glob.glob(os.path.join(self.directory, 'best_epoch_*.gmpz')):
      if os.path.basename(path) != self._params_file:
        os.remove(path)  # Named by no state any more.

  def finished(self, max_epochs: int) -> bool:
    """Whether training is over: the rule fired or `max_epochs` ran."""
    return self.stopped or len(self.values) >= max_epochs

  def __call__(self, epoch: int, state, record: Mapping[str, Any]) -> bool:
    """The loop's `stop_fn`: records epoch `epoch`, says whether to stop.

    An epoch already recorded (replayed after a resume from the checkpoint
    before it) changes nothing and gets the answer it got then.

    Raises:
      KeyError: the record has no `key`.
      ValueError: its value is not finite.
      RuntimeError: `epoch` skips epochs the state never saw (the state
        was removed while the checkpoints were kept).
    """
    done = len(self.values)
    if epoch <= done:
      return should_stop(self.values[:epoch], patience=self.patience,
                         higher_is_better=self.higher_is_better)
    if epoch != done + 1:
      raise RuntimeError(
          f'{self.state_path} holds epochs 1-{done} but training is at the '
          f'end of epoch {epoch}: the early-stopping state was lost while '
          'the checkpoints were kept. Remove the stage directory to train '
          'afresh.')
    if self.key not in record:
      raise KeyError(f'early stopping watches {self.key!r}, which epoch '
                     f'{epoch} did not report (it has {sorted(record)}).')
    values = self.values + _check_values([record[self.key]])
    best = best_index(values, higher_is_better=self.higher_is_better) + 1
    if best == epoch:  # The best so far: its params before the state.
      # Every process gets here together (the values are replicated), so
      # all take part in the gather.
      params = self._host_params(self._params_of(state))
      name = PARAMS_PATTERN.format(epoch=epoch)
      if self.is_writer:
        os.makedirs(self.directory, exist_ok=True)
      self._write_params(os.path.join(self.directory, name), params)
      self._best_params, self._params_file = params, name
      self.best_epoch = epoch
      self.best_record = {k: v for k, v in record.items()
                          if isinstance(v, (numbers.Real, str))}
    self.values = values
    self.stopped = should_stop(values, patience=self.patience,
                               higher_is_better=self.higher_is_better)
    self.elapsed_s = self._elapsed_before + (time.perf_counter()
                                             - self._started)
    self._write()
    return self.stopped

  @property
  def best_value(self) -> float | None:
    return None if self.best_epoch is None else self.values[
        self.best_epoch - 1]

  def best_params(self):
    """The best epoch's params (host NumPy arrays).

    Raises:
      ValueError: no epoch was recorded.
    """
    if self._best_params is None:
      if self._params_file is None:
        raise ValueError(f'{self.directory}: no epoch recorded yet, so no '
                         'best params.')
      self._best_params = gmp_jax.load_compressed(
          os.path.join(self.directory, self._params_file))
    return self._best_params


__all__ = ('PARAMS_PATTERN', 'STATE_FILE', 'Stopper', 'best_index',
           'check_patience', 'should_stop')
