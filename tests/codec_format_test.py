"""Format version 2: the row model, the shared codebook, the binary header,
and reading version-1 files."""

import fractions
import io
import math
import os
import struct
import zlib

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from gmp_jax.codec import _positions
from gmp_jax.codec import _wire
from gmp_jax import codec
import helpers

CorruptFileError = codec.CorruptFileError
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The committed runs written by format version 1 (before the fine-tuning
# and cleanup stages); later runs are written in version 2.
COMMITTED = [os.path.join(REPO, 'results', name, 'model.gmpz')
             for name in ('mnist_v1', 'mnist_layerwise', 'mnist_tau5e-3')]


_same = helpers.assert_same_tree


def _structured(rng, rows=300, cols=200, values=(0.25, -0.5, 0.75)):
  """A pruned kernel with dead rows, dead columns, busy rows and full rows."""
  row_rate = rng.choice([0.0, 0.02, 0.3], rows, p=[0.4, 0.45, 0.15])
  col_rate = rng.choice([0.0, 1.0, 2.5], cols, p=[0.3, 0.5, 0.2])
  p = np.clip(row_rate[:, None] * col_rate[None, :], 0, 1)
  z = rng.random((rows, cols)) < p
  z[5] = True  # A full row.
  x = np.asarray(values, np.float32)[rng.integers(0, len(values),
                                                   (rows, cols))]
  return np.where(z, x, np.float32(0))


# ------------------------------------------------------------- version 1 ---


@pytest.mark.parametrize('path', COMMITTED,
                         ids=[os.path.relpath(p, REPO) for p in COMMITTED])
def test_committed_version_1_files_load_and_shrink(path):
  with open(path, 'rb') as f:
    old = f.read()
  decoded = codec.from_bytes(old)
  assert decoded.version == 1
  new = codec.to_bytes(decoded.params, metadata=decoded.metadata)
  again = codec.from_bytes(new)
  assert again.version == 2
  _same(decoded.params, again.params)
  _same(decoded.metadata, again.metadata)
  assert len(new) < 0.92 * len(old)
  print(f'{os.path.relpath(path, REPO)}: version 1 {len(old):,} bytes, '
        f'version 2 {len(new):,} bytes')


_DTYPES = (np.float32, np.float16, np.float64, np.int32, np.uint8, np.bool_)


@st.composite
def _leaf(draw):
  shape = tuple(draw(st.lists(st.integers(0, 7), max_size=3)))
  dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
  if dtype == np.bool_:
    return np.asarray(rng.random(shape) < density)
  values = (rng.integers(1, 5, draw(st.integers(1, 5))) * 1.5).astype(dtype)
  x = values[rng.integers(0, values.size, shape)]
  return np.asarray(np.where(rng.random(shape) < density, x,
                             np.zeros((), dtype)))


_TREES = st.recursive(
    st.one_of(_leaf(), st.none()),
    lambda children: st.one_of(
        st.dictionaries(st.text(max_size=4), children, max_size=4),
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple)),
    max_leaves=8)


@settings(max_examples=40, deadline=None)
@given(_TREES, _TREES)
def test_both_versions_round_trip_random_trees(params, metadata):
  for data in (helpers.to_bytes_v1(params, metadata=metadata,
                                  codebook_dtype=None),
               codec.to_bytes(params, metadata=metadata,
                              codebook_dtype=None)):
    decoded = codec.from_bytes(data)
    _same(params, decoded.params)
    _same(metadata, decoded.metadata)
    bits = sum(i.total_bits for i in decoded.leaves)
    assert bits + 8 * decoded.header_bytes == 8 * len(data)


def test_file_objects_hold_records_of_both_versions():
  a = {'a': _structured(np.random.default_rng(0))}
  b = {'b': np.arange(5, dtype=np.int8)}
  buf = io.BytesIO(helpers.to_bytes_v1(a) + codec.to_bytes(b)
                   + helpers.to_bytes_v1(b))
  _same(a, codec.load_compressed(buf))
  _same(b, codec.load_compressed(buf))
  _same(b, codec.load_compressed(buf))
  assert buf.read() == b''


# ------------------------------------------------------------- row model ---


