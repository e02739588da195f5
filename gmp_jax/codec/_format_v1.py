"""File format version 1 (read only; version 2 replaced it).

::

  offset  size  field
  0       8     magic  b'\\x89GMPJAX\\n'
  8       2     format version (uint16) = 1
  10      2     flags (uint16) = 0
  12      4     H: header length in bytes (uint32)
  16      8     P: payload length in bytes (uint64)
  24      4     CRC32 of the header
  28      4     CRC32 of the payload
  32      4     CRC32 of the decoded leaf data (as in version 2)
  36      4     CRC32 of bytes 0..35
  40      H     header: zlib-compressed UTF-8 JSON
  40+H    P     payload: one record per leaf, in header order

All integers are little-endian. The header JSON is ``{"tree": node,
"metadata": node, "leaves": [[dtype, shape, storage_dtype], ...], "params":
n}`` where the first ``n`` leaves belong to ``tree`` and the rest to
``metadata``. A node is ``["d", [[key, node], ...]]`` (dict), ``["l",
[node, ...]]`` (list), ``["t", [node, ...]]`` (tuple), ``["n"]`` (None),
``["a", i]`` (array leaf ``i``) or ``["v", x]`` (JSON scalar, metadata
only). Dtypes are NumPy / ml_dtypes names.

A leaf record is kind byte 1 and the raw entries, or kind byte 0 and: varint
`nnz` (0 ends the record); varint K; K codebook values (bit patterns of the
storage dtype, sorted as unsigned integers); if K > 1, K varints of counts;
if 0 < nnz < N a position stream; if K > 1 an index stream. A stream is a
varint word count and that many uint32 words of its own ANS coder
(`gmp_jax.codec._ans`), under the categorical model (N - nnz, nnz) of the
nonzero mask and the categorical model of the counts of the codebook indices.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

from gmp_jax.codec import _ans
from gmp_jax.codec import _trees
from gmp_jax.codec import _wire
from gmp_jax.codec._wire import CorruptFileError

VERSION = 1
PREAMBLE = struct.Struct('<8sHHIQIIII')  # 40 bytes, see the docstring.
KIND_CODED, KIND_RAW = 0, 1
MAX_CODEBOOK = 1 << 16


def parse_preamble(head: bytes) -> tuple[int, int, int, int, int]:
  """`(H, P, header CRC, payload CRC, data CRC)` of a version-1 preamble."""
  if len(head) < PREAMBLE.size:
    if not _wire.MAGIC.startswith(head[:len(_wire.MAGIC)]):
      raise CorruptFileError('not a gmp_jax compressed file (bad magic)')
    raise CorruptFileError('file is truncated (incomplete preamble)')
  magic, version, _, h, p, h_crc, p_crc, d_crc, crc = PREAMBLE.unpack(
      head[:PREAMBLE.size])
  if magic != _wire.MAGIC:
    raise CorruptFileError('not a gmp_jax compressed file (bad magic)')
  if zlib.crc32(head[:PREAMBLE.size - 4]) != crc:
    raise CorruptFileError('preamble checksum mismatch (corrupted file)')
  if version != VERSION:
    raise CorruptFileError(f'unsupported format version {version} in a '
                           'version-1 preamble')
  return h, p, h_crc, p_crc, d_crc


def _decode_stream(reader: _wire.Reader, counts: np.ndarray,
                   n: int) -> np.ndarray:
  n_words = reader.varint()
  words = _wire.from_le(reader.take(4 * n_words), np.dtype(np.uint32),
                        n_words)
  try:
    return _ans.decode(words, counts, n)
  except _ans.DecodeError as e:
    raise CorruptFileError(str(e)) from e


def _decode_leaf(reader: _wire.Reader, dtype: np.dtype, shape: tuple[int, ...],
                 store: np.dtype) -> tuple[np.ndarray, dict, np.ndarray]:
  """One leaf record: `(value, stats in bytes, what the data CRC covers)`."""
  n = int(np.prod(shape, dtype=np.int64))
  start = reader.pos
  kind = reader.take(1)[0]
  if kind == KIND_RAW:
    x = _wire.from_le(reader.take(n * dtype.itemsize), dtype, n).reshape(
        shape)
    return x, dict(kind='raw', storage_dtype=dtype.name, raw_bytes=x.nbytes,
                   overhead_bytes=1, nonzeros=None, distinct=None), x
  if kind != KIND_CODED or store.itemsize not in _wire.UINT:
    raise CorruptFileError(f'bad leaf record kind {kind}')
  uint = np.dtype(_wire.UINT[store.itemsize])
  nnz = reader.varint()
  if nnz > n:
    raise CorruptFileError('more nonzeros than entries')
  bits = np.zeros(n, uint)
  stats = dict(kind='coded', storage_dtype=store.name, nonzeros=nnz,
               distinct=0)
  if nnz:
    k = reader.varint()
    if not 1 <= k <= min(nnz, MAX_CODEBOOK):
      raise CorruptFileError(f'bad codebook size {k}')
    overhead = reader.pos - start
    codebook = _wire.from_le(reader.take(k * uint.itemsize), uint, k)
    if codebook[0] == 0 or np.any(codebook[1:] <= codebook[:-1]):
      raise CorruptFileError('codebook is not sorted and nonzero')
    table_start = reader.pos
    counts = reader.varints(k) if k > 1 else np.array([nnz])
    if counts.sum() != nnz or np.any(counts <= 0):
      raise CorruptFileError('codebook counts do not match nonzeros')
    table_bytes = reader.pos - table_start
    pos_start = reader.pos
    if nnz < n:
      mask = _decode_stream(reader, np.array([n - nnz, nnz]), n) != 0
      if np.count_nonzero(mask) != nnz:
        raise CorruptFileError('position stream disagrees with nonzeros')
    else:
      mask = slice(None)
    idx_start = reader.pos
    idx = _decode_stream(reader, counts, nnz) if k > 1 else 0
    bits[mask] = codebook[idx]
    stats.update(distinct=k, codebook_bytes=k * uint.itemsize,
                 table_bytes=table_bytes, position_bytes=idx_start - pos_start,
                 index_bytes=reader.pos - idx_start, overhead_bytes=overhead)
  else:
    stats['overhead_bytes'] = reader.pos - start
  x = bits.view(store).reshape(shape)
  return (x.astype(dtype) if store != dtype else x), stats, bits


def _bits_fields(stats: dict) -> dict:
  """Record stats (in bytes) as `LeafInfo` fields (in bits)."""
  out = {}
  for k, v in stats.items():
    if k.endswith('_bytes'):
      out[k[:-len('_bytes')] + '_bits'] = 8 * v
    else:
      out[k] = v
  if out['kind'] == 'coded':
    out['position_model'] = 'global'
  return out


def read(data: memoryview, limits) -> dict:
  """Decodes the bytes of a version-1 file.

  Args:
    data: the file contents, exactly.
    limits: `check(name, dtype, shape)` raising before any allocation when
      the declared leaves exceed the caller's bounds.

  Returns:
    `params`, `metadata`, `infos` (the `LeafInfo` fields of each leaf),
    `file_bytes`, `header_bytes` and `version`.

  Raises:
    CorruptFileError: if the data is truncated, corrupted or foreign.
  """
  h, p, h_crc, p_crc, d_crc = parse_preamble(bytes(data[:PREAMBLE.size]))
  start = PREAMBLE.size
  if len(data) < start + h + p:
    raise CorruptFileError(f'file is truncated: {len(data)} bytes, header '
                           f'declares {start + h + p}')
  if len(data) > start + h + p:
    raise CorruptFileError(f'{len(data) - start - h - p} unexpected bytes '
                           'after the payload')
  header, payload = data[start:start + h], data[start + h:]
  if zlib.crc32(header) != h_crc:
    raise CorruptFileError('header checksum mismatch (corrupted file)')
  if zlib.crc32(payload) != p_crc:
    raise CorruptFileError('payload checksum mismatch (corrupted file)')
  try:
    head = json.loads(zlib.decompress(header))
    descr, n_params = head['leaves'], int(head['params'])
    specs = [(_wire.dtype_from_name(d), tuple(int(i) for i in s),
              _wire.dtype_from_name(st)) for d, s, st in descr]
  except CorruptFileError:
    raise
  except Exception as e:  # Any parse failure past the CRC is corruption.
    raise CorruptFileError(f'malformed header: {e}') from e
  names = [''] * len(specs)
  refs = list(range(len(specs)))  # Only the names, before any allocation.
  _trees.unflatten(head['tree'], refs, names)
  _trees.unflatten(head['metadata'], refs, names)
  for name, (dtype, shape, _) in zip(names, specs):
    if any(d < 0 for d in shape):
      raise CorruptFileError(f'{name}: negative dimension in {shape}')
    limits(name, dtype, shape)
  reader, leaves, stats, data_crc = _wire.Reader(payload), [], [], 0
  for dtype, shape, store in specs:
    x, st, covered = _decode_leaf(reader, dtype, shape, store)
    leaves.append(x)
    stats.append(st)
    data_crc = _wire.crc(covered, data_crc)
  if reader.pos != len(payload):
    raise CorruptFileError('payload has trailing bytes')
  if data_crc != d_crc:
    raise CorruptFileError('decoded data checksum mismatch')
  params = _trees.unflatten(head['tree'], leaves, names)
  metadata = _trees.unflatten(head['metadata'], leaves, names)
  infos = [dict(name=name, shape=x.shape, dtype=x.dtype.name,
                is_metadata=i >= n_params, **_bits_fields(st))
           for i, (name, x, st) in enumerate(zip(names, leaves, stats))]
  return dict(params=params, metadata=metadata, infos=infos,
              file_bytes=len(data), header_bytes=start + h, version=VERSION)

