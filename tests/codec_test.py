"""Tests of the compressed file format (gmp_jax.codec)."""

import collections
import io
import json
import os
import stat
import struct
import types
import zlib

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from scipy import stats

from gmp_jax.codec import _ans
from gmp_jax import codec
import helpers

CorruptFileError = codec.CorruptFileError
RESULTS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'results')


def _quantized(rng, shape, *, dtype=np.float32, density=0.1, k=4):
  """A leaf whose nonzeros take one of `k` values."""
  values = (rng.standard_normal(k) + 3.0).astype(dtype)
  x = values[rng.integers(0, k, size=shape)]
  return np.where(rng.random(shape) < density, x, np.zeros((), dtype))


def _assert_same(a, b, path='root'):
  """Same containers, keys, shapes, dtypes and bytes."""
  if isinstance(a, dict):
    assert type(b) is dict, path
    assert list(a) == list(b), path
    for k in a:
      _assert_same(a[k], b[k], f'{path}/{k}')
  elif isinstance(a, (list, tuple)):
    assert type(b) is type(a), path
    assert len(a) == len(b), path
    for i, (u, v) in enumerate(zip(a, b)):
      _assert_same(u, v, f'{path}/{i}')
  elif a is None:
    assert b is None, path
  else:
    a = np.asarray(a)
    assert isinstance(b, np.ndarray), path
    assert b.dtype == a.dtype and b.shape == a.shape, path
    assert b.tobytes() == a.tobytes(), path


def _roundtrip(params, **kwargs):
  buf = io.BytesIO()
  codec.save_compressed(buf, params, **kwargs)
  buf.seek(0)
  return codec.load_compressed(buf)


# ------------------------------------------------------------ round trip ---

_DTYPES = (np.float32, np.float16, ml_dtypes.bfloat16, np.float64, np.int32,
           np.int8, np.uint16, np.bool_)


@st.composite
def _leaves(draw, dtypes=_DTYPES):
  shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=4)))
  dtype = np.dtype(draw(st.sampled_from(dtypes)))
  seed = draw(st.integers(0, 2**32 - 1))
  rng = np.random.default_rng(seed)
  density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.9, 1.0]))
  k = draw(st.integers(1, 6))
  if dtype == np.bool_:
    return np.asarray(rng.random(shape) < density)
  return _quantized(rng, shape, dtype=dtype, density=density, k=k)


def _trees(leaves):
  keys = st.text(min_size=0, max_size=5)
  return st.recursive(
      st.one_of(leaves, st.none()),
      lambda children: st.one_of(
          st.dictionaries(keys, children, max_size=4),
          st.lists(children, max_size=3),
          st.lists(children, max_size=3).map(tuple)),
      max_leaves=8)


@settings(max_examples=30, deadline=None)
@given(_trees(_leaves()))
def test_roundtrip_is_exact_with_leaf_dtype_codebooks(tree):
  _assert_same(tree, _roundtrip(tree, codebook_dtype=None))


@settings(max_examples=30, deadline=None)
@given(_trees(_leaves((np.float32, np.float16, ml_dtypes.bfloat16,
                       np.int32))))
def test_roundtrip_is_exact_with_default_codebook(tree):
  _assert_same(tree, _roundtrip(tree))


@pytest.mark.parametrize('make', [
    lambda rng: np.float32(2.5),  # NumPy scalar.
    lambda rng: np.float64(0.0),  # NumPy scalar that is also a float.
    lambda rng: np.array(2.5, np.float32),  # 0-d.
    lambda rng: np.array(0.0, np.float32),  # 0-d zero.
    lambda rng: _quantized(rng, (100,)),  # 1-d.
    lambda rng: _quantized(rng, (3, 3, 4, 5), density=0.5),  # 4-d.
    lambda rng: np.zeros((7, 9), np.float32),  # All zero.
    lambda rng: np.full((6, 6), -0.75, np.float32),  # One value, dense.
    lambda rng: _quantized(rng, (50,), k=1),  # One value, sparse.
    lambda rng: _quantized(rng, (64,), dtype=np.float16),
    lambda rng: _quantized(rng, (64,), dtype=ml_dtypes.bfloat16),
    lambda rng: np.zeros((0, 3), np.float32),  # Empty.
    lambda rng: rng.standard_normal((40, 40)).astype(np.float32),  # Raw.
    lambda rng: np.array([1 + 2j, 0], np.complex128),  # No uint view: raw.
    lambda rng: np.array([0.0, -0.0, np.nan, -np.nan, np.inf], np.float32),
    lambda rng: np.arange(12, dtype=np.int64).reshape(3, 4),
])
def test_edge_case_leaves_roundtrip(make):
  x = make(np.random.default_rng(0))
  _assert_same({'x': x}, _roundtrip({'x': x}))