def _reference_probabilities(z):
  """p of every coded entry, by the documented formula with Python ints."""
  rows, cols = z.shape
  out = []
  above = [0] * cols
  total = 0
  for i in range(rows):
    r = int(z[i].sum())
    c = [above[j] * (i * cols + 2) + _positions.BETA * (total + 1)
         for j in range(cols)]
    s = sum(c)
    if 0 < r < cols:
      for j in range(cols):
        p = float(r * c[j]) / float(s)
        out.append(min(max(p, _positions.PROB_MIN),
                       1 - _positions.PROB_MIN))
    for j in range(cols):
      above[j] += int(z[i, j])
    total += r
  return np.array(out)


@pytest.mark.parametrize('seed', range(4))
def test_row_model_probabilities_follow_the_formula(seed):
  rng = np.random.default_rng(seed)
  z = rng.random((23, 17)) < rng.uniform(0, 0.6, (23, 1))
  z[3] = True
  z[7] = False
  counts, hist, bits, p, cost = _positions.encode_plan(z)
  np.testing.assert_array_equal(counts, z.sum(1))
  np.testing.assert_array_equal(hist, np.bincount(z.sum(1)))
  want = _reference_probabilities(z)
  assert p.dtype == np.float64
  np.testing.assert_array_equal(p, want)  # Exactly, not approximately.
  coded = (counts > 0) & (counts < z.shape[1])
  np.testing.assert_array_equal(bits, z[coded].reshape(-1))
  # The ideal cost: the bits under p plus the counts under their histogram.
  nz = hist[hist > 0]
  ideal = (-np.sum(np.log2(np.where(bits == 1, want, 1 - want)))
           + np.sum(nz * np.log2(z.shape[0] / nz)))
  assert cost == pytest.approx(ideal)


def test_rows_decode_back_and_bad_counts_raise():
  rng = np.random.default_rng(3)
  z = rng.random((12, 9)) < 0.3
  counts, _, bits, p, _ = _positions.encode_plan(z)
  consumed = [0]
  check = [True]

  def read(q):
    if check[0]:
      np.testing.assert_array_equal(q, p[consumed[0]:consumed[0] + q.size])
    out = bits[consumed[0]:consumed[0] + q.size]
    consumed[0] += q.size
    return out

  np.testing.assert_array_equal(_positions.decode_rows(counts, 9, read), z)
  assert consumed[0] == bits.size
  wrong = counts.copy()
  wrong[np.argmax((counts > 0) & (counts < 9))] += 1
  consumed[0], check[0] = 0, False
  with pytest.raises(ValueError, match='count'):
    _positions.decode_rows(wrong, 9, read)


def test_matrix_shape():
  assert _positions.matrix_shape((5,)) is None
  assert _positions.matrix_shape((1, 5)) is None
  assert _positions.matrix_shape((3, 3, 25, 50)) == (225, 50)
  assert _positions.matrix_shape((2**20, 2**20)) is None  # int64 bound.


def test_row_model_wins_on_structured_leaves():
  rng = np.random.default_rng(1)
  x = _structured(rng)
  decoded = codec.from_bytes(codec.to_bytes({'k': x}))
  _same({'k': x}, decoded.params)
  info = decoded.leaves[0]
  assert info.position_model in ('rows', 'columns')
  n, nnz = x.size, np.count_nonzero(x)
  zero_order = n * -(nnz / n * np.log2(nnz / n)
                     + (1 - nnz / n) * np.log2(1 - nnz / n))
  assert info.position_bits < 0.7 * zero_order
  # Within a few words of the model's ideal cost (plus its histogram).
  view = x != 0 if info.position_model == 'rows' else (x != 0).T
  _, hist, _, _, ideal = _positions.encode_plan(view)
  table_bits = 8 * len(b''.join(_wire.varint(int(h))
                                for h in np.append(hist.size - 1, hist)))
  assert info.position_bits <= ideal + table_bits + 64


