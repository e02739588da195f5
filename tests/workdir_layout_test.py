"""experiments.infra.workdir_layout: paths, done records, the metrics reader."""

import json
import os

import numpy as np

from experiments.infra import monitor
from experiments.tools import tensorboard
from experiments.infra import workdir_layout


def test_paths_and_done_records(tmp_path):
  w = str(tmp_path)
  assert workdir_layout.done_path(w, 'teacher') == os.path.join(
      w, 'teacher', 'done.json')
  assert not workdir_layout.has_done(w, 'teacher')
  os.makedirs(os.path.join(w, 'teacher'))
  workdir_layout.write_done(w, 'teacher', {'test_accuracy': np.float32(0.5),
                                           'shape': (2, 3)})
  assert workdir_layout.has_done(w, 'teacher')
  assert workdir_layout.read_done(w, 'teacher') == {'test_accuracy': 0.5,
                                                    'shape': [2, 3]}
  workdir_layout.copy_file(workdir_layout.done_path(w, 'teacher'),
                           os.path.join(w, 'other', 'teacher', 'done.json'))
  assert (open(os.path.join(w, 'other', 'teacher', 'done.json')).read()
          == open(workdir_layout.done_path(w, 'teacher')).read())


def test_one_reader_for_every_user(tmp_path):
  records = [{'stage': 'teacher', 'step': 1, 'loss': 2.0},
             {'stage': 'retrain', 'step': 1, 'loss': 1.5},
             {'stage': 'retrain', 'step': 2, 'loss': 1.0},
             {'stage': 'retrain', 'step': 2, 'loss': 0.9}]  # After a resume.
  path = workdir_layout.metrics_path(str(tmp_path))
  with open(path, 'w') as f:
    f.write(workdir_layout.metrics_lines(records[:2]))
    f.write('\n[1, 2]\n')  # A blank line and a non-object are skipped.
    f.write(''.join(json.dumps(r) + '\n' for r in records[2:]))
    f.write('{"stage": "retrain", "st')  # A torn last line.
  assert workdir_layout.read_metrics(path) == records
  assert tensorboard.read_jsonl(path) == records
  assert workdir_layout.read_metrics(path, stage='teacher') == records[:1]
  latest = records[:2] + records[3:]
  assert workdir_layout.read_metrics(path, latest=True) == latest
  assert monitor.MetricsLog(str(tmp_path)).records() == latest
  assert workdir_layout.read_metrics(str(tmp_path / 'none.jsonl')) == []


def test_metrics_lines_match_what_the_log_writes(tmp_path):
  record = {'stage': 'retrain', 'step': 3, 'loss': 0.1 + 0.2,
            'mixture_means': [0.0, -1e-7]}
  monitor.MetricsLog(str(tmp_path)).write(record)
  text = open(workdir_layout.metrics_path(str(tmp_path))).read()
  assert text == json.dumps(record) + '\n'
  assert text == workdir_layout.metrics_lines([record])


def test_jsonable():
  got = workdir_layout.jsonable({'a': np.arange(3), 'b': np.int64(4),
                                 'c': (1.5, None)})
  assert got == {'a': [0, 1, 2], 'b': 4, 'c': [1.5, None]}
  assert type(got['b']) is int  # pylint: disable=unidiomatic-typecheck
