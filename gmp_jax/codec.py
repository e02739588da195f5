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

File format (version 1, all integers little-endian)
---------------------------------------------------
::

  offset  size  field
  0       8     magic  b'\\x89GMPJAX\\n'
  8       2     format version (uint16) = 1
  10      2     flags (uint16) = 0
  12      4     H: header length in bytes (uint32)
  16      8     P: payload length in bytes (uint64)
  24      4     CRC32 of the header
  28      4     CRC32 of the payload
  32      4     CRC32 of the decoded leaf data (see below)
  36      4     CRC32 of bytes 0..35
  40      H     header: zlib-compressed UTF-8 JSON
  40+H    P     payload: one record per leaf, in header order

A path must hold exactly 40 + H + P bytes; a file object is read for exactly
that many bytes.

The header JSON is ``{"tree": node, "metadata": node, "leaves": [[dtype,
shape, storage_dtype], ...], "params": n}`` where the first ``n`` leaves belong
to ``tree`` and the rest to ``metadata``. A node is ``["d", [[key, node],
...]]`` (dict), ``["l", [node, ...]]`` (list), ``["t", [node, ...]]``
(tuple), ``["n"]`` (None), ``["a", i]`` (array leaf ``i``) or ``["v", x]``
(JSON scalar, metadata only). Dtypes are NumPy / ml_dtypes names.

A leaf record starts with one kind byte. Varints are unsigned LEB128; a
"stream" is a varint word count followed by that many uint32 words of a
`constriction` ANS coder (`AnsCoder.get_compressed`), encoded with
`encode_reverse` so that it decodes in order, under the static model
`constriction.stream.model.Categorical(counts, perfect=False)` built from
integer counts (as float64) that the file holds or implies (the coder is
`gmp_jax._ans`). A leaf is stored
raw when that is not larger, e.g. an uncompressed layer with many distinct
values, and always when it has more than 65,536 distinct nonzero values or an
itemsize other than 1, 2, 4 or 8 bytes.

* kind 1, raw: the N entries in C order, little-endian.
* kind 0, coded: let `s` be the leaf cast to its storage dtype, flattened in
  C order, and `z = s != 0` bitwise.

  - varint `nnz` = number of nonzero entries; if 0 the record ends here;
  - varint `K` = number of distinct nonzero values;
  - codebook: `K` storage-dtype values, sorted by bit pattern read as an
    unsigned integer;
  - if K > 1: K varints, the count of each codebook entry (the model of the
    index stream);
  - if 0 < nnz < N: the position stream, `z` as N symbols in {0, 1} under the
    static categorical model (N - nnz, nnz);
  - if K > 1: the index stream, the codebook index of each nonzero in C order
    under the static categorical model of the counts.

The data CRC covers, leaf by leaf, the raw bytes of raw leaves and the
little-endian bytes of `s` for coded leaves, so a file never decodes to wrong
arrays, even under a different entropy-coder release.

Both streams are zero-order optimal: the position stream costs about
N·H(nnz/N) bits and the index stream nnz·H(counts/nnz) bits, plus at most a
few words of coder flush. The references on ANS are in `gmp_jax._ans`.
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
from gmp_jax import fileio

MAGIC = b'\x89GMPJAX\n'
FORMAT_VERSION = 1
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
  """Byte accounting of one stored leaf.

  Attributes:
    name: '/'-joined path of the leaf in its tree.
    shape: the leaf shape.
    dtype: the leaf dtype name.
    storage_dtype: dtype name of the codebook (of the data for raw leaves).
    kind: 'coded' or 'raw'.
    nonzeros: entries with a nonzero bit pattern in the storage dtype
      (None when raw).
    distinct: distinct nonzero values (codebook size; None when raw).
    position_bytes: the position stream.
    index_bytes: the index stream.
    table_bytes: the index model (the counts of the codebook entries).
    codebook_bytes: the codebook.
    raw_bytes: raw data.
    overhead_bytes: kind byte and varints of counts and lengths.
    is_metadata: whether the leaf belongs to the metadata tree.
  """
  name: str
  shape: tuple[int, ...]
  dtype: str
  storage_dtype: str
  kind: str
  nonzeros: int | None
  distinct: int | None
  position_bytes: int = 0
  index_bytes: int = 0
  table_bytes: int = 0
  codebook_bytes: int = 0
  raw_bytes: int = 0
  overhead_bytes: int = 0
  is_metadata: bool = False

  @property
  def total_bytes(self) -> int:
    return (self.position_bytes + self.index_bytes + self.table_bytes
            + self.codebook_bytes + self.raw_bytes + self.overhead_bytes)


@dataclasses.dataclass(frozen=True)
class CompressedFile:
  """A decoded file with its byte accounting.

  Attributes:
    params: the parameter tree (NumPy leaves).
    metadata: the metadata tree, or None.
    leaves: `LeafInfo` of every stored leaf, params first, in file order.
    file_bytes: total size of the file.
    header_bytes: preamble plus header.
  """
  params: Any
  metadata: Any
  leaves: tuple[LeafInfo, ...]
  file_bytes: int
  header_bytes: int


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

  def varint(self) -> int:
    n, shift = 0, 0
    while True:
      byte = self.take(1)[0]
      n |= (byte & 0x7F) << shift
      if not byte & 0x80:
        return n
      shift += 7
      if shift > 63:
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


def to_bytes(params, *, metadata=None, codebook_dtype='float32') -> bytes:
  """Encodes a tree into the bytes of a compressed file.

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
  head = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header), len(payload),
                        zlib.crc32(header), zlib.crc32(payload), data_crc, 0)
  head = head[:-4] + struct.pack('<I', zlib.crc32(head[:-4]))
  return head + header + payload


def _parse_preamble(head: bytes) -> tuple[int, int, int, int, int]:
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
  if version != FORMAT_VERSION:
    raise CorruptFileError(f'unsupported format version {version}; this '
                           f'release reads version {FORMAT_VERSION}')
  return h, p, h_crc, p_crc, d_crc


def from_bytes(data: bytes) -> CompressedFile:
  """Decodes the bytes of a compressed file.

  Args:
    data: the file contents, exactly.

  Returns:
    The decoded `CompressedFile`.

  Raises:
    CorruptFileError: if the data is truncated, corrupted or foreign.
  """
  data = memoryview(data)
  h, p, h_crc, p_crc, d_crc = _parse_preamble(bytes(data[:_PREAMBLE.size]))
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
               is_metadata=i >= n_params, **st)
      for i, (name, x, st) in enumerate(zip(names, leaves, stats)))
  return CompressedFile(params=params, metadata=metadata, leaves=infos,
                        file_bytes=len(data), header_bytes=start + h)


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
  head = source.read(_PREAMBLE.size)
  h, p, *_ = _parse_preamble(head)
  return head + source.read(h + p)


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
