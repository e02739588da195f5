"""Where a pipeline run keeps its files, and the readers of its records.

A workdir holds one directory per stage, each finished stage's record
`<stage>/done.json` (written last, atomically), the per-epoch metrics log
`metrics.jsonl`, the compressed file and the report:

  <workdir>/<stage>/...           a stage's outputs and checkpoints
  <workdir>/<stage>/done.json     its record (`write_done`, `read_done`)
  <workdir>/metrics.jsonl         one JSON record per line (`read_metrics`)
  <workdir>/model.gmpz            the compressed file
  <workdir>/report.json, report.md

The stages (`experiments.stages`) write them; `experiments.tools.sweep`,
`experiments.infra.monitor` and `experiments.tools.tensorboard` read them
through these helpers. `load_params` reads a stage's weights file back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

import gmp_jax
from gmp_jax.codec import fileio
from experiments.infra import jsonio

DONE_FILE = 'done.json'
METRICS_FILE = 'metrics.jsonl'
COMPRESSED_FILE = 'model.gmpz'
REPORT_FILE = 'report.json'
REPORT_MARKDOWN = 'report.md'
# The teacher stage's weights (raw float leaves), shared by sweep points.
TEACHER_PARAMS = os.path.join('teacher', 'params.gmpz')


def load_params(path: str):
  """(params as device arrays, metadata) of a stage's compressed file."""
  info = gmp_jax.load_compressed_with_info(path)
  params, metadata = info.params, info.metadata
  return jax.tree.map(jnp.asarray, params), metadata


def stage_path(workdir: str, stage: str, *parts: str) -> str:
  """`<workdir>/<stage>/<parts...>`."""
  return os.path.join(workdir, stage, *parts)


def done_path(workdir: str, stage: str) -> str:
  """`<workdir>/<stage>/done.json`, the stage's record."""
  return stage_path(workdir, stage, DONE_FILE)


def has_done(workdir: str, stage: str) -> bool:
  """Whether the stage left its record (its outputs are not checked)."""
  return os.path.exists(done_path(workdir, stage))


def read_done(workdir: str, stage: str) -> dict[str, Any]:
  """The stage's record."""
  with open(done_path(workdir, stage)) as f:
    return json.load(f)


def write_done(workdir: str, stage: str, record: Mapping[str, Any]) -> None:
  """Writes the stage's record atomically (a kill leaves none or all)."""
  jsonio.write_json_atomic(done_path(workdir, stage), record)


def copy_file(source: str, dest: str) -> None:
  """Copies a file's bytes to `dest` atomically, making its directory."""
  os.makedirs(os.path.dirname(dest) or '.', exist_ok=True)
  with open(source, 'rb') as f:
    fileio.write_atomic(dest, f.read())


def metrics_path(workdir: str) -> str:
  return os.path.join(workdir, METRICS_FILE)


def read_metrics(path: str | os.PathLike, *, latest: bool = False,
                 stage: str | None = None) -> list[dict[str, Any]]:
  """The records of a `metrics.jsonl`, in file order.

  Blank lines, a line cut short by a kill and anything that is not a JSON
  object are skipped.

  Args:
    path: the file; a missing one has no records.
    latest: keep only the last record per (stage, step): a resumed epoch's
      record supersedes the one written before the kill.
    stage: keep only this stage's records.
  """
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # A line cut short by a kill.
      if isinstance(record, dict) and (stage is None
                                       or record.get('stage') == stage):
        records.append(record)
  if latest:
    last = {}
    for record in records:
      last[(record.get('stage'), record.get('step'))] = record
    records = list(last.values())
  return records


def metrics_lines(records: Iterable[Mapping[str, Any]]) -> str:
  """`metrics.jsonl` text of the records, as `monitor.MetricsLog` writes."""
  return ''.join(json.dumps(r) + '\n' for r in records)


def jsonable(obj: Any) -> Any:
  """`obj` in plain JSON types, as a JSON file of it reads back.

  NumPy and jax arrays become lists, NumPy scalars Python numbers, tuples
  lists (as `jsonio.write_json_atomic` writes them).
  """
  return json.loads(json.dumps(obj, default=jsonio.json_default))


__all__ = ('COMPRESSED_FILE', 'DONE_FILE', 'METRICS_FILE', 'REPORT_FILE',
           'REPORT_MARKDOWN', 'TEACHER_PARAMS', 'copy_file', 'done_path',
           'has_done', 'jsonable', 'load_params', 'metrics_lines', 'metrics_path',
           'read_done', 'read_metrics', 'stage_path', 'write_done')
