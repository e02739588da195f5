"""Compressed model files: real bytes, exact round-trip.

`save_compressed` writes a quantised parameter tree (for example the output of
`gmp_jax.quantize`) to one file; `load_compressed` reads it back with the same
structure, shapes, dtypes and bit-identical values.

Supported trees
---------------
Nested `dict`s with `str` keys (any `Mapping` is accepted and comes back as a
`dict`), `list`s, `tuple`s and `None`. Leaves are arrays: `numpy.ndarray`,
NumPy scalars or `jax.Array`, of any boolean, integer, floating or complex
dtype, including the `ml_dtypes` types (`bfloat16`, `float8_*`, ...).
Loading returns NumPy arrays. Named tuples, other containers, Python scalars
and object/string dtypes raise `TypeError`. The optional `metadata` tree
follows the same rules but may also hold JSON scalars (str, int, float, bool).

Exactness
---------
"Zero" means an all-zero bit pattern, so `-0.0`, NaN payloads and every other
value survive bit for bit. Codebooks of floating leaves wider than
`codebook_dtype` (float32 by default) are cast to it; the round-trip is then
exact against `x.astype(codebook_dtype).astype(x.dtype)`. Pass
`codebook_dtype=None` to always keep the leaf's own dtype. Leaves stored raw
are always exact.

File format, version 2 (written; all integers little-endian)
------------------------------------------------------------
Varints are unsigned LEB128. ::

  magic        4 bytes  b'\\x89GMP'
  version      1 byte   2
  length       varint   L, the size of the whole file in bytes
  codebook     varint G, then if G > 0: dtype, G values (the shared codebook)
  params tree  node
  metadata     node
  streams      varint W, W uint32 words: the params' ANS stream; then the
               same for the metadata's stream
  data CRC     4 bytes  CRC32 of the decoded leaf data (see below)
  file CRC     4 bytes  CRC32 of every preceding byte

A path must hold exactly L bytes; a file object is read for exactly L bytes.
Every single-bit error and every truncation is detected before decoding.

A *string* is a varint v: odd v is a new string of (v - 1) / 2 UTF-8 bytes
that follow; even v repeats the (v / 2)-th new string of the file. A
*dtype* is one byte, an index into `_DTYPE_CODES` ('float32' is 10), or
255 followed by its name as a string. A *node* is a tag byte: 0 None; 1 dict
(varint n, then n pairs of string key and node); 2 list and 3 tuple (varint
n, n nodes); 4 array (dtype, varint ndim, ndim varint dims, leaf record);
metadata only: 5 string, 6 int (varint of the zigzag code 2n or -2n - 1),
7 float (8-byte double), 8 False, 9 True.

A *leaf record* starts with a flags byte. 1: raw, the N entries in C order
follow. Otherwise the leaf is coded: bits 2-3 give the position model (0
global, 1 rows, 2 columns; `gmp_jax._positions`), bit 4 says the codebook
is a selection from the shared one, bit 5 that a storage dtype follows
(when it differs from the leaf dtype). Let `s` be the leaf cast to its
storage dtype, flattened in C order, and `z = s != 0` bitwise. Then:

- varint `nnz`; if 0 the record ends here;
- the codebook, sorted by bit pattern read as an unsigned integer: with bit
  4, a bitmap of ceil(G / 8) bytes (entry i of the shared codebook is bit
  i % 8 of byte i // 8) selecting K entries; else varint K and K values;
- if K > 1: K varints, the count of each codebook entry;
- with the rows (columns) model: varint m, then m + 1 varints, the
  histogram of the row counts of the leaf's matrix view (transposed).

The stream of a tree codes, leaf by leaf in file order, with
`gmp_jax._ans`: under the global model, if 0 < nnz < N, `z` as N symbols
under the categorical model (N - nnz, nnz); under the rows or columns
model, if 0 < nnz < N, the row counts under the categorical model of their
histogram, then the bits of every row that is neither empty nor full,
each with the probability of `gmp_jax._positions`; then, if K > 1, the
codebook index of each nonzero in C order under the categorical model of
the counts. The encoder chooses per leaf the cheapest position model and
raw storage when coding is not smaller, and always for more than 65,536
distinct nonzero values or an itemsize other than 1, 2, 4 or 8 bytes. The
shared codebook holds the union of the codebooks of the params' coded
leaves of their most common storage dtype, when selecting from it saves
bytes.

The data CRC covers, leaf by leaf, the raw bytes of raw leaves and the
little-endian bytes of `s` for coded leaves, so a file never decodes to wrong
arrays, even under a different entropy-coder release.

The global model is zero-order optimal: the positions cost about
N·H(nnz/N) bits and the indices nnz·H(counts/nnz) bits. The row model
learns each column's rate from the rows above and takes each row's count
from the file, which pays off on pruned layers with empty or busy rows and
columns.

File format, version 1 (read only)
----------------------------------
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

The header JSON is ``{"tree": node, "metadata": node, "leaves": [[dtype,
shape, storage_dtype], ...], "params": n}`` where the first ``n`` leaves belong
to ``tree`` and the rest to ``metadata``. A node is ``["d", [[key, node],
...]]`` (dict), ``["l", [node, ...]]`` (list), ``["t", [node, ...]]``
(tuple), ``["n"]`` (None), ``["a", i]`` (array leaf ``i``) or ``["v", x]``
(JSON scalar, metadata only). Dtypes are NumPy / ml_dtypes names.

A leaf record is kind byte 1 and the raw entries, or kind byte 0 and: varint
`nnz` (0 ends the record); varint K; K codebook values; if K > 1, K varints
of counts; if 0 < nnz < N a position stream; if K > 1 an index stream. A
stream is a varint word count and that many uint32 words of its own ANS
coder, under the global model and the counts model of version 2.

The references on ANS are in `gmp_jax._ans`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
import zlib
from collections.abc import Mapping
from typing import Any, BinaryIO, Union

import ml_dtypes
import numpy as np

from gmp_jax import _ans
from gmp_jax import _positions
from gmp_jax import fileio

MAGIC = b'\x89GMPJAX\n'
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_PREAMBLE = struct.Struct('<8sHHIQIIII')  # 40 bytes, see the module docstring.
_KIND_CODED, _KIND_RAW = 0, 1
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_MAX_CODEBOOK = 1 << 16  # Larger codebooks are stored raw.
_SAMPLE = 1 << 16  # Distinct values in this many nonzeros decide raw early.

PathOrFile = Union[str, os.PathLike, BinaryIO]


class CorruptFileError(ValueError):
  """A file is truncated, corrupted, foreign or of an unsupported version."""


@dataclasses.dataclass(frozen=True)
class LeafInfo:
  """Bit accounting of one stored leaf.

  Attributes:
    name: '/'-joined path of the leaf in its tree.
    shape: the leaf shape.
    dtype: the leaf dtype name.
    storage_dtype: dtype name of the codebook (of the data for raw leaves).
    kind: 'coded' or 'raw'.
    nonzeros: entries with a nonzero bit pattern in the storage dtype
      (None when raw).
    distinct: distinct nonzero values (codebook size; None when raw).
    position_model: 'global', 'rows' or 'columns' (see `gmp_jax._positions`)
      for coded leaves, None for raw ones.
    position_bits: the positions (with the row counts and their histogram
      under the row model).
    index_bits: the codebook indices.
    table_bits: the index model (the counts of the codebook entries).
    codebook_bits: the codebook (or its selection from the shared one).
    raw_bits: raw data.
    overhead_bits: record flags, varints of counts and lengths; the last
      coded leaf of a stream also carries the coder's final flush.
    is_metadata: whether the leaf belongs to the metadata tree.
  """
  name: str
  shape: tuple[int, ...]
  dtype: str
  storage_dtype: str
  kind: str
  nonzeros: int | None
  distinct: int | None
  position_model: str | None = None
  position_bits: int = 0
  index_bits: int = 0
  table_bits: int = 0
  codebook_bits: int = 0
  raw_bits: int = 0
  overhead_bits: int = 0
  is_metadata: bool = False

  @property
  def total_bits(self) -> int:
    return (self.position_bits + self.index_bits + self.table_bits
            + self.codebook_bits + self.raw_bits + self.overhead_bits)


@dataclasses.dataclass(frozen=True)
class CompressedFile:
  """A decoded file with its byte accounting.

  Attributes:
    params: the parameter tree (NumPy leaves).
    metadata: the metadata tree, or None.
    leaves: `LeafInfo` of every stored leaf, params first, in file order.
    file_bytes: total size of the file.
    header_bytes: the bytes no leaf accounts for: preamble, checksums, tree
      structure, dtypes and shapes, metadata scalars, the shared codebook
      and the stream lengths. The leaves' bits and these add up to the file.
    version: the file's format version.
  """
  params: Any
  metadata: Any
  leaves: tuple[LeafInfo, ...]
  file_bytes: int
  header_bytes: int
  version: int = 1


# ----------------------------------------------------------------- dtypes ---


def _dtype_from_name(name: str) -> np.dtype:
  try:
    return np.dtype(getattr(ml_dtypes, name, name))
  except TypeError as e:
    raise CorruptFileError(f'unknown dtype {name!r}') from e


def _is_floating(dtype: np.dtype) -> bool:
  if dtype.kind == 'f':
    return True
  if dtype.kind == 'V' and dtype.type.__module__.startswith('ml_dtypes'):
    try:
      ml_dtypes.finfo(dtype)
      return True
    except (TypeError, ValueError):
      return False
  return False


def _check_dtype(dtype: np.dtype, where: str) -> None:
  ok = dtype.kind in 'biufc' or (
      dtype.kind == 'V' and dtype.type.__module__.startswith('ml_dtypes'))
  if not ok or dtype.hasobject:
    raise TypeError(f'{where}: unsupported dtype {dtype}')


def _codebook_dtype(codebook_dtype) -> np.dtype | None:
  """Validated `codebook_dtype` option (None keeps the leaf dtype)."""
  if codebook_dtype is None:
    return None
  try:
    cb = np.dtype(getattr(ml_dtypes, str(codebook_dtype), codebook_dtype))
  except TypeError as e:
    raise ValueError(f'unknown codebook_dtype {codebook_dtype!r}') from e
  if not _is_floating(cb):
    raise ValueError(f'codebook_dtype must be floating, got {cb}')
  return cb


def _storage_dtype(dtype: np.dtype, cb: np.dtype | None) -> np.dtype:
  """The dtype a leaf's codebook is stored in (see the module docstring)."""
  if cb is None or not _is_floating(dtype) or cb.itemsize >= dtype.itemsize:
    return dtype
  return cb


