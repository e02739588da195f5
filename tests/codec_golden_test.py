"""The writers reproduce committed files byte for byte; the reader reads them.

The golden files under tests/data/codec_golden/ were written by the codec
before its split into modules (`tests/make_codec_golden.py`); the committed
runs under results/ were written by the experiments.
"""

import glob
import json
import os

import ml_dtypes
import numpy as np
import pytest

from gmp_jax import codec
from gmp_jax.codec import _format_v2
from gmp_jax.codec import _positions
import helpers
import make_codec_golden

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(make_codec_golden.DIRECTORY, 'manifest.json')
CASES = {c[0]: c for c in make_codec_golden.golden_cases()}
RESULTS = sorted(glob.glob(os.path.join(REPO, 'results', '**', 'model.gmpz'),
                           recursive=True))


_same = helpers.assert_same_tree


def _stored(x, cb):
  """What a file stores for a params leaf: wider floats cast to `cb`."""
  x = np.asarray(x)
  if cb is None:
    return x
  cb = np.dtype(getattr(ml_dtypes, cb, cb))
  if x.dtype.kind == 'f' and x.dtype.itemsize > cb.itemsize:
    return x.astype(cb).astype(x.dtype)
  return x


def _map(tree, fn):
  if isinstance(tree, dict):
    return {k: _map(v, fn) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_map(v, fn) for v in tree)
  return None if tree is None else fn(tree)


def test_manifest_lists_every_case():
  with open(MANIFEST) as f:
    manifest = json.load(f)
  assert sorted(manifest) == sorted(CASES)


@pytest.mark.parametrize('name', sorted(CASES))
def test_golden_file_reads_and_rewrites_byte_for_byte(name):
  _, version, params, metadata, cb = CASES[name]
  with open(os.path.join(make_codec_golden.DIRECTORY, name + '.gmpz'),
            'rb') as f:
    data = f.read()
  decoded = codec.from_bytes(data)
  assert decoded.version == version
  kinds = iter([i.kind for i in decoded.leaves if not i.is_metadata])
  # Raw leaves are exact; coded ones hold their codebook cast.
  _same(_map(params, lambda x: _stored(x, cb if next(kinds) == 'coded'
                                       else None)), decoded.params)
  _same(metadata, decoded.metadata)
  write = codec.to_bytes if version == 2 else helpers.to_bytes_v1
  assert write(params, metadata=metadata, codebook_dtype=cb) == data
  assert write(decoded.params, metadata=decoded.metadata,
               codebook_dtype=cb) == data


def test_streaming_writer_matches_in_memory_bytes(tmp_path):
  _, _, params, metadata, cb = CASES['rows_and_columns']
  path = tmp_path / 'm.gmpz'
  n = codec.save_compressed(path, params, metadata=metadata,
                            codebook_dtype=cb)
  with open(os.path.join(make_codec_golden.DIRECTORY,
                         'rows_and_columns.gmpz'), 'rb') as f:
    assert path.read_bytes() == f.read()
  assert n == path.stat().st_size


@pytest.mark.parametrize('path', RESULTS,
                         ids=[os.path.relpath(p, REPO) for p in RESULTS])
def test_committed_results_reencode_byte_for_byte(path):
  # Every committed run used the default codebook dtype (float32 leaves).
  with open(path, 'rb') as f:
    data = f.read()
  decoded = codec.load_compressed_with_info(path)
  write = codec.to_bytes if decoded.version == 2 else helpers.to_bytes_v1
  assert write(decoded.params, metadata=decoded.metadata) == data


@pytest.mark.parametrize('name', ['rows_and_columns', 'mlp', 'dtypes',
                                  'raw_and_constant', 'containers'])
def test_small_blocks_give_the_same_bytes(name, monkeypatch):
  # The writer and the reader work in blocks; blocks of a few entries must
  # give the bytes (and values) of the one-block files.
  monkeypatch.setattr(_format_v2, '_CHUNK', 37)
  monkeypatch.setattr(_positions, '_BLOCK', 53)
  _, _, params, metadata, cb = CASES[name]
  with open(os.path.join(make_codec_golden.DIRECTORY, name + '.gmpz'),
            'rb') as f:
    data = f.read()
  assert codec.to_bytes(params, metadata=metadata, codebook_dtype=cb) == data
  monkeypatch.undo()
  want = codec.from_bytes(data)
  monkeypatch.setattr(_format_v2, '_CHUNK', 37)
  got = codec.from_bytes(data)
  _same(want.params, got.params)
  _same(want.metadata, got.metadata)
  assert want.leaves == got.leaves