def test_containers_roundtrip():
  rng = np.random.default_rng(1)
  tree = {'params': {}, 'b': [], 'c': (), 'd': None,
          'e': [{'f': _quantized(rng, (5,))}, (None, {})],
          'g': {'': _quantized(rng, (2, 2))}}
  _assert_same(tree, _roundtrip(tree))


def test_mappings_come_back_as_dicts():
  x = np.ones(3, np.float32)
  out = _roundtrip(types.MappingProxyType({'a': x}))
  _assert_same({'a': x}, out)


def test_jax_arrays_load_as_numpy():
  x = jnp.array([[0.0, 1.5], [0.0, -2.0]], jnp.bfloat16)
  out = _roundtrip({'w': x})['w']
  assert isinstance(out, np.ndarray)
  assert out.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(out.view(np.uint16),
                                np.asarray(x).view(np.uint16))


def test_ten_million_entry_leaf_roundtrips():
  x = _quantized(np.random.default_rng(2), (10_000_000,), density=0.08, k=10)
  _assert_same({'big': x}, _roundtrip({'big': x}))


@pytest.mark.parametrize('codebook_dtype', ['bfloat16', 'float16'])
def test_narrow_codebook_is_exact_against_cast_values(codebook_dtype):
  x = _quantized(np.random.default_rng(3), (30, 20), k=7)
  x[0, 0] = 1e-30  # Rounds to zero in both narrow types.
  out = _roundtrip({'w': x}, codebook_dtype=codebook_dtype)['w']
  narrow = np.dtype(getattr(ml_dtypes, codebook_dtype, codebook_dtype))
  expected = x.astype(narrow).astype(np.float32)
  assert out.dtype == np.float32
  assert out.tobytes() == expected.tobytes()


def test_float64_leaves_use_float32_codebook_by_default():
  x = np.array([0.0, 0.1, 0.1, 0.0], np.float64)
  np.testing.assert_array_equal(_roundtrip({'w': x})['w'],
                                x.astype(np.float32).astype(np.float64))
  _assert_same({'w': x}, _roundtrip({'w': x}, codebook_dtype=None))


def test_metadata_rides_along_exactly():
  rng = np.random.default_rng(4)
  meta = {'name': 'poster', 'tau': 5e-3, 'steps': 10, 'ok': True,
          'none': None, 'list': [1, 'a', 2.5],
          'mixture': {'means': rng.standard_normal(16),
                      'log_precisions': rng.standard_normal(16)}}
  params = {'w': _quantized(rng, (10,))}
  buf = io.BytesIO()
  codec.save_compressed(buf, params, metadata=meta, codebook_dtype='bfloat16')
  buf.seek(0)
  info = codec.load_compressed_with_info(buf)
  got_params, got_meta = info.params, info.metadata
  _assert_same(params['w'].astype(ml_dtypes.bfloat16).astype(np.float32),
               got_params['w'])
  assert {k: v for k, v in got_meta.items() if k != 'mixture'} == {
      k: v for k, v in meta.items() if k != 'mixture'}
  _assert_same(meta['mixture'], got_meta['mixture'])  # float64, exact.


def test_numpy_scalars_in_metadata_stay_arrays():
  meta = codec.load_compressed_with_info(io.BytesIO(codec.to_bytes(
      {}, metadata={'lr': np.float64(0.5), 'py': 0.5}))).metadata
  assert isinstance(meta['lr'], np.ndarray) and meta['lr'].dtype == np.float64
  assert meta['py'] == 0.5 and isinstance(meta['py'], float)


@pytest.mark.parametrize('codebook_dtype', ['int8', 'nonsense'])
def test_bad_codebook_dtype_raises_value_error(codebook_dtype):
  with pytest.raises(ValueError, match='codebook_dtype'):
    codec.to_bytes({}, codebook_dtype=codebook_dtype)


def test_encoding_is_deterministic():
  params = {'w': _quantized(np.random.default_rng(5), (300, 30))}
  assert codec.to_bytes(params) == codec.to_bytes(params)