def _le_bytes(x: np.ndarray) -> bytes:
  """C-order little-endian bytes of an array."""
  x = np.ascontiguousarray(x)
  if sys.byteorder == 'big' and x.dtype.itemsize > 1:
    x = x.byteswap()
  return x.tobytes()


def _crc(x: np.ndarray, crc: int) -> int:
  """CRC32 of the C-order little-endian bytes of `x`, continuing `crc`."""
  if sys.byteorder == 'big' and x.dtype.itemsize > 1:
    return zlib.crc32(_le_bytes(x), crc)
  return zlib.crc32(np.ascontiguousarray(x).reshape(-1).view(np.uint8), crc)


def _from_le(buf, dtype: np.dtype, count: int) -> np.ndarray:
  """Array of `count` native `dtype` entries from little-endian bytes."""
  x = np.frombuffer(buf, dtype=dtype, count=count).copy()
  if sys.byteorder == 'big' and dtype.itemsize > 1:
    x = x.byteswap()
  return x


# ------------------------------------------------------------------ trees ---


def _as_array(x, where: str) -> np.ndarray:
  if not isinstance(x, np.generic) and not (
      hasattr(x, 'shape') and hasattr(x, 'dtype')):
    if isinstance(x, (bool, int, float, complex, str, bytes)):
      raise TypeError(f'{where}: leaf is a Python {type(x).__name__}; '
                      'leaves must be arrays (numpy.ndarray or jax.Array)')
    raise TypeError(f'{where}: unsupported node of type {type(x).__name__}; '
                    'supported: dict, list, tuple, None and arrays')
  a = np.asarray(x)
  _check_dtype(a.dtype, where)
  if a.dtype.byteorder not in '=|':
    a = a.astype(a.dtype.newbyteorder('='))
  return a


def _flatten(tree, leaves: list, names: list, *, scalars: bool,
             path: tuple = ()):
  """JSON node of `tree`; appends its arrays to `leaves` and `names`."""
  where = '/'.join(map(str, path)) or '<root>'
  if tree is None:
    return ['n']
  if isinstance(tree, Mapping):
    items = []
    for k, v in tree.items():
      if not isinstance(k, str):
        raise TypeError(f'{where}: dict keys must be str, got {k!r}')
      items.append([k, _flatten(v, leaves, names, scalars=scalars,
                                path=path + (k,))])
    return ['d', items]
  if isinstance(tree, tuple) and hasattr(tree, '_fields'):
    raise TypeError(f'{where}: named tuples are not supported; '
                    'pass `x._asdict()` instead')
  if isinstance(tree, (list, tuple)):
    tag = 'l' if isinstance(tree, list) else 't'
    return [tag, [_flatten(v, leaves, names, scalars=scalars, path=path + (i,))
                  for i, v in enumerate(tree)]]
  if (scalars and isinstance(tree, (bool, int, float, str))
      and not isinstance(tree, np.generic)):
    return ['v', tree]
  leaves.append(_as_array(tree, where))
  names.append(where)
  return ['a', len(leaves) - 1]


