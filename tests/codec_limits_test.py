"""Bounded loading: files whose declared leaves exceed the bounds, hostile
shapes and counts, are rejected before anything large is allocated."""

import json
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

import helpers
from gmp_jax import codec
from gmp_jax import inspect as inspect_cli

CorruptFileError = codec.CorruptFileError


_varint = helpers.varint


def _gf2_times(mat, vec):
  out, i = 0, 0
  while vec:
    if vec & 1:
      out ^= mat[i]
    vec >>= 1
    i += 1
  return out


def _crc32_zeros(n):
  """CRC32 of n zero bytes without the bytes (zlib's crc32_combine)."""
  # The operator of one zero byte, squared log2(n) times.
  op = [0xEDB88320] + [1 << i for i in range(31)]  # One zero bit.
  for _ in range(3):
    op = [_gf2_times(op, op[i]) for i in range(32)]  # 8 bits: one byte.
  crc = 0xFFFFFFFF
  while n:
    if n & 1:
      crc = _gf2_times(op, crc)
    n >>= 1
    op = [_gf2_times(op, op[i]) for i in range(32)]
  return crc ^ 0xFFFFFFFF


def _v2_file(dims, *, dtype_code=10, itemsize=4, dim_bytes=None):
  """A version-2 file of one all-zero leaf 'w' of shape `dims`, CRCs right."""
  shape = dim_bytes if dim_bytes is not None else b''.join(map(_varint, dims))
  body = (b'\x00'  # No shared codebook.
          + b'\x01\x01' + _varint(3) + b'w'  # A dict {'w': ...}.
          + bytes([4, dtype_code]) + _varint(len(dims)) + shape
          + b'\x00\x00'  # Coded, no nonzeros.
          + b'\x00'  # Metadata None.
          + b'\x00\x00')  # Two empty streams.
  n = int(np.prod(dims, dtype=object))
  data_crc = _crc32_zeros(n * itemsize) if n * itemsize < 2**62 else 0
  fixed = 5 + len(body) + 8
  length = fixed + 1
  while len(_varint(length)) != length - fixed:
    length += 1
  out = b'\x89GMP\x02' + _varint(length) + body + struct.pack('<I', data_crc)
  return out + struct.pack('<I', zlib.crc32(out))


def _peak_bytes(fn):
  tracemalloc.start()
  try:
    fn()
  finally:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  return peak


def test_crc_of_zeros_matches_zlib():
  for n in (0, 1, 7, 1000, 4096):
    assert _crc32_zeros(n) == zlib.crc32(bytes(n))


def test_small_hand_made_file_loads():
  data = _v2_file((1000,))
  out = codec.from_bytes(data).params
  np.testing.assert_array_equal(out['w'], np.zeros(1000, np.float32))


def test_32_byte_file_of_a_2_30_entry_leaf_is_rejected_before_allocating():
  data = _v2_file((2**30,))
  assert len(data) == 32
  # Every CRC is right: without bounds the structure parses.
  declared = codec.from_bytes(data, decode=False)
  assert declared.leaves[0].shape == (2**30,)

  def load():
    with pytest.raises(CorruptFileError, match=r'w: .*max_bytes=2,147,483,'):
      codec.from_bytes(data)

  assert _peak_bytes(load) < 1 << 20


def test_bounds_can_be_lowered_and_raised():
  data = _v2_file((512, 512))
  with pytest.raises(CorruptFileError, match='over max_elements=100,000'):
    codec.from_bytes(data, max_elements=100_000)
  with pytest.raises(CorruptFileError, match='over max_bytes=1,000'):
    codec.from_bytes(data, max_bytes=1000)
  out = codec.from_bytes(data, max_elements=512 * 512,
                         max_bytes=4 * 512 * 512).params['w']
  assert out.shape == (512, 512) and not out.any()


def test_bounds_count_the_whole_file(tmp_path):
  params = {'a': np.zeros(600, np.float32), 'b': np.zeros(600, np.float32)}
  path = tmp_path / 'two.gmpz'
  codec.save_compressed(path, params)
  with pytest.raises(CorruptFileError, match='b: .*1,200 decoded elements'):
    codec.load_compressed(path, max_elements=1000)
  assert codec.load_compressed(path, max_elements=1200)['b'].size == 600


def test_shape_whose_product_overflows_int64_is_rejected():
  data = _v2_file((2**40, 2**40))

  def load():
    with pytest.raises(CorruptFileError, match='overflows int64'):
      codec.from_bytes(data, max_elements=None, max_bytes=None)

  assert _peak_bytes(load) < 1 << 20


@pytest.mark.parametrize('dim_bytes, match', [
    (b'\xff' * 10 + b'\x01', 'varint too long'),  # Beyond 64 bits.
    (b'\xff' * 9 + b'\x01', 'overflows int64'),  # 2**64 - 1.
])
def test_huge_varints_are_rejected(dim_bytes, match):
  data = _v2_file((1,), dim_bytes=dim_bytes)

  def load():
    with pytest.raises(CorruptFileError, match=match):
      codec.from_bytes(data, max_elements=None, max_bytes=None)

  assert _peak_bytes(load) < 1 << 20


def test_negative_dimension_in_a_version_1_header_is_rejected():
  header = zlib.compress(json.dumps(
      {'tree': ['d', [['w', ['a', 0]]]], 'metadata': ['n'],
       'leaves': [['float32', [-1, 4], 'float32']], 'params': 1}).encode())
  payload = b'\x00\x00'
  head = struct.pack('<8sHHIQIIII', b'\x89GMPJAX\n', 1, 0, len(header),
                     len(payload), zlib.crc32(header), zlib.crc32(payload),
                     0, 0)
  head = head[:-4] + struct.pack('<I', zlib.crc32(head[:-4]))
  with pytest.raises(CorruptFileError, match='w: negative dimension'):
    codec.from_bytes(head + header + payload)


def _with_byte(data, offset, value):
  bad = bytearray(data)
  bad[offset] = value
  bad[-4:] = struct.pack('<I', zlib.crc32(bytes(bad[:-4])))
  return bytes(bad)


def test_decoded_counts_that_disagree_with_the_record_are_rejected():
  x = np.zeros(64, np.float32)
  x[[3, 10, 20, 40, 63]] = 0.5
  data = codec.to_bytes({'w': x})
  # Head (6 bytes), shared 0, dict, 1, key, 'w', array, float32, ndim, 64,
  # flags: the nonzero count is byte 16.
  assert data[15:18] == bytes([0, 5, 1])
  for nnz in (4, 6):
    with pytest.raises(CorruptFileError, match='nonzeros|stream'):
      codec.from_bytes(_with_byte(data, 16, nnz))
  with pytest.raises(CorruptFileError, match='more nonzeros than entries'):
    codec.from_bytes(_with_byte(data, 16, 65))


def test_inspect_declared_reports_sizes_without_decoding(tmp_path, capsys):
  path = tmp_path / 'big.gmpz'
  path.write_bytes(_v2_file((2**30,)))

  def run():
    assert inspect_cli.main([str(path), '--declared', '--json']) == 0

  assert _peak_bytes(run) < 1 << 20
  out = json.loads(capsys.readouterr().out)
  assert out['leaves'] == [{'name': 'w', 'dtype': 'float32',
                            'shape': [2**30], 'elements': 2**30,
                            'bytes': 2**32, 'metadata': False}]
  assert inspect_cli.main([str(path)]) == 1  # The full report is bounded.
  assert 'max_bytes' in capsys.readouterr().err
