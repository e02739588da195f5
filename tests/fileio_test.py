"""Tests of gmp_jax.codec.fileio: atomic, durable writes."""

import json
import os
import stat

import jax.numpy as jnp
import numpy as np
import pytest

from gmp_jax.codec import fileio
from experiments.infra import jsonio


def _listing(directory):
  return sorted(os.listdir(directory))


@pytest.mark.parametrize('data, want', [
    (b'\x00\x01binary', b'\x00\x01binary'),
    ('text é', 'text é'.encode('utf-8')),
    (lambda f: f.write(b'from a callable'), b'from a callable'),
])
def test_write_atomic_contents(tmp_path, data, want):
  path = tmp_path / 'out.bin'
  path.write_bytes(b'old contents, longer than the new ones')
  fileio.write_atomic(path, data)
  assert path.read_bytes() == want
  assert _listing(tmp_path) == ['out.bin']  # No temporary file left.


def test_write_atomic_creates_directories_and_usual_mode(tmp_path):
  path = tmp_path / 'a' / 'b' / 'out.bin'
  fileio.write_atomic(str(path), b'x')
  assert path.read_bytes() == b'x'
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_failed_write_keeps_old_file(tmp_path):
  path = tmp_path / 'out.bin'
  path.write_bytes(b'old')

  def fail(f):
    f.write(b'partial')
    raise RuntimeError('disk on fire')

  with pytest.raises(RuntimeError, match='disk on fire'):
    fileio.write_atomic(path, fail)
  assert path.read_bytes() == b'old'
  assert _listing(tmp_path) == ['out.bin']


def test_write_atomic_bad_data(tmp_path):
  with pytest.raises(TypeError, match='bytes, str or a callable'):
    fileio.write_atomic(tmp_path / 'x', 12)
  assert _listing(tmp_path) == []


def test_write_json_atomic_arrays(tmp_path):
  path = tmp_path / 'r.json'
  obj = {'np': np.arange(3, dtype=np.int32), 'jax': jnp.ones((2, 2)),
         'scalar': np.float32(0.5), 'int': np.int64(7), 'plain': [1, 'a']}
  jsonio.write_json_atomic(path, obj)
  assert json.loads(path.read_text()) == {
      'np': [0, 1, 2], 'jax': [[1.0, 1.0], [1.0, 1.0]], 'scalar': 0.5,
      'int': 7, 'plain': [1, 'a']}


def test_write_json_atomic_unserialisable_leaves_file(tmp_path):
  path = tmp_path / 'r.json'
  path.write_text('{"old": 1}')
  with pytest.raises(TypeError, match='not JSON serialisable: object'):
    jsonio.write_json_atomic(path, {'x': object()})
  assert json.loads(path.read_text()) == {'old': 1}
  assert _listing(tmp_path) == ['r.json']