def _unflatten(node, leaves: list, names: list, *, path: tuple = ()):
  """Inverse of `_flatten`; fills `names[i]` with the path of leaf i."""
  try:
    tag = node[0]
    if tag == 'n':
      return None
    if tag == 'd':
      return {k: _unflatten(v, leaves, names, path=path + (k,))
              for k, v in node[1]}
    if tag in ('l', 't'):
      out = [_unflatten(v, leaves, names, path=path + (i,))
             for i, v in enumerate(node[1])]
      return out if tag == 'l' else tuple(out)
    if tag == 'v':
      return node[1]
    if tag == 'a':
      names[node[1]] = '/'.join(map(str, path)) or '<root>'
      return leaves[node[1]]
  except (IndexError, TypeError, ValueError, KeyError) as e:
    raise CorruptFileError(f'malformed tree node {node!r:.80}') from e
  raise CorruptFileError(f'unknown tree node {tag!r:.20}')


def named_leaves(tree) -> list[tuple[str, np.ndarray]]:
  """`(name, array)` of every array leaf, in the order a file stores them.

  Names are '/'-joined paths (`'dense/kernel'`), as in `LeafInfo.name`.

  Raises:
    TypeError: for a node, key or dtype the file format does not support.
  """
  leaves, names = [], []
  _flatten(tree, leaves, names, scalars=False)
  return list(zip(names, leaves))


# ---------------------------------------------------------------- varints ---


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


class _Reader:
  """Bounds-checked cursor over the payload."""

  def __init__(self, buf: memoryview):
    self.buf, self.pos = buf, 0

  def take(self, n: int) -> memoryview:
    if n < 0 or self.pos + n > len(self.buf):
      raise CorruptFileError('payload ends inside a leaf record')
    self.pos += n
    return self.buf[self.pos - n:self.pos]

  def varint(self, max_bits: int = 64) -> int:
    n, shift = 0, 0
    while True:
      byte = self.take(1)[0]
      n |= (byte & 0x7F) << shift
      if not byte & 0x80:
        return n
      shift += 7
      if shift >= max_bits:
        raise CorruptFileError('varint too long')


# ---------------------------------------------------------------- streams ---
# The coder itself lives in `gmp_jax._ans`; this frames its words.


def _encode_stream(symbols: np.ndarray, counts: np.ndarray) -> bytes:
  words = _ans.encode(symbols, counts)
  return _varint(words.size) + _le_bytes(words)


def _decode_stream(reader: _Reader, counts: np.ndarray, n: int) -> np.ndarray:
  n_words = reader.varint()
  words = _from_le(reader.take(4 * n_words), np.dtype(np.uint32), n_words)
  try:
    return _ans.decode(words, counts, n)
  except _ans.DecodeError as e:
    raise CorruptFileError(str(e)) from e


# ----------------------------------------------------------------- leaves ---


def _bits(x: np.ndarray) -> np.ndarray | None:
  """Flat unsigned-integer view of the bit patterns, or None if no uint fits."""
  uint = _UINT.get(x.dtype.itemsize)
  if uint is None:
    return None
  return np.ascontiguousarray(x).reshape(-1).view(uint)


def _raw_record(x: np.ndarray) -> tuple[list[bytes], dict]:
  data = _le_bytes(x)
  stats = dict(kind='raw', storage_dtype=x.dtype.name, raw_bytes=len(data),
               overhead_bytes=1, nonzeros=None, distinct=None)
  return [bytes([_KIND_RAW]), data], stats


