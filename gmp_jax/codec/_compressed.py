"""Compressed model files: real bytes, exact round-trip.

`save_compressed` writes a quantised parameter tree (for example the output of
`gmp_jax.quantize`) to one file; `load_compressed` reads it back with the same
structure, shapes, dtypes and bit-identical values; `load_compressed_with_info`
also returns the metadata and each leaf's bit accounting. `to_bytes` /
`from_bytes` do the same in memory. The layouts are documented with their code:
`_format_v2` (written) and `_format_v1` (read only).

Trees are nested `dict`s with `str` or `int` keys (each key keeps its type;
any `Mapping` comes back as a `dict`), `list`s, `tuple`s and `None`, with
array leaves (`numpy.ndarray`, NumPy scalars, `jax.Array`) of any boolean,
integer, floating or complex dtype, `ml_dtypes` included; loading returns
NumPy arrays. Other nodes and keys raise `TypeError` naming their path. The
`metadata` tree may also hold JSON scalars (str, int, float, bool).

"Zero" means an all-zero bit pattern, so `-0.0` and NaN payloads survive bit
for bit. Codebooks of floating leaves wider than `codebook_dtype` (float32 by
default; None keeps each leaf's dtype) are cast to it: the round-trip is then
exact against `x.astype(codebook_dtype).astype(x.dtype)`.

`load_compressed(..., packed=True)` decodes each coded floating leaf of at
most 255 distinct nonzero values straight into a `gmp_jax.PackedArray`
(uint8 indices and the codebook; no dense float leaf is formed: the data
checksum is computed over blocks of the leaf), as `gmp_jax.pack` would
pack the dense leaf (`layout='auto'`: very sparse leaves as
`gmp_jax.SparsePackedArray`s, by `gmp_jax.pack`'s rule). Raw leaves,
metadata, other coded leaves and leaves that packing would not make
smaller come back dense, as NumPy arrays
(`gmp_jax.packed.summary` lists which). `save_compressed` accepts trees with
`PackedArray` leaves and writes the bytes of the dense tree.

Loading is bounded: a file declaring more than `max_elements` entries or
`max_bytes` decoded bytes in all (defaults 2**31 each, e.g. 2**29 float32
weights) is rejected before anything is allocated; raise the bounds to load
larger models (a 1B-weight float32 model: `max_bytes=2**32`).
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, BinaryIO, Union

import numpy as np

from gmp_jax.codec import _format_v1
from gmp_jax.codec import _format_v2
from gmp_jax.codec import _wire
from gmp_jax.codec import fileio
from gmp_jax import packed as packed_lib
from gmp_jax.codec._trees import named_leaves
from gmp_jax.codec._wire import CorruptFileError
from gmp_jax.codec._wire import MAGIC

FORMAT_VERSION = _format_v2.VERSION
READABLE_VERSIONS = (_format_v1.VERSION, _format_v2.VERSION)
MAX_ELEMENTS = 2**31
MAX_BYTES = 2**31
PathOrFile = Union[str, os.PathLike, BinaryIO]


@dataclasses.dataclass(frozen=True)
class LeafInfo:
  """Bit accounting of one stored leaf (see `_format_v2`).

  `name` is the '/'-joined path; `kind` 'coded' or 'raw'; `storage_dtype` the
  codebook's (raw: the data's) dtype; `nonzeros` and `distinct` (codebook
  size) are None for raw leaves; `position_model` 'global', 'rows' or
  'columns' for coded ones. The `*_bits` fields split the leaf's bits:
  positions (with row counts and histogram), codebook indices, index model
  (the counts), codebook (or its selection), raw data, and overhead (flags,
  varints; the last coded leaf of a stream carries the coder's flush).
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
  """A decoded file: `params`, `metadata` (or None), the `LeafInfo` of every
  leaf (params first, in file order), `file_bytes`, `header_bytes` (what no
  leaf accounts for: preamble, checksums, tree, dtypes and shapes, metadata
  scalars, shared codebook, stream lengths) and the format `version`."""
  params: Any
  metadata: Any
  leaves: tuple[LeafInfo, ...]
  file_bytes: int
  header_bytes: int
  version: int = 1


class _Limits:
  """Running totals of the declared leaves, checked against the bounds."""

  def __init__(self, max_elements: int | None, max_bytes: int | None):
    self.max_elements, self.max_bytes = max_elements, max_bytes
    self.elements = self.bytes = 0

  def __call__(self, name: str, dtype, shape: tuple[int, ...]) -> None:
    n = 1
    for d in shape:
      n *= d  # Python ints: no overflow.
    if n >= 2**62:
      raise CorruptFileError(f'{name}: shape {shape} has {n:,} entries (the '
                             'product overflows int64)')
    self.elements += n
    self.bytes += n * dtype.itemsize
    for total, bound, what in ((self.elements, self.max_elements, 'elements'),
                               (self.bytes, self.max_bytes, 'bytes')):
      if bound is not None and total > bound:
        raise CorruptFileError(
            f'{name}: {dtype} {shape} takes the file to {total:,} decoded '
            f'{what}, over max_{what}={bound:,}; pass a larger max_{what} '
            'to load it')


def to_bytes(params, *, metadata=None, codebook_dtype='float32') -> bytes:
  """The bytes of the file `save_compressed` writes (format version 2)."""
  buf = io.BytesIO()
  _format_v2.encode(params, metadata, codebook_dtype).write_to(buf)
  return buf.getvalue()


def _version_of(head: bytes) -> int:
  """The format version from the first bytes of a file."""
  n, prefix = min(len(head), len(_wire.PREFIX)), _wire.PREFIX
  if head[:len(MAGIC)] == MAGIC:
    return 1
  if head[:n] != prefix[:n]:
    raise CorruptFileError('not a gmp_jax compressed file (bad magic)')
  if len(head) <= len(prefix) or (head[len(prefix)] == MAGIC[len(prefix)]
                                  and MAGIC.startswith(head[:len(MAGIC)])):
    raise CorruptFileError('file is truncated (incomplete preamble)')
  version = head[len(prefix)]
  if version not in READABLE_VERSIONS:
    raise CorruptFileError(
        f'unsupported format version {version}; this release reads versions '
        f'{", ".join(map(str, READABLE_VERSIONS))}')
  return version


def from_bytes(data: bytes, *, max_elements: int | None = MAX_ELEMENTS,
               max_bytes: int | None = MAX_BYTES,
               decode: bool = True, packed: bool = False,
               layout: str = 'auto') -> CompressedFile:
  """Decodes the bytes of a compressed file (format version 1 or 2).

  Args:
    data: the file contents, exactly.
    max_elements: bound on the entries of all leaves (None: no bound).
    max_bytes: bound on the decoded bytes of all leaves (None: no bound).
    decode: if False, only the declared leaves are read: the streams are
      not decoded, `params` and `metadata` are None (version-1 files,
      small legacy ones, are decoded whole, without the bounds).
    packed: decode coded floating params leaves into `PackedArray`s (see
      the module docstring; version-1 files are decoded, then packed).
    layout: with `packed`: 'auto', 'packed' or 'sparse', as in
      `gmp_jax.pack`.

  Raises:
    CorruptFileError: the data is truncated, corrupted or foreign, or its
      declared leaves exceed the bounds (before any allocation).
  """
  data = memoryview(data)
  limits = _Limits(max_elements, max_bytes)
  if packed and not decode:
    raise ValueError('packed=True needs decode=True')
  if layout not in packed_lib.LAYOUTS:
    raise ValueError(f'layout must be one of {packed_lib.LAYOUTS}, got '
                     f'{layout!r}')
  if _version_of(bytes(data[:len(MAGIC)])) == 1:
    f = _format_v1.read(data, limits if decode else (lambda *_: None))
    if packed:
      f['params'] = packed_lib.pack(f['params'], layout=layout)
  elif packed:
    f = _read_packed(data, limits, layout)
  else:
    f = _format_v2.read(data, limits if decode else (lambda *_: None),
                        decode=decode)
  if not decode:
    f['params'] = f['metadata'] = None
  f['leaves'] = tuple(LeafInfo(**i) for i in f.pop('infos'))
  return CompressedFile(**f)


def _read_source(source: PathOrFile) -> bytes:
  """The bytes of one file: a path whole, a file object for its length."""
  if isinstance(source, (str, os.PathLike)):
    with open(source, 'rb') as f:
      return f.read()
  pre = len(_wire.PREFIX)
  head = source.read(pre + 1)
  if head[pre:] == MAGIC[pre:pre + 1]:
    head += source.read(_format_v1.PREAMBLE.size - len(head))
    h, p, *_ = _format_v1.parse_preamble(head)
    return head + source.read(h + p)
  _version_of(head)
  while True:  # The varint of the file length.
    byte = source.read(1)
    head += byte
    if not byte:
      raise CorruptFileError('file is truncated (incomplete preamble)')
    if not byte[0] & 0x80:
      break
    if len(head) > pre + 11:
      raise CorruptFileError('varint too long')
  length = _wire.Reader(memoryview(head[pre + 1:])).varint()
  return head + source.read(max(0, length - len(head)))



def save_compressed(file: PathOrFile, params, *, metadata=None,
                    codebook_dtype='float32') -> int:
  """Writes a quantised tree to one compressed file; returns its size.

  The file is planned and coded leaf by leaf and written piece by piece: a
  path atomically (temporary file, fsync, `os.replace`), a binary file
  object at its current position. `jax.Array` leaves, sharded or not, are
  gathered to the host one at a time (NumPy arrays are not copied), so the
  host never holds the whole model.

  Args:
    file: a path or a binary file object open for writing.
    params: nested dicts / lists / tuples of arrays; `PackedArray` leaves
      are written as their dense values (unpacked one leaf at a time), so
      the bytes are those of the dense tree.
    metadata: optional tree of arrays and JSON scalars, stored exactly.
    codebook_dtype: 'float32' (default), 'float16', 'bfloat16' or None.

  Raises:
    TypeError: for unsupported tree nodes, keys or dtypes (naming the path).
  """
  encoded = _format_v2.encode(params, metadata, codebook_dtype)
  if isinstance(file, (str, os.PathLike)):
    fileio.write_atomic(file, encoded.write_to)
  else:
    encoded.write_to(file)
  return encoded.size


def load_compressed(file: PathOrFile, *,
                    max_elements: int | None = MAX_ELEMENTS,
                    max_bytes: int | None = MAX_BYTES, packed: bool = False,
                    layout: str = 'auto'):
  """Loads the params tree written by `save_compressed`.

  Args:
    file: a path or a binary file object open for reading.
    max_elements, max_bytes: bounds on the declared leaves (see the module
      docstring); None lifts one.
    packed: coded floating leaves with at most 256 codebook entries (+0.0
      included) come back as `PackedArray`s with NumPy children, decoded
      without a dense float leaf, where that is smaller; the others dense
      (see the module).
    layout: with `packed`: 'auto' (default) holds a leaf with at most
      `gmp_jax.packed.SPARSE_MAX_DENSITY` nonzeros as a
      `SparsePackedArray` where that is smaller, as `gmp_jax.pack` does;
      'packed': never sparse; 'sparse': every packed leaf with a dimension.

  Returns:
    The tree (dicts, lists, tuples, None) of NumPy arrays with the saved
    shapes, dtypes and bits (`unpack` of the packed leaves: the same). The
    metadata and each leaf's sizes: `load_compressed_with_info`.

  Raises:
    CorruptFileError: the file is truncated, corrupted, foreign, of an
      unsupported version, or declares leaves beyond the bounds.
  """
  return load_compressed_with_info(
      file, max_elements=max_elements, max_bytes=max_bytes, packed=packed,
      layout=layout).params


def load_compressed_with_info(file: PathOrFile, *, decode: bool = True,
                              max_elements: int | None = MAX_ELEMENTS,
                              max_bytes: int | None = MAX_BYTES,
                              packed: bool = False,
                              layout: str = 'auto') -> CompressedFile:
  """Loads a file as `load_compressed` does, with its metadata and sizes.

  Args:
    file: a path or a binary file object open for reading.
    decode: False reads only the declared leaves (`params` and `metadata`
      are then None; see `from_bytes`).
    max_elements, max_bytes, packed, layout: as for `load_compressed`.

  Returns:
    The `CompressedFile`: `params` (as `load_compressed` returns them),
    `metadata` (None if none was saved), each leaf's `LeafInfo` and the
    file's sizes.

  Raises:
    CorruptFileError: as for `load_compressed`.
  """
  return from_bytes(_read_source(file), max_elements=max_elements,
                    max_bytes=max_bytes, decode=decode, packed=packed,
                    layout=layout)


# --------------------------------------------------------------- packed ---


def _packed_nbytes(shape: tuple[int, ...], k: int, dtype: np.dtype) -> int:
  bits = packed_lib.bits_for(k)
  return (int(np.prod(packed_lib.packed_shape(shape, bits), dtype=np.int64))
          + k * dtype.itemsize)


def _packed_value(plan, dec, data_crc: int, layout: str = 'auto'):
  """A coded floating leaf of K <= 256 (0 included) as a `PackedArray`.

  The stream is decoded by `_format_v2._decode_leaf` with the codebook
  replaced by 1..K-1, so it writes each entry's index (0 for zeros) into a
  uint8 array; the data CRC runs over blocks of the leaf's bit patterns.
  Other leaves (raw, non-floating, K > 256, not smaller packed):
  `_format_v2._value` (dense).
  """
  # pylint: disable=protected-access
  k = plan.k + 1
  if plan.raw or not _wire.is_floating(plan.dtype) or k > packed_lib.MAX_K:
    return _format_v2._value(plan, dec, data_crc)
  form = packed_lib.choose_layout(plan.shape, plan.nnz, k,
                                  plan.dtype.itemsize, layout)
  nbytes = (packed_lib.sparse_nbytes(plan.shape, plan.nnz, k,
                                     plan.dtype.itemsize)
            if form == 'sparse' else _packed_nbytes(plan.shape, k,
                                                     plan.dtype))
  if nbytes >= plan.size * plan.dtype.itemsize:
    return _format_v2._value(plan, dec, data_crc)
  uint = np.dtype(_wire.UINT[plan.store.itemsize])
  table = np.zeros(plan.k + 1, uint)
  idx = np.zeros(plan.size, np.uint8)
  if plan.nnz:
    table[1:] = plan.codebook
    plan.codebook = np.arange(1, plan.k + 1, dtype=np.uint8)
    try:
      _format_v2._decode_leaf(dec, plan, idx)
    finally:
      plan.codebook = table[1:]
  for part in _format_v2._chunks(plan.size):
    data_crc = _wire.crc(table[idx[part]], data_crc)
  idx = idx.reshape(plan.shape)
  bits = packed_lib.bits_for(table.size)
  codebook = table.view(plan.store).astype(plan.dtype)
  if form == 'sparse':
    return packed_lib.sparse_from_indices(idx, codebook, plan.shape,
                                          bits), data_crc
  indices = packed_lib.pack_nibbles(idx) if bits == 4 else idx
  return packed_lib.PackedArray(indices, codebook, plan.shape, plan.dtype,
                                bits), data_crc


def _read_packed(data, limits, layout: str = 'auto') -> dict:
  """`_format_v2.read` with params leaves from `_packed_value`."""
  return _format_v2.read(
      data, limits,
      params_value=lambda plan, dec, crc: _packed_value(plan, dec, crc,
                                                        layout))


__all__ = (
    'CompressedFile',
    'CorruptFileError',
    'LeafInfo',
    'from_bytes',
    'load_compressed',
    'load_compressed_with_info',
    'named_leaves',
    'save_compressed',
    'to_bytes',
)
