"""Resident bits per weight in `compression_report` and `gmp_jax.inspect`.

Byte counts are computed here from the layouts: ceil(n / 2) (4-bit) or n
(8-bit) index bytes plus 4 K codebook bytes, or for a sparse leaf a row and
a column index per nonzero plus its code; dense leaves 4 bytes an entry.
"""

import json
import math

import numpy as np

import gmp_jax
from gmp_jax import inspect as inspect_cli
from gmp_jax import packed as packed_lib


def _tree(rng):
  k16 = (np.arange(16) * 0.01).astype(np.float32)  # 0 and 15 values.
  k40 = (np.arange(40) * 0.01).astype(np.float32)
  sparse = np.zeros((100, 60), np.float32)
  pos = rng.choice(6000, size=90, replace=False)
  sparse.reshape(-1)[pos] = k16[1 + pos % 15]
  return {'a': {'kernel': k16[rng.permutation(np.arange(33 * 17) % 16)]
                .reshape(33, 17)},
          'b': {'kernel': k40[np.arange(20 * 30) % 40].reshape(20, 30)},
          'c': {'kernel': sparse},
          'norm': {'scale': rng.normal(size=64).astype(np.float32)}}


def test_resident_columns_match_an_independent_count(tmp_path):
  tree = _tree(np.random.default_rng(0))
  path = tmp_path / 'm.gmpz'
  gmp_jax.save_compressed(path, tree)
  rep = gmp_jax.compression_report(path=path)
  rows = {r.name: r for r in rep.rows}
  nnz = 90
  want = {
      'a/kernel': ('packed', 33 * math.ceil(17 / 2) + 4 * 16, ''),
      'b/kernel': ('packed', 20 * 30 + 4 * 40, ''),
      # rows < 100 and cols < 60: one byte each; 4-bit codes; K = 16.
      'c/kernel': ('sparse', nnz * 2 + math.ceil(nnz / 2) + 4 * 16, ''),
      'norm/scale': ('dense', 64 * 4, 'raw'),
  }
  assert rows['norm/scale'].storage == 'raw'
  for name, (kind, nbytes, reason) in want.items():
    r = rows[name]
    assert (r.resident_kind, r.resident_bytes, r.resident_reason) == (
        kind, nbytes, reason), name
    assert r.resident_bits_per_weight == 8 * nbytes / r.parameters
  total = sum(n for _, n, _ in want.values())
  t = rep.totals()
  assert t['resident_bytes'] == total
  assert t['resident_bits_per_weight'] == 8 * total / rep.parameters
  assert t['cr_resident'] == 32 * rep.parameters / (8 * total)
  # The same as what load_compressed(packed=True) holds, leaf by leaf.
  loaded = gmp_jax.load_compressed(path, packed=True)
  held = {r.name: r for r in packed_lib.summary(loaded)}
  for name, r in rows.items():
    assert (held[name].kind, held[name].nbytes) == (r.resident_kind,
                                                    r.resident_bytes)
  # Raw in the file; 64 distinct values would pack, but not smaller.
  assert held['norm/scale'].reason == 'not smaller'
  md = rep.to_markdown()
  assert '| norm/scale | dense | 256 | 32.000 | raw |' in md
  assert f'| **total** | | {total:,} |' in md
  d = rep.to_dict()
  assert d['rows'][2]['resident_kind'] == 'sparse'
  assert d['totals']['resident_bytes'] == total


def test_dense_reasons():
  rng = np.random.default_rng(1)
  many = rng.normal(size=(30, 30)).astype(np.float32)
  tiny = np.array([0.5], np.float32)  # Packed: 1 + 2 * 4 bytes > 4.
  assert packed_lib.dense_reason(many) == 'too many values'
  assert packed_lib.dense_reason(tiny) == 'not smaller'
  assert packed_lib.dense_reason(np.arange(3)) == 'not floating'
  assert packed_lib.dense_reason(many, raw=True) == 'raw'
  rows = {r.name: r for r in packed_lib.summary(
      gmp_jax.pack({'many': many, 'tiny': tiny}))}
  assert rows['many'].reason == 'too many values'
  assert rows['tiny'].reason == 'not smaller'


def test_inspect_shows_resident_bits(tmp_path, capsys):
  path = tmp_path / 'm.gmpz'
  gmp_jax.save_compressed(path, _tree(np.random.default_rng(2)))
  assert inspect_cli.main([str(path), '--json']) == 0
  out = json.loads(capsys.readouterr().out)
  assert {r['name']: r['resident_kind'] for r in out['rows']} == {
      'a/kernel': 'packed', 'b/kernel': 'packed', 'c/kernel': 'sparse',
      'norm/scale': 'dense'}
  assert out['totals']['resident_bytes'] == sum(
      r['resident_bytes'] for r in out['rows'])
  assert inspect_cli.main([str(path)]) == 0
  assert 'Resident when loaded' in capsys.readouterr().out