@pytest.mark.parametrize('tree, match', [
    ({'w': 1.5}, 'Python float'),
    ({'a': {1.5: np.ones(2)}}, r'a: dict keys must be str or int, got 1\.5'),
    ({(1, 2): np.ones(2)}, 'keys must be str or int'),
    ({True: np.ones(2)}, 'keys must be str or int'),
    ({'w': collections.namedtuple('P', 'a')(np.ones(2))}, 'named tuple'),
    ({'w': {1, 2}}, 'unsupported node'),
    ({'w': np.array(['a'])}, 'unsupported dtype'),
    ({'w': np.array([None])}, 'unsupported dtype'),
])
def test_unsupported_trees_raise_type_error(tree, match):
  with pytest.raises(TypeError, match=match):
    codec.to_bytes(tree)


# ------------------------------------------------------------ file level ---


def test_path_write_is_atomic_and_readable(tmp_path):
  path = tmp_path / 'model.gmp'
  params = {'w': _quantized(np.random.default_rng(6), (50, 50))}
  n = codec.save_compressed(path, params)
  codec.save_compressed(str(path), params)  # Overwrites in place.
  assert sorted(os.listdir(tmp_path)) == ['model.gmp']  # No temp files left.
  assert os.path.getsize(path) == n
  assert stat.S_IMODE(os.stat(path).st_mode) & 0o600 == 0o600
  _assert_same(params, codec.load_compressed(path))


def test_file_object_reads_exactly_one_record():
  a, b = {'a': np.ones(3, np.float32)}, {'b': np.zeros(2, np.float16)}
  buf = io.BytesIO()
  codec.save_compressed(buf, a)
  codec.save_compressed(buf, b)
  buf.seek(0)
  _assert_same(a, codec.load_compressed(buf))
  _assert_same(b, codec.load_compressed(buf))


def test_preamble_matches_documented_layout():
  params = {'w': _quantized(np.random.default_rng(7), (20, 20))}
  data = codec.to_bytes(params)
  assert data[:4] == b'\x89GMP' and data[4] == 2
  length, n = 0, 0
  while True:  # LEB128 varint.
    byte = data[5 + n]
    length |= (byte & 0x7F) << (7 * n)
    n += 1
    if not byte & 0x80:
      break
  assert length == len(data)
  assert struct.unpack('<I', data[-4:])[0] == zlib.crc32(data[:-4])
  w = params['w']
  patterns = w.view(np.uint32)
  assert struct.unpack('<I', data[-8:-4])[0] == zlib.crc32(
      patterns.tobytes())
  # No shared codebook (one leaf), then the tree: a dict of one float32
  # (20, 20) array named 'w'.
  assert data[5 + n:5 + n + 10] == bytes([0, 1, 1, 3]) + b'w' + bytes(
      [4, 10, 2, 20, 20])
  assert codec.from_bytes(data).version == 2


def test_version_1_preamble_matches_documented_layout():
  params = {'w': _quantized(np.random.default_rng(7), (20, 20))}
  data = helpers.to_bytes_v1(params)
  magic, version, flags, h, p, h_crc, p_crc, _, crc = struct.unpack(
      '<8sHHIQIIII', data[:40])
  assert magic == b'\x89GMPJAX\n' and version == 1 and flags == 0
  assert len(data) == 40 + h + p
  assert crc == zlib.crc32(data[:36])
  assert h_crc == zlib.crc32(data[40:40 + h])
  assert p_crc == zlib.crc32(data[40 + h:])
  header = json.loads(zlib.decompress(data[40:40 + h]))
  assert header['leaves'] == [['float32', [20, 20], 'float32']]
  assert header['tree'] == ['d', [['w', ['a', 0]]]]
  decoded = codec.from_bytes(data)
  assert decoded.version == 1
  _assert_same(params, decoded.params)


def _small_file():
  rng = np.random.default_rng(8)
  return codec.to_bytes({'k': _quantized(rng, (8, 8), density=0.4),
                         'b': _quantized(rng, (4,), density=1.0, k=1),
                         'r': rng.standard_normal(3).astype(np.float32)},
                        metadata={'name': 'm'})


def test_every_single_bit_flip_is_detected():
  data = _small_file()
  for i in range(len(data)):
    bad = bytearray(data)
    bad[i] ^= 1 << (i % 8)
    with pytest.raises(CorruptFileError):
      codec.from_bytes(bytes(bad))


def test_every_truncation_is_detected(tmp_path):
  data = _small_file()
  for n in range(len(data)):
    with pytest.raises(CorruptFileError):
      codec.from_bytes(data[:n])
  path = tmp_path / 'cut.gmp'
  path.write_bytes(data[:-1])
  with pytest.raises(CorruptFileError, match='truncated'):
    codec.load_compressed(path)
  with pytest.raises(CorruptFileError, match='truncated'):
    codec.load_compressed(io.BytesIO(data[:-5]))