def test_iid_leaves_keep_the_zero_order_model_and_its_bound():
  rng = np.random.default_rng(2)
  rows, cols, k = 1000, 800, 8
  values = rng.standard_normal(k).astype(np.float32) + 4
  probs = rng.dirichlet(np.ones(k))
  x = np.where(rng.random((rows, cols)) < 0.06,
               values[rng.choice(k, (rows, cols), p=probs)], np.float32(0))
  data = codec.to_bytes({'w': x})
  info = codec.from_bytes(data).leaves[0]
  nnz = np.count_nonzero(x)
  _, counts = np.unique(x[x != 0], return_counts=True)
  p = nnz / x.size
  position_bound = x.size * -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
  index_bound = -np.sum(counts * np.log2(counts / nnz))
  assert info.position_bits <= 1.005 * position_bound
  assert info.index_bits <= 1.005 * index_bound + 64
  assert len(data) <= (position_bound + index_bound) / 8 * 1.005 + 8 * k + 100


# ------------------------------------------------------ shared codebook ---


def test_leaves_select_from_one_shared_codebook():
  rng = np.random.default_rng(4)
  values = np.array([-0.3, -0.1, 0.05, 0.2, 0.4, 0.6], np.float32)
  params = {f'l{i}': {'kernel': np.where(
      rng.random((40, 30)) < 0.2,
      values[rng.integers(0, 6, (40, 30))], np.float32(0))}
            for i in range(6)}
  data = codec.to_bytes(params)
  decoded = codec.from_bytes(data)
  _same(params, decoded.params)
  # One byte of bitmap per leaf instead of 6 float32 values.
  assert [i.codebook_bits for i in decoded.leaves] == [8] * 6
  # Without sharing each leaf stores K and its values.
  alone = [codec.from_bytes(codec.to_bytes({'k': p['kernel']}))
           for p in params.values()]
  assert all(a.leaves[0].codebook_bits == 6 * 32 for a in alone)
  assert data[5 + 2:5 + 2 + 2] == bytes([6, 10])  # G = 6, float32.


def test_no_shared_codebook_when_it_does_not_pay():
  data = codec.to_bytes({'k': _structured(np.random.default_rng(5))})
  assert data[5 + 2] == 0  # G = 0 (after the 2-byte length varint).


# ------------------------------------------------------ header, scalars ---


def test_metadata_scalars_round_trip_exactly():
  meta = {'model': 'poster', 'again': 'poster', 'ünïcode': 'ø∑',
          'ints': [0, 1, -1, 2**70, -2**70, 127, 128],
          'floats': (0.1, -0.0, math.inf, -math.inf, math.nan, 1e-310),
          'flags': [True, False], 'none': None, 'nested': {'poster': 'x'},
          'arr': np.arange(3, dtype=np.int16)}
  decoded = codec.from_bytes(codec.to_bytes({'w': np.ones(2, np.float32)},
                                            metadata=meta))
  _same(meta, decoded.metadata)


def test_repeated_names_are_stored_once():
  one = codec.to_bytes({'conv1': {'kernel': np.ones(3, np.float32)}})
  two = codec.to_bytes({'conv1': {'kernel': np.ones(3, np.float32)},
                        'conv2': {'kernel': np.ones(3, np.float32)}})
  assert one.count(b'kernel') == two.count(b'kernel') == 1


def test_header_of_the_poster_model_is_lean():
  path = os.path.join(REPO, 'results', 'mnist', 'model.gmpz')
  params = codec.load_compressed(path)
  decoded = codec.from_bytes(codec.to_bytes(params,
                                            metadata={'model': 'poster'}))
  v1 = codec.from_bytes(helpers.to_bytes_v1(params,
                                           metadata={'model': 'poster'}))
  # Version 2 holds the shared codebook in its header; compare the header
  # and codebooks together.
  sizes = [f.header_bytes + sum(i.codebook_bits for i in f.leaves) // 8
           for f in (v1, decoded)]
  print(f'header and codebooks: version 1 {sizes[0]} bytes, version 2 '
        f'{sizes[1]} bytes')
  assert sizes[1] < 0.6 * sizes[0]


# ----------------------------------------------------------- corruption ---


