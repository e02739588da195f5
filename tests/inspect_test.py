"""Tests of the `python -m gmp_jax.inspect` CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gmp_jax import codec
from gmp_jax import inspect as inspect_cli


@pytest.fixture
def model_file(tmp_path):
  w = np.zeros((40, 30), np.float32)
  w[::3, ::2] = 0.25
  w[1::7, 1::5] = -0.5
  path = tmp_path / 'model.gmp'
  codec.save_compressed(path, {'dense': {'kernel': w,
                                         'bias': np.zeros(30, np.float32)}})
  return path, w


def test_markdown_output(model_file, capsys):
  path, w = model_file
  assert inspect_cli.main([str(path)]) == 0
  out = capsys.readouterr().out
  assert '| dense/kernel | (40, 30) | 1,200 |' in out
  n, size = w.size + 30, os.path.getsize(path)
  assert f'{32 * n / (8 * size):.1f}×' in out  # CR_file.
  assert f'{n / np.count_nonzero(w):.1f}×' in out  # |W| / |W≠0|.


def test_json_output(model_file, capsys):
  path, w = model_file
  assert inspect_cli.main([str(path), '--json']) == 0
  d = json.loads(capsys.readouterr().out)
  assert d['totals']['file_bytes'] == os.path.getsize(path)
  assert d['totals']['nonzeros'] == np.count_nonzero(w)


@pytest.mark.parametrize('content', [None, b'not a model', 'truncate'])
def test_bad_files_exit_nonzero_with_a_message(model_file, tmp_path, capsys,
                                               content):
  path, _ = model_file
  bad = tmp_path / 'bad.gmp'
  if content == 'truncate':
    bad.write_bytes(path.read_bytes()[:-3])
  elif content is not None:
    bad.write_bytes(content)
  assert inspect_cli.main([str(bad)]) == 1
  captured = capsys.readouterr()
  assert captured.out == ''
  assert captured.err.startswith(f'error: {bad}: ')


def test_module_entry_point(model_file, tmp_path):
  path, _ = model_file
  ok = subprocess.run([sys.executable, '-m', 'gmp_jax.inspect', str(path)],
                      capture_output=True, text=True, check=False)
  assert ok.returncode == 0, ok.stderr
  assert 'CR_Han' in ok.stdout
  bad = tmp_path / 'bad.gmp'
  bad.write_bytes(b'\0' * 64)
  fail = subprocess.run([sys.executable, '-m', 'gmp_jax.inspect', str(bad)],
                        capture_output=True, text=True, check=False)
  assert fail.returncode == 1
  assert 'bad magic' in fail.stderr


def test_declared_sizes_markdown(model_file, capsys):
  path, w = model_file
  assert inspect_cli.main([str(path), '--declared']) == 0
  out = capsys.readouterr().out
  assert f'| dense/kernel | float32 | (40, 30) | 1,200 | {w.nbytes:,} |' in out
  assert f'| total | | | 1,230 | {4 * 1230:,} |' in out
  assert f'file: {os.path.getsize(path):,} bytes, format version 2' in out