def test_trailing_bytes_in_a_path_are_detected(tmp_path):
  path = tmp_path / 'long.gmp'
  path.write_bytes(_small_file() + b'\0')
  with pytest.raises(CorruptFileError, match='unexpected bytes'):
    codec.load_compressed(path)


@pytest.mark.parametrize('data', [
    b'',
    b'\x89PNG\r\n\x1a\n' + bytes(100),
    b'PK\x03\x04' + bytes(60),
    b'hello world, this is not a model file at all ' * 3,
    bytes(200),
])
def test_foreign_files_are_rejected(tmp_path, data):
  path = tmp_path / 'foreign.bin'
  path.write_bytes(data)
  with pytest.raises(CorruptFileError):
    codec.load_compressed(path)


def test_future_version_is_rejected_clearly():
  data = bytearray(_small_file())
  data[4] = 3
  data[-4:] = struct.pack('<I', zlib.crc32(bytes(data[:-4])))
  with pytest.raises(CorruptFileError, match='version 3'):
    codec.from_bytes(bytes(data))
  with pytest.raises(CorruptFileError, match='version 3'):
    codec.load_compressed(io.BytesIO(bytes(data)))
  old = bytearray(helpers.to_bytes_v1({'w': np.ones(3, np.float32)}))
  old[8:10] = struct.pack('<H', 3)
  old[36:40] = struct.pack('<I', zlib.crc32(bytes(old[:36])))
  with pytest.raises(CorruptFileError, match='version 3'):
    codec.from_bytes(bytes(old))


def test_corrupt_file_error_is_a_value_error():
  assert issubclass(CorruptFileError, ValueError)


# ------------------------------------------------------------------ size ---


def _entropy_bits(counts):
  # n H(counts / n) in bits, from SciPy.
  return np.sum(counts) * stats.entropy(counts, base=2)


def test_file_size_is_close_to_the_entropy_bound():
  rng = np.random.default_rng(9)
  n, k = 2_000_000, 12
  probs = rng.dirichlet(np.ones(k))
  values = rng.standard_normal(k).astype(np.float32) + 5.0
  x = np.where(rng.random(n) < 0.08, values[rng.choice(k, n, p=probs)],
               np.float32(0))
  nnz = np.count_nonzero(x)
  _, counts = np.unique(x[x != 0], return_counts=True)
  bound_bytes = (_entropy_bits([n - nnz, nnz]) + _entropy_bits(counts)) / 8
  size = len(codec.to_bytes({'w': x}))
  assert size >= bound_bytes  # Sanity: nothing beats the entropy.
  # Streams within 0.5% plus the codebook, counts table and a fixed header.
  assert size <= 1.005 * bound_bytes + 4 * k + 4 * k + 200


def test_dense_leaves_are_not_inflated():
  x = np.random.default_rng(10).standard_normal((500, 400)).astype(np.float32)
  assert len(codec.to_bytes({'w': x})) <= x.nbytes + 200


# ------------------------------------------------------------ ANS coder ---


def test_ans_round_trip_and_size():
  rng = np.random.default_rng(11)
  counts = np.array([700, 200, 90, 10])
  symbols = rng.permutation(np.repeat(np.arange(4), counts))
  words = _ans.encode(symbols, counts)
  assert words.dtype == np.uint32
  np.testing.assert_array_equal(_ans.decode(words, counts, symbols.size),
                                symbols)
  bound = _entropy_bits(counts)
  assert bound <= 32 * words.size <= bound + 3 * 32


def test_ans_rejects_extra_or_garbled_words():
  counts = np.array([3, 5])
  symbols = np.array([0, 1, 1, 0, 1, 1, 0, 1])
  words = _ans.encode(symbols, counts)
  with pytest.raises(_ans.DecodeError, match='unused words'):
    _ans.decode(np.append(words, np.uint32(12345)), counts, symbols.size)
  with pytest.raises(_ans.DecodeError, match='unused words'):
    _ans.decode(words, counts, symbols.size - 4)
  assert issubclass(_ans.DecodeError, ValueError)


@pytest.mark.parametrize('run', ['mnist_v1', 'mnist_layerwise', 'mnist_tau5e-3'])
def test_committed_files_reencode_to_the_same_bytes(run):
  path = os.path.join(RESULTS, run, 'model.gmpz')
  with open(path, 'rb') as f:
    data = f.read()
  info = codec.load_compressed_with_info(path)
  params, metadata = info.params, info.metadata
  # They are version-1 files: the version-1 writer gives their bytes back.
  assert helpers.to_bytes_v1(params, metadata=metadata) == data