def _unique(nz: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """Sorted distinct values, inverse indices and counts of `nz`.

  Returns None, to store the leaf raw, when a prefix already shows too many
  distinct values for a codebook to pay off.
  """
  candidates = np.unique(nz[:_SAMPLE])
  if nz.size > _SAMPLE and candidates.size > _SAMPLE // 2:
    return None
  # The prefix usually covers a quantised leaf, and a binary search in a
  # small codebook beats sorting every entry.
  idx = np.minimum(np.searchsorted(candidates, nz), candidates.size - 1)
  if np.array_equal(candidates[idx], nz):
    return candidates, idx, np.bincount(idx, minlength=candidates.size)
  return np.unique(nz, return_inverse=True, return_counts=True)


def _coded_record(bits: np.ndarray, store: np.dtype
                  ) -> tuple[list[bytes], dict] | None:
  """Codebook record of the bit patterns `bits`, or None to store raw."""
  n = bits.size
  mask = bits != 0
  nz = bits[mask]
  nnz = nz.size
  head = bytes([_KIND_CODED]) + _varint(nnz)
  stats = dict(kind='coded', storage_dtype=store.name, nonzeros=nnz,
               distinct=0, overhead_bytes=len(head))
  if nnz == 0:
    return [head], stats
  unique = _unique(nz)
  if unique is None:
    return None
  codebook, idx, counts = unique
  k = codebook.size
  if k > _MAX_CODEBOOK:
    return None
  head += _varint(k)
  cb = _le_bytes(codebook)
  table = b''.join(_varint(int(c)) for c in counts) if k > 1 else b''
  pos = _encode_stream(mask, np.array([n - nnz, nnz])) if nnz < n else b''
  ids = _encode_stream(idx.reshape(-1), counts) if k > 1 else b''
  stats.update(distinct=k, codebook_bytes=len(cb), table_bytes=len(table),
               position_bytes=len(pos), index_bytes=len(ids),
               overhead_bytes=len(head))
  return [head, cb, table, pos, ids], stats


def _encode_leaf(x: np.ndarray, cb: np.dtype | None
                 ) -> tuple[list[bytes], dict, np.ndarray]:
  """Chunks of one leaf record, its stats and the array its CRC covers."""
  store = _storage_dtype(x.dtype, cb)
  s = x.astype(store) if store != x.dtype else x
  bits = _bits(s)
  coded = None if bits is None else _coded_record(bits, store)
  if coded is not None and sum(map(len, coded[0])) < 1 + x.nbytes:
    return coded[0], coded[1], bits
  chunks, stats = _raw_record(x)
  return chunks, stats, x


def _decode_leaf(reader: _Reader, dtype: np.dtype, shape: tuple[int, ...],
                 store: np.dtype) -> tuple[np.ndarray, dict, np.ndarray]:
  """Inverse of `_encode_leaf`."""
  n = int(np.prod(shape, dtype=np.int64))
  start = reader.pos
  kind = reader.take(1)[0]
  if kind == _KIND_RAW:
    x = _from_le(reader.take(n * dtype.itemsize), dtype, n).reshape(shape)
    return x, dict(kind='raw', storage_dtype=dtype.name, raw_bytes=x.nbytes,
                   overhead_bytes=1, nonzeros=None, distinct=None), x
  if kind != _KIND_CODED or store.itemsize not in _UINT:
    raise CorruptFileError(f'bad leaf record kind {kind}')
  uint = np.dtype(_UINT[store.itemsize])
  nnz = reader.varint()
  if nnz > n:
    raise CorruptFileError('more nonzeros than entries')
  bits = np.zeros(n, uint)
  stats = dict(kind='coded', storage_dtype=store.name, nonzeros=nnz,
               distinct=0)
  if nnz:
    k = reader.varint()
    if not 1 <= k <= min(nnz, _MAX_CODEBOOK):
      raise CorruptFileError(f'bad codebook size {k}')
    overhead = reader.pos - start
    codebook = _from_le(reader.take(k * uint.itemsize), uint, k)
    if codebook[0] == 0 or np.any(codebook[1:] <= codebook[:-1]):
      raise CorruptFileError('codebook is not sorted and nonzero')
    table_start = reader.pos
    counts = (np.array([reader.varint() for _ in range(k)], np.int64)
              if k > 1 else np.array([nnz]))
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


# ------------------------------------------------------------ file level ---


def _to_bytes_v1(params, *, metadata=None, codebook_dtype='float32') -> bytes:
  """Encodes a tree into the bytes of a version-1 file (kept for tests).

  Args:
    params: the tree to store (see the module docstring).
    metadata: an optional tree of arrays and JSON scalars stored alongside.
    codebook_dtype: storage dtype of codebooks of wider floating leaves
      ('float32', 'float16', 'bfloat16'), or None for the leaf dtype.

  Returns:
    The file contents.
  """
  leaves, names = [], []
  tree = _flatten(params, leaves, names, scalars=False)
  n_params = len(leaves)
  meta = _flatten(metadata, leaves, names, scalars=True)
  cb = _codebook_dtype(codebook_dtype)
  chunks, descr, data_crc = [], [], 0
  for x in leaves:
    # Metadata leaves are stored exactly.
    leaf_chunks, stats, covered = _encode_leaf(
        x, cb if len(descr) < n_params else None)
    chunks += leaf_chunks
    descr.append([x.dtype.name, list(x.shape), stats['storage_dtype']])
    data_crc = _crc(covered, data_crc)
  header = zlib.compress(json.dumps(
      {'tree': tree, 'metadata': meta, 'leaves': descr, 'params': n_params},
      separators=(',', ':')).encode(), 9)
  payload = b''.join(chunks)
  head = _PREAMBLE.pack(MAGIC, 1, 0, len(header), len(payload),
                        zlib.crc32(header), zlib.crc32(payload), data_crc, 0)
  head = head[:-4] + struct.pack('<I', zlib.crc32(head[:-4]))
  return head + header + payload


def _parse_preamble_v1(head: bytes) -> tuple[int, int, int, int, int]:
  if len(head) < _PREAMBLE.size:
    if not MAGIC.startswith(head[:len(MAGIC)]):
      raise CorruptFileError('not a gmp_jax compressed file (bad magic)')
    raise CorruptFileError('file is truncated (incomplete preamble)')
  magic, version, _, h, p, h_crc, p_crc, d_crc, crc = _PREAMBLE.unpack(
      head[:_PREAMBLE.size])
  if magic != MAGIC:
    raise CorruptFileError('not a gmp_jax compressed file (bad magic)')
  if zlib.crc32(head[:_PREAMBLE.size - 4]) != crc:
    raise CorruptFileError('preamble checksum mismatch (corrupted file)')
  if version != 1:
    raise CorruptFileError(f'unsupported format version {version} in a '
                           'version-1 preamble')
  return h, p, h_crc, p_crc, d_crc


def _from_bytes_v1(data: memoryview) -> CompressedFile:
  """Decodes the bytes of a version-1 file.

  Args:
    data: the file contents, exactly.

  Returns:
    The decoded `CompressedFile`.

  Raises:
    CorruptFileError: if the data is truncated, corrupted or foreign.
  """
  h, p, h_crc, p_crc, d_crc = _parse_preamble_v1(
      bytes(data[:_PREAMBLE.size]))
  start = _PREAMBLE.size
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
    specs = [(_dtype_from_name(d), tuple(int(i) for i in s),
              _dtype_from_name(st)) for d, s, st in descr]
  except CorruptFileError:
    raise
  except Exception as e:  # Any parse failure past the CRC is corruption.
    raise CorruptFileError(f'malformed header: {e}') from e
  reader, leaves, stats, data_crc = _Reader(payload), [], [], 0
  for dtype, shape, store in specs:
    x, st, covered = _decode_leaf(reader, dtype, shape, store)
    leaves.append(x)
    stats.append(st)
    data_crc = _crc(covered, data_crc)
  if reader.pos != len(payload):
    raise CorruptFileError('payload has trailing bytes')
  if data_crc != d_crc:
    raise CorruptFileError('decoded data checksum mismatch')
  names = [''] * len(leaves)
  params = _unflatten(head['tree'], leaves, names)
  metadata = _unflatten(head['metadata'], leaves, names)
  infos = tuple(
      LeafInfo(name=name, shape=x.shape, dtype=x.dtype.name,
               is_metadata=i >= n_params, **_v1_bits(st))
      for i, (name, x, st) in enumerate(zip(names, leaves, stats)))
  return CompressedFile(params=params, metadata=metadata, leaves=infos,
                        file_bytes=len(data), header_bytes=start + h,
                        version=1)


def _v1_bits(stats: dict) -> dict:
  """Version-1 record stats (in bytes) as `LeafInfo` fields (in bits)."""
  out = {}
  for k, v in stats.items():
    if k.endswith('_bytes'):
      out[k[:-len('_bytes')] + '_bits'] = 8 * v
    else:
      out[k] = v
  if out['kind'] == 'coded':
    out['position_model'] = 'global'
  return out


# ------------------------------------------------------------ version 2 ---
# See the module docstring for the layout.

_PREFIX = MAGIC[:4]  # b'\x89GMP': version 2 puts its version byte next.
# Dtype codes of version 2 (append only: the index is stored).
_DTYPE_CODES = (
    'bool', 'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64',
    'uint64', 'float16', 'float32', 'float64', 'complex64', 'complex128',
    'bfloat16', 'float8_e4m3fn', 'float8_e5m2', 'float8_e4m3b11fnuz',
    'float8_e4m3fnuz', 'float8_e5m2fnuz', 'int4', 'uint4')
_DTYPE_INLINE = 255
_T_NONE, _T_DICT, _T_LIST, _T_TUPLE, _T_ARRAY = 0, 1, 2, 3, 4
_T_STR, _T_INT, _T_FLOAT, _T_FALSE, _T_TRUE = 5, 6, 7, 8, 9
_RAW_FLAG, _SHARED_FLAG, _STORE_FLAG = 1, 16, 32
_MODEL_SHIFT = 2
_MAX_SHARED_K = 256  # Leaves with larger codebooks keep their own.


def _zigzag(n: int) -> int:
  return 2 * n if n >= 0 else -2 * n - 1


def _unzigzag(n: int) -> int:
  return n // 2 if n % 2 == 0 else -(n + 1) // 2


class _Writer:
  """Byte buffer with the version-2 primitives (varints, strings, dtypes)."""

  def __init__(self):
    self.buf = bytearray()
    self._strings: dict[str, int] = {}

  def varint(self, n: int) -> None:
    self.buf += _varint(n)

  def string(self, text: str) -> None:
    if text in self._strings:
      self.varint(2 * self._strings[text])
      return
    self._strings[text] = len(self._strings)
    data = text.encode('utf-8')
    self.varint(2 * len(data) + 1)
    self.buf += data

  def dtype(self, dtype: np.dtype) -> None:
    if dtype.name in _DTYPE_CODES:
      self.buf.append(_DTYPE_CODES.index(dtype.name))
    else:
      self.buf.append(_DTYPE_INLINE)
      self.string(dtype.name)


class _Reader2(_Reader):
  """`_Reader` with the version-2 strings and dtypes."""

  def __init__(self, buf: memoryview):
    super().__init__(buf)
    self._strings: list[str] = []

  def string(self) -> str:
    v = self.varint()
    if v % 2 == 0:
      if v // 2 >= len(self._strings):
        raise CorruptFileError('bad string reference')
      return self._strings[v // 2]
    try:
      text = bytes(self.take(v // 2)).decode('utf-8')
    except UnicodeDecodeError as e:
      raise CorruptFileError('bad string') from e
    self._strings.append(text)
    return text

  def dtype(self) -> np.dtype:
    code = self.take(1)[0]
    if code == _DTYPE_INLINE:
      dtype = _dtype_from_name(self.string())
    elif code < len(_DTYPE_CODES):
      dtype = _dtype_from_name(_DTYPE_CODES[code])
    else:
      raise CorruptFileError(f'unknown dtype code {code}')
    try:
      _check_dtype(dtype, 'file')
    except TypeError as e:
      raise CorruptFileError(str(e)) from e
    return dtype


@dataclasses.dataclass
class _Plan:
  """How one leaf is stored in version 2 (encoder and decoder side)."""
  dtype: np.dtype
  shape: tuple[int, ...]
  store: np.dtype
  raw: bool = False
  nnz: int = 0
  codebook: np.ndarray | None = None  # Bit patterns (unsigned ints).
  shared: bool = False
  counts: np.ndarray | None = None
  model: int = 0  # Index into _positions.MODELS.
  row_counts: np.ndarray | None = None
  hist: np.ndarray | None = None
  bits: np.ndarray | None = None  # Encoder: coded bits of the row model.
  probs: np.ndarray | None = None
  mask: np.ndarray | None = None  # Flat bool.
  idx: np.ndarray | None = None
  covered: np.ndarray | None = None  # What the data CRC covers.
  value: np.ndarray | None = None  # Decoded leaf.
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def k(self) -> int:
    return 0 if self.codebook is None else int(self.codebook.size)


def _plan_leaf(x: np.ndarray, cb: np.dtype | None, *,
               stream_bits: int = 0) -> _Plan:
  """Chooses raw or coded storage and the position model of a leaf.

  `stream_bits` is added to the estimated cost of a leaf whose symbols would
  open a stream that may otherwise stay empty (its final flush).
  """
  store = _storage_dtype(x.dtype, cb)
  plan = _Plan(dtype=x.dtype, shape=tuple(x.shape), store=store)
  s = x.astype(store) if store != x.dtype else x
  bits = _bits(s)
  raw_bits = 8 * x.nbytes
  if bits is None:
    plan.raw, plan.store, plan.covered = True, x.dtype, x
    return plan
  n = bits.size
  mask = bits != 0
  nz = bits[mask]
  plan.nnz, plan.mask, plan.covered = int(nz.size), mask, bits
  if not plan.nnz:
    return plan
  unique = _unique(nz)
  if unique is None or unique[0].size > _MAX_CODEBOOK:
    plan.raw, plan.store, plan.covered = True, x.dtype, x
    return plan
  plan.codebook, idx, counts = unique
  plan.idx, plan.counts = idx.reshape(-1), counts
  k = plan.k
  cost = 8 * (len(_varint(plan.nnz)) + len(_varint(k)) + k * store.itemsize)
  if k > 1:
    cost += 8 * sum(len(_varint(int(c))) for c in counts)
    cost += float(np.sum(counts * np.log2(plan.nnz / counts)))
  if plan.nnz < n:
    cost += _plan_positions(plan)
  if k > 1 or plan.nnz < n:
    cost += stream_bits
  if cost >= raw_bits:
    plan.raw, plan.store, plan.covered = True, x.dtype, x
  return plan


def _plan_positions(plan: _Plan) -> float:
  """Picks the cheapest position model; returns its estimated bits."""
  n, nnz = plan.size, plan.nnz
  best = float(n * _entropy(nnz / n))
  shape = _positions.matrix_shape(plan.shape)
  if shape is None:
    return best
  z = plan.mask.reshape(shape)
  for model, view in ((1, z), (2, z.T)):
    counts, hist, bits, p, cost = _positions.encode_plan(view)
    cost += 8 * (len(_varint(hist.size - 1))
                 + sum(len(_varint(int(h))) for h in hist))
    if cost < best:
      best = cost
      plan.model, plan.row_counts, plan.hist = model, counts, hist
      plan.bits, plan.probs = bits, p
  return best


def _entropy(p: float) -> float:
  if p <= 0 or p >= 1:
    return 0.0
  return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _shared_table(plans: list[_Plan]) -> np.ndarray | None:
  """The shared codebook of the params' coded leaves, if it saves bytes.

  Marks the leaves that select their codebook from it (a bitmap of
  ceil(G / 8) bytes instead of K values).
  """
  by_dtype: dict[np.dtype, list[_Plan]] = {}
  for p in plans:
    if not p.raw and 0 < p.k <= _MAX_SHARED_K:
      by_dtype.setdefault(p.store, []).append(p)
  if not by_dtype:
    return None
  store, group = max(by_dtype.items(), key=lambda kv: len(kv[1]))
  table = np.unique(np.concatenate([p.codebook for p in group]))
  bitmap = (table.size + 7) // 8
  users = [p for p in group
           if bitmap < len(_varint(p.k)) + p.k * store.itemsize]
  saved = sum(len(_varint(p.k)) + p.k * store.itemsize - bitmap
              for p in users)
  cost = len(_varint(table.size)) + 1 + table.size * store.itemsize
  if saved <= cost:
    return None
  for p in users:
    p.shared = True
  return table


def _write_record(w: _Writer, plan: _Plan, x: np.ndarray,
                  table: np.ndarray | None) -> int:
  """Writes a leaf record; returns its start offset."""
  start = len(w.buf)
  if plan.raw:
    w.buf.append(_RAW_FLAG)
    w.buf += _le_bytes(x)
    return start
  flags = plan.model << _MODEL_SHIFT
  flags |= _SHARED_FLAG if plan.shared else 0
  flags |= _STORE_FLAG if plan.store != plan.dtype else 0
  w.buf.append(flags)
  if plan.store != plan.dtype:
    w.dtype(plan.store)
  w.varint(plan.nnz)
  if not plan.nnz:
    return start
  if plan.shared:
    selected = np.isin(table, plan.codebook)
    w.buf += np.packbits(selected, bitorder='little').tobytes()
  else:
    w.varint(plan.k)
    w.buf += _le_bytes(plan.codebook)
  if plan.k > 1:
    for c in plan.counts:
      w.varint(int(c))
  if plan.model:
    w.varint(plan.hist.size - 1)
    for h in plan.hist:
      w.varint(int(h))
  return start


def _emit_chunks(enc: _ans.StreamEncoder, plan: _Plan) -> None:
  if plan.raw or not plan.nnz:
    return
  if plan.nnz < plan.size:
    if plan.model:
      enc.categorical(plan.row_counts, plan.hist)
      enc.bernoulli(plan.bits, plan.probs)
    else:
      enc.categorical(plan.mask, np.array([plan.size - plan.nnz, plan.nnz]))
  if plan.k > 1:
    enc.categorical(plan.idx, plan.counts)


def _to_bytes_v2(params, metadata, codebook_dtype) -> bytes:
  leaves, names = [], []
  tree = _flatten(params, leaves, names, scalars=False)
  n_params = len(leaves)
  meta = _flatten(metadata, leaves, names, scalars=True)
  cb = _codebook_dtype(codebook_dtype)
  # Metadata leaves are stored exactly.
  plans = [_plan_leaf(x, cb) if i < n_params
           else _plan_leaf(x, None, stream_bits=32)
           for i, x in enumerate(leaves)]
  table = _shared_table(plans[:n_params])
  w = _Writer()
  if table is None:
    w.varint(0)
  else:
    w.varint(table.size)
    store = next(p.store for p in plans if p.shared)
    w.dtype(store)
    w.buf += _le_bytes(table)

  def node(n):
    tag = n[0]
    if tag == 'n':
      w.buf.append(_T_NONE)
    elif tag == 'd':
      w.buf.append(_T_DICT)
      w.varint(len(n[1]))
      for key, child in n[1]:
        w.string(key)
        node(child)
    elif tag in ('l', 't'):
      w.buf.append(_T_LIST if tag == 'l' else _T_TUPLE)
      w.varint(len(n[1]))
      for child in n[1]:
        node(child)
    elif tag == 'a':
      i = n[1]
      x = leaves[i]
      w.buf.append(_T_ARRAY)
      w.dtype(x.dtype)
      w.varint(x.ndim)
      for d in x.shape:
        w.varint(d)
      _write_record(w, plans[i], x, table)
    else:  # 'v': a JSON scalar of the metadata.
      v = n[1]
      if isinstance(v, bool):
        w.buf.append(_T_TRUE if v else _T_FALSE)
      elif isinstance(v, int):
        w.buf.append(_T_INT)
        w.varint(_zigzag(v))
      elif isinstance(v, float):
        w.buf.append(_T_FLOAT)
        w.buf += struct.pack('<d', v)
      else:
        w.buf.append(_T_STR)
        w.string(v)

  node(tree)
  node(meta)
  data_crc = 0
  for part in (plans[:n_params], plans[n_params:]):
    enc = _ans.StreamEncoder()
    for plan in part:
      _emit_chunks(enc, plan)
    words = enc.words()
    w.varint(words.size)
    w.buf += _le_bytes(words)
  for plan in plans:
    data_crc = _crc(plan.covered, data_crc)
  body = bytes(w.buf)
  fixed = len(_PREFIX) + 1 + len(body) + 8
  length = fixed + 1
  while len(_varint(length)) != length - fixed:
    length += 1
  head = _PREFIX + bytes([FORMAT_VERSION]) + _varint(length)
  out = head + body + struct.pack('<I', data_crc)
  return out + struct.pack('<I', zlib.crc32(out))


def _read_record(r: _Reader2, dtype: np.dtype, shape: tuple[int, ...],
                 table: np.ndarray | None, table_store: np.dtype | None
                 ) -> _Plan:
  """Parses a leaf record (the streams come later)."""
  start = r.pos
  flags = r.take(1)[0]
  plan = _Plan(dtype=dtype, shape=shape, store=dtype)
  n = plan.size
  if flags == _RAW_FLAG:
    plan.raw = True
    plan.value = _from_le(r.take(n * dtype.itemsize), dtype, n).reshape(shape)
    plan.covered = plan.value
    plan.info = dict(kind='raw', storage_dtype=dtype.name, nonzeros=None,
                     distinct=None, raw_bits=8 * plan.value.nbytes,
                     overhead_bits=8)
    return plan
  model = (flags >> _MODEL_SHIFT) & 3
  if flags & ~(_SHARED_FLAG | _STORE_FLAG | (3 << _MODEL_SHIFT)) or (
      model >= len(_positions.MODELS)):
    raise CorruptFileError(f'bad leaf record flags {flags}')
  plan.model, plan.shared = model, bool(flags & _SHARED_FLAG)
  if flags & _STORE_FLAG:
    plan.store = r.dtype()
    if not (_is_floating(dtype) and _is_floating(plan.store)):
      raise CorruptFileError('a storage dtype for a non-floating leaf')
  if plan.store.itemsize not in _UINT:
    raise CorruptFileError(f'coded leaf of dtype {plan.store}')
  uint = np.dtype(_UINT[plan.store.itemsize])
  plan.nnz = r.varint()
  if plan.nnz > n:
    raise CorruptFileError('more nonzeros than entries')
  info = dict(kind='coded', storage_dtype=plan.store.name,
              nonzeros=plan.nnz, distinct=0,
              position_model=_positions.MODELS[model])
  plan.info = info
  if not plan.nnz:
    info['overhead_bits'] = 8 * (r.pos - start)
    return plan
  cb_start = r.pos
  if plan.shared:
    if table is None or table_store != plan.store:
      raise CorruptFileError('leaf refers to a missing shared codebook')
    selected = np.unpackbits(
        np.frombuffer(r.take((table.size + 7) // 8), np.uint8),
        count=table.size, bitorder='little').astype(bool)
    plan.codebook = table[selected]
  else:
    k = r.varint()
    cb_start = r.pos  # The varint K counts as overhead.
    if not 1 <= k <= _MAX_CODEBOOK:
      raise CorruptFileError(f'bad codebook size {k}')
    plan.codebook = _from_le(r.take(k * uint.itemsize), uint, k)
  k = plan.k
  if not 1 <= k <= plan.nnz or plan.codebook[0] == 0 or np.any(
      plan.codebook[1:] <= plan.codebook[:-1]):
    raise CorruptFileError('codebook is not sorted and nonzero')
  codebook_bits = 8 * (r.pos - cb_start)
  table_start = r.pos
  plan.counts = (np.array([r.varint() for _ in range(k)], np.int64)
                 if k > 1 else np.array([plan.nnz]))
  if plan.counts.sum() != plan.nnz or np.any(plan.counts <= 0):
    raise CorruptFileError('codebook counts do not match nonzeros')
  table_bits = 8 * (r.pos - table_start)
  pos_start = r.pos
  if model:
    view = _positions.matrix_shape(shape)
    if view is None or plan.nnz == n:
      raise CorruptFileError('row model for a leaf without one')
    rows = view[0] if model == 1 else view[1]
    cols = view[1] if model == 1 else view[0]
    top = r.varint()
    if top > cols:
      raise CorruptFileError('row count above the row length')
    plan.hist = np.array([r.varint() for _ in range(top + 1)], np.int64)
    if plan.hist.sum() != rows or plan.hist[-1] <= 0 or (
        int(np.arange(top + 1) @ plan.hist) != plan.nnz):
      raise CorruptFileError('row-count histogram does not match')
  info.update(distinct=k, codebook_bits=codebook_bits, table_bits=table_bits,
              position_bits=8 * (r.pos - pos_start),
              overhead_bits=8 * (pos_start - start - (table_bits
                                                      + codebook_bits) // 8))
  return plan


def _decode_chunks(dec: _ans.StreamDecoder, plan: _Plan) -> None:
  """Decodes a coded leaf's streams and builds its value."""
  uint = np.dtype(_UINT[plan.store.itemsize])
  n = plan.size
  bits = np.zeros(n, uint)
  if plan.nnz:
    before = dec.bits_read
    if plan.nnz == n:
      mask = slice(None)
    elif plan.model:
      rows, cols = _positions.matrix_shape(plan.shape)
      if plan.model == 2:
        rows, cols = cols, rows
      counts = dec.categorical(plan.hist, rows)
      try:
        z = _positions.decode_rows(counts, cols, dec.bernoulli)
      except ValueError as e:
        raise CorruptFileError(str(e)) from e
      mask = (z if plan.model == 1 else z.T).reshape(-1)
    else:
      mask = dec.categorical(np.array([n - plan.nnz, plan.nnz]), n) != 0
      if np.count_nonzero(mask) != plan.nnz:
        raise CorruptFileError('position stream disagrees with nonzeros')
    middle = dec.bits_read
    idx = (dec.categorical(plan.counts, plan.nnz) if plan.k > 1 else 0)
    if plan.k > 1 and np.any(np.bincount(idx, minlength=plan.k)
                             != plan.counts):
      raise CorruptFileError('index stream disagrees with counts')
    bits[mask] = plan.codebook[idx]
    plan.info['position_bits'] += middle - before
    plan.info['index_bits'] = dec.bits_read - middle
  plan.covered = bits
  x = bits.view(plan.store).reshape(plan.shape)
  plan.value = x.astype(plan.dtype) if plan.store != plan.dtype else x


def _from_bytes_v2(data: memoryview) -> CompressedFile:
  r = _Reader2(data)
  r.take(len(_PREFIX) + 1)
  declared = r.varint()
  if len(data) < declared:
    raise CorruptFileError(f'file is truncated: {len(data)} bytes, header '
                           f'declares {declared}')
  if len(data) > declared:
    raise CorruptFileError(f'{len(data) - declared} unexpected bytes after '
                           'the file')
  if declared < r.pos + 8:
    raise CorruptFileError('file is truncated')
  (crc,) = struct.unpack('<I', data[-4:])
  if zlib.crc32(data[:-4]) != crc:
    raise CorruptFileError('file checksum mismatch (corrupted file)')
  (d_crc,) = struct.unpack('<I', data[-8:-4])
  r.buf = data[:-8]
  plans, names_path = [], []
  try:
    g = r.varint()
    table, table_store = None, None
    if g:
      table_store = r.dtype()
      if table_store.itemsize not in _UINT:
        raise CorruptFileError('shared codebook of a non-codable dtype')
      uint = np.dtype(_UINT[table_store.itemsize])
      table = _from_le(r.take(g * uint.itemsize), uint, g)

    def node(path, scalars):
      tag = r.take(1)[0]
      if tag == _T_NONE:
        return None
      if tag == _T_DICT:
        out = {}
        for _ in range(r.varint()):
          key = r.string()
          out[key] = node(path + (key,), scalars)
        return out
      if tag in (_T_LIST, _T_TUPLE):
        out = [node(path + (i,), scalars) for i in range(r.varint())]
        return out if tag == _T_LIST else tuple(out)
      if tag == _T_ARRAY:
        dtype = r.dtype()
        ndim = r.varint()
        if ndim > 64:
          raise CorruptFileError('too many dimensions')
        shape = tuple(r.varint() for _ in range(ndim))
        plans.append(_read_record(r, dtype, shape, table, table_store))
        names_path.append('/'.join(map(str, path)) or '<root>')
        return _LeafRef(len(plans) - 1)
      if scalars and tag == _T_STR:
        return r.string()
      if scalars and tag == _T_INT:
        return _unzigzag(r.varint(max_bits=4096))
      if scalars and tag == _T_FLOAT:
        return struct.unpack('<d', r.take(8))[0]
      if scalars and tag in (_T_FALSE, _T_TRUE):
        return tag == _T_TRUE
      raise CorruptFileError(f'unknown tree node {tag}')

    tree = node((), False)
    n_params = len(plans)
    meta = node((), True)
    for part in (plans[:n_params], plans[n_params:]):
      n_words = r.varint()
      words = _from_le(r.take(4 * n_words), np.dtype(np.uint32), n_words)
      dec = _ans.StreamDecoder(words)
      coded = [p for p in part if not p.raw]
      for plan in coded:
        _decode_chunks(dec, plan)
      dec.finish()
      flush = 32 * n_words - dec.bits_read
      if flush and not coded:
        raise CorruptFileError('stream without coded leaves')
      if coded:
        coded[-1].info['overhead_bits'] = (
            coded[-1].info.get('overhead_bits', 0) + flush)
    if r.pos != len(r.buf):
      raise CorruptFileError('file has trailing bytes before the checksums')
  except _ans.DecodeError as e:
    raise CorruptFileError(str(e)) from e
  except (IndexError, ValueError, TypeError, OverflowError,
          MemoryError) as e:
    if isinstance(e, CorruptFileError):
      raise
    raise CorruptFileError(f'malformed file: {e}') from e
  data_crc = 0
  for plan in plans:
    data_crc = _crc(plan.covered, data_crc)
  if data_crc != d_crc:
    raise CorruptFileError('decoded data checksum mismatch')
  values = [p.value for p in plans]
  params = _resolve(tree, values)
  metadata = _resolve(meta, values)
  infos = tuple(
      LeafInfo(name=name, shape=p.shape, dtype=p.dtype.name,
               is_metadata=i >= n_params, **p.info)
      for i, (name, p) in enumerate(zip(names_path, plans)))
  leaf_bits = sum(i.total_bits for i in infos)
  return CompressedFile(params=params, metadata=metadata, leaves=infos,
                        file_bytes=len(data),
                        header_bytes=(8 * len(data) - leaf_bits) // 8,
                        version=2)


class _LeafRef(int):
  """Placeholder for leaf i while the streams are not yet decoded."""


def _resolve(tree, values):
  if isinstance(tree, _LeafRef):
    return values[tree]
  if isinstance(tree, dict):
    return {k: _resolve(v, values) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_resolve(v, values) for v in tree]
  if isinstance(tree, tuple):
    return tuple(_resolve(v, values) for v in tree)
  return tree


# ------------------------------------------------------------ file level ---


def to_bytes(params, *, metadata=None, codebook_dtype='float32') -> bytes:
  """Encodes a tree into the bytes of a compressed file (format version 2).

  Args:
    params: the tree to store (see the module docstring).
    metadata: an optional tree of arrays and JSON scalars stored alongside.
    codebook_dtype: storage dtype of codebooks of wider floating leaves
      ('float32', 'float16', 'bfloat16'), or None for the leaf dtype.

  Returns:
    The file contents.
  """
  return _to_bytes_v2(params, metadata, codebook_dtype)


def _version_of(head: bytes) -> int:
  """The format version from the first bytes of a file."""
  if head[:len(MAGIC)] == MAGIC:
    return 1
  n = min(len(head), len(_PREFIX))
  if head[:n] != _PREFIX[:n]:
    raise CorruptFileError('not a gmp_jax compressed file (bad magic)')
  if len(head) <= len(_PREFIX) or (
      head[len(_PREFIX)] == MAGIC[len(_PREFIX)]
      and MAGIC.startswith(head[:len(MAGIC)])):
    raise CorruptFileError('file is truncated (incomplete preamble)')
  version = head[len(_PREFIX)]
  if version not in READABLE_VERSIONS:
    raise CorruptFileError(
        f'unsupported format version {version}; this release reads versions '
        f'{", ".join(map(str, READABLE_VERSIONS))}')
  return version


def from_bytes(data: bytes) -> CompressedFile:
  """Decodes the bytes of a compressed file (format version 1 or 2).

  Args:
    data: the file contents, exactly.

  Returns:
    The decoded `CompressedFile`.

  Raises:
    CorruptFileError: if the data is truncated, corrupted or foreign.
  """
  data = memoryview(data)
  if _version_of(bytes(data[:len(MAGIC)])) == 1:
    return _from_bytes_v1(data)
  return _from_bytes_v2(data)


def read_bytes(source: PathOrFile) -> bytes:
  """The bytes of one compressed file, for `from_bytes`.

  A path is read whole; a binary file object is read for exactly the length
  its preamble declares.

  Raises:
    CorruptFileError: the preamble of a file object is bad.
  """
  if isinstance(source, (str, os.PathLike)):
    with open(source, 'rb') as f:
      return f.read()
  head = source.read(len(_PREFIX) + 1)
  if head[len(_PREFIX):] == MAGIC[len(_PREFIX):len(_PREFIX) + 1]:
    head += source.read(_PREAMBLE.size - len(head))
    h, p, *_ = _parse_preamble_v1(head)
    return head + source.read(h + p)
  _version_of(head)
  while True:  # The varint of the file length.
    byte = source.read(1)
    head += byte
    if not byte:
      raise CorruptFileError('file is truncated (incomplete preamble)')
    if not byte[0] & 0x80:
      break
    if len(head) > len(_PREFIX) + 11:
      raise CorruptFileError('varint too long')
  length = _Reader(memoryview(head[len(_PREFIX) + 1:])).varint()
  return head + source.read(max(0, length - len(head)))


def save_compressed(file: PathOrFile, params, *, metadata=None,
                    codebook_dtype='float32') -> int:
  """Writes a quantised tree to one compressed file.

  A path is written atomically (temporary file, fsync, `os.replace`); a
  binary file object is written at its current position.

  >>> save_compressed('model.gmp', {'dense': {'kernel': w, 'bias': b}})

  Args:
    file: a path or a binary file object open for writing.
    params: nested dicts / lists / tuples of arrays, e.g. the output of
      `gmp_jax.quantize`.
    metadata: optional tree of arrays and JSON scalars (a model name, the
      config, the mixture as a dict of arrays), stored exactly.
    codebook_dtype: 'float32' (default), 'float16' or 'bfloat16': codebooks of
      wider floating leaves are cast to it; None keeps each leaf's dtype.

  Returns:
    The number of bytes written.

  Raises:
    TypeError: for unsupported tree nodes, keys or dtypes.
  """
  data = to_bytes(params, metadata=metadata, codebook_dtype=codebook_dtype)
  if isinstance(file, (str, os.PathLike)):
    fileio.write_atomic(file, data)
  else:
    file.write(data)
  return len(data)


def load_compressed(file: PathOrFile, *, with_metadata: bool = False):
  """Loads the tree written by `save_compressed`.

  Args:
    file: a path or a binary file object open for reading.
    with_metadata: also return the metadata tree.

  Returns:
    The same tree structure (dicts, lists, tuples, None) with NumPy arrays of
    the saved shapes and dtypes and bit-identical values; with
    `with_metadata`, the pair `(params, metadata)` (metadata None when none
    was saved).

  Raises:
    CorruptFileError: if the file is truncated, corrupted, foreign or of an
      unsupported format version.
  """
  f = from_bytes(read_bytes(file))
  return (f.params, f.metadata) if with_metadata else f.params


__all__ = (
    'CompressedFile',
    'CorruptFileError',
    'LeafInfo',
    'from_bytes',
    'load_compressed',
    'named_leaves',
    'read_bytes',
    'save_compressed',
    'to_bytes',
)
