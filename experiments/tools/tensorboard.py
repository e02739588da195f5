"""TensorBoard event files from the per-epoch records of `metrics.jsonl`.

`TensorBoardWriter(logdir).write(record)` takes the same dict the train loop
appends to `metrics.jsonl` (`{'stage', 'step', 'epoch', 'loss', ...,
'test_accuracy', 'test_pruned_accuracy', 'nonzero_fraction',
'mixture_means': [...], ...}`) and writes, at global step `record['step']`:

* every number as a scalar tagged `<stage>/<key>` (losses, accuracies before
  and after pruning, the non-zero fraction);
* every list or 1-D array (the mixture's means, sigmas and proportions) as a
  histogram `<stage>/<key>` and one scalar per entry,
  `<stage>/<key>/<index>`, so each component's trajectory can be plotted;
* nested dicts under `<stage>/<key>/<subkey>`.

Strings and None are skipped. The file is flushed after every record, so a
killed run keeps what it logged; a resumed run adds a new event file in the
same directory and TensorBoard reads them together.

The events are written with `tensorboardX` (numpy and protobuf only; no
TensorFlow, unlike `clu.metric_writers`, whose package import pulls in
TensorFlow). It is imported when a writer is built, so the train loop pays
nothing when no writer is used.

  python -m experiments.tools.tensorboard WORKDIR [--logdir DIR]

converts an existing `WORKDIR/metrics.jsonl` (a committed result, say) into
event files in `DIR` (default `WORKDIR/tensorboard`); then
`tensorboard --logdir DIR`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import numbers
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

from experiments.infra import cli
from experiments.infra import workdir_layout

# Keys that name the record rather than measure anything.
_IDENTITY_KEYS = ('stage', 'step')


def _items(record: Mapping[str, Any], prefix: str
           ) -> Iterator[tuple[str, Any]]:
  for key, value in record.items():
    tag = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, Mapping):
      yield from _items(value, tag)
    else:
      yield tag, value


def _numeric_array(tag: str, value: Any) -> np.ndarray:
  try:
    array = np.asarray(value)
  except Exception as e:  # pylint: disable=broad-except
    raise TypeError(f'{tag}: cannot log a {type(value).__name__}') from e
  if array.dtype == object or not (
      np.issubdtype(array.dtype, np.number)
      or np.issubdtype(array.dtype, np.bool_)):
    raise TypeError(
        f'{tag}: cannot log a {type(value).__name__} of dtype {array.dtype}; '
        'expected a number, a list of numbers or an array.')
  return array.astype(np.float64)


def _import_tensorboardx():
  """`import tensorboardX`, without the PyTorch import it does when it can.

  tensorboardX's writer imports torch, if installed, only to accept torch
  tensors (seconds of CPU per process); the values here are numbers and
  NumPy arrays. Where torch is not imported yet, it is hidden for the
  import; an earlier import of torch is left as it is.
  """
  if 'tensorboardX' in sys.modules or 'torch' in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  sys.modules['torch'] = None  # `import torch` raises ImportError.
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules['torch']
  return tensorboardX


class TensorBoardWriter:
  """Writes `metrics.jsonl`-style records as TensorBoard events.

  Example::

    writer = TensorBoardWriter(os.path.join(workdir, 'tensorboard'))
    writer.write({'stage': 'retrain', 'step': 234, 'epoch': 1,
                  'loss': 0.31, 'test_accuracy': 0.99,
                  'mixture_means': [0.0, -0.2, 0.2]})
    writer.close()

  Args:
    logdir: directory of the event files (created if missing).
    histograms: also write lists and arrays as histograms.
    per_entry_scalars: also write each entry of a list or 1-D array as its
      own scalar.
  """

  def __init__(self, logdir: str | os.PathLike, *, histograms: bool = True,
               per_entry_scalars: bool = True):
    tensorboardX = _import_tensorboardx()
    self.logdir = os.fspath(logdir)
    self.histograms = histograms
    self.per_entry_scalars = per_entry_scalars
    os.makedirs(self.logdir, exist_ok=True)
    # tensorboardX names files by the second and host; the suffix keeps a
    # writer opened within the same second (a quick resume) from
    # overwriting the previous file.
    self._writer = tensorboardX.SummaryWriter(
        logdir=self.logdir,
        filename_suffix=f'.{os.getpid()}.{time.time_ns()}')
    self._closed = False

  def write(self, record: Mapping[str, Any]) -> None:
    """Logs one record at step `record['step']` and flushes it to disk.

    Raises:
      ValueError: the record has no integer 'step', or the writer is closed.
      TypeError: a value is neither a number, a numeric list or array, a
        dict of those, a string nor None.
    """
    if self._closed:
      raise ValueError('The TensorBoard writer is closed.')
    step = record.get('step') if isinstance(record, Mapping) else None
    if (step is None or isinstance(step, bool)
        or not isinstance(step, (numbers.Integral, np.integer))):
      raise ValueError(
          "A record needs an integer 'step' (the global step it is logged "
          f'at); got {step!r}.')
    stage = record.get('stage')
    prefix = stage if isinstance(stage, str) and stage else ''
    body = {k: v for k, v in record.items() if k not in _IDENTITY_KEYS}
    for tag, value in _items(body, prefix):
      if value is None or isinstance(value, (str, bytes)):
        continue
      array = _numeric_array(tag, value)
      if array.ndim == 0:
        self._writer.add_scalar(tag, float(array), int(step))
        continue
      if self.histograms and array.size:
        self._writer.add_histogram(tag, array, int(step), bins='auto')
      if self.per_entry_scalars and array.ndim == 1:
        width = len(str(max(array.size - 1, 0)))
        for i, v in enumerate(array):
          self._writer.add_scalar(f'{tag}/{i:0{width}d}', float(v), int(step))
    self._writer.flush()

  def close(self) -> None:
    if not self._closed:
      self._writer.close()
      self._closed = True

  def __enter__(self) -> TensorBoardWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Every record of a `metrics.jsonl` (`workdir_layout.read_metrics`)."""
  return workdir_layout.read_metrics(path)


def write_jsonl(jsonl_path: str | os.PathLike, logdir: str | os.PathLike
                ) -> int:
  """Writes every record of a `metrics.jsonl` to `logdir`; returns the count."""
  records = read_jsonl(jsonl_path)
  with TensorBoardWriter(logdir) as writer:
    for record in records:
      writer.write(record)
  return len(records)


def _define_flags() -> None:
  flags.DEFINE_string('logdir', None, 'Default: WORKDIR/tensorboard.')


def main(argv: list[str]) -> int:
  """Converts WORKDIR/metrics.jsonl into TensorBoard events."""
  if len(argv) != 2:
    raise app.UsageError('expected one WORKDIR')
  workdir = argv[1]
  path = workdir_layout.metrics_path(workdir)
  if not os.path.exists(path):
    raise app.UsageError(f'{path} does not exist')
  logdir = flags.FLAGS.logdir or os.path.join(workdir, 'tensorboard')
  n = write_jsonl(path, logdir)
  print(f'{n} records -> {logdir}')
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