def _rich_file():
  rng = np.random.default_rng(6)
  values = np.array([0.25, -0.5, 0.75], np.float32)  # Those of 'a'.
  params = {'a': _structured(rng, 40, 30),
            'b': np.where(rng.random((30, 20)) < 0.3,
                          values[rng.integers(0, 3, (30, 20))], 0),
            'c': rng.standard_normal(5).astype(np.float32),
            'd': np.zeros(4, np.float32)}
  params['b'] = params['b'].astype(np.float32)
  return codec.to_bytes(params, metadata={
      'model': 'poster', 'n': -3, 'x': 0.5, 'f': False,
      'm': np.where(rng.random(50) < 0.2, 1.5, 0.0)})


def test_rich_file_uses_every_feature():
  decoded = codec.from_bytes(_rich_file())
  models = {i.name: i.position_model for i in decoded.leaves}
  assert models['a'] in ('rows', 'columns') and models['b'] == 'global'
  assert {i.name: i.kind for i in decoded.leaves}['c'] == 'raw'
  assert decoded.leaves[1].codebook_bits == 8  # Shared codebook.


def test_every_bit_flip_and_truncation_is_detected():
  data = _rich_file()
  for i in range(len(data)):
    for bit in (0, 7):
      bad = bytearray(data)
      bad[i] ^= 1 << bit
      with pytest.raises(CorruptFileError):
        codec.from_bytes(bytes(bad))
  for n in range(len(data)):
    with pytest.raises(CorruptFileError):
      codec.from_bytes(data[:n])
    with pytest.raises(CorruptFileError):
      codec.load_compressed(io.BytesIO(data[:n]))


def test_wrong_bytes_behind_a_valid_checksum_fail_cleanly():
  """A crafted file (right CRC, wrong content) raises CorruptFileError."""
  data = _rich_file()
  rng = np.random.default_rng(7)
  original = codec.from_bytes(data)
  for i in range(5, len(data) - 8):
    bad = bytearray(data)
    bad[i] = (bad[i] + int(rng.integers(1, 256))) % 256
    bad[-4:] = struct.pack('<I', zlib.crc32(bytes(bad[:-4])))
    try:
      decoded = codec.from_bytes(bytes(bad))
    except CorruptFileError:
      continue
    # Names and metadata scalars are covered by the file CRC alone, but the
    # arrays by the data CRC too: they cannot change.
    want = [x for _, x in codec.named_leaves(original.params)]
    got = [x for _, x in codec.named_leaves(decoded.params)]
    assert len(got) == len(want)
    for a, b in zip(want, got):
      _same(a, b)


def test_exact_fraction_rounding_is_not_needed_but_float_is_deterministic():
  # The quotient is float(int) / float(int): two conversions and one IEEE
  # division, the same on every platform (compare the exact fraction).
  z = np.zeros((3, 4), bool)
  z[0, :2] = True
  z[1, 1:] = True
  z[2, 3] = True
  _, _, _, p, _ = _positions.encode_plan(z)
  exact = fractions.Fraction(2 * _positions.BETA, 4 * _positions.BETA)
  assert p[0] == float(exact) == 0.5


@pytest.mark.parametrize('block', [1 << 18, 50])
@pytest.mark.parametrize('transposed', [False, True])
def test_blocked_row_model_matches_the_whole_matrix_plan(block, transposed,
                                                         monkeypatch):
  monkeypatch.setattr(_positions, '_BLOCK', block)
  z = _structured(np.random.default_rng(11), rows=90, cols=70) != 0
  view = np.ascontiguousarray(z.T) if transposed else z
  counts, hist, bits, p, cost = _positions.encode_plan(view)
  got_counts, got_hist, got_cost = _positions.plan_cost(
      z, transposed=transposed)
  np.testing.assert_array_equal(got_counts, counts)
  np.testing.assert_array_equal(got_hist, hist)
  assert got_cost == pytest.approx(cost, rel=1e-12)
  blocks = list(_positions._blocks(z, reverse=True, transposed=transposed))
  np.testing.assert_array_equal(
      np.concatenate([b.reshape(-1) for b, _ in blocks[::-1]]), bits)
  np.testing.assert_array_equal(
      np.concatenate([q.reshape(-1) for _, q in blocks[::-1]]), p)
  np.testing.assert_array_equal(_positions.transpose(z, tile=16), z.T)
