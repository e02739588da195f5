"""Wire primitives of the compressed file formats (private).

Unsigned LEB128 varints, the zigzag code of signed integers, bounds-checked
readers, the byte writer, the version-2 dtype codes and strings, and the
little-endian / CRC32 helpers both format versions share.
"""

from __future__ import annotations

import sys
import zlib

import ml_dtypes
import numpy as np

MAGIC = b'\x89GMPJAX\n'  # Version 1 (8 bytes).
PREFIX = MAGIC[:4]  # b'\x89GMP': version 2 puts its version byte next.
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# Dtype codes of version 2 (append only: the index is stored).
DTYPE_CODES = (
    'bool', 'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64',
    'uint64', 'float16', 'float32', 'float64', 'complex64', 'complex128',
    'bfloat16', 'float8_e4m3fn', 'float8_e5m2', 'float8_e4m3b11fnuz',
    'float8_e4m3fnuz', 'float8_e5m2fnuz', 'int4', 'uint4')
DTYPE_INLINE = 255
_DTYPE_INDEX = {name: i for i, name in enumerate(DTYPE_CODES)}


class CorruptFileError(ValueError):
  """A file is truncated, corrupted, foreign or of an unsupported version."""


# ----------------------------------------------------------------- dtypes ---


def dtype_from_name(name: str) -> np.dtype:
  try:
    return np.dtype(getattr(ml_dtypes, name, name))
  except TypeError as e:
    raise CorruptFileError(f'unknown dtype {name!r}') from e


def is_floating(dtype: np.dtype) -> bool:
  if dtype.kind == 'f':
    return True
  if dtype.kind == 'V' and dtype.type.__module__.startswith('ml_dtypes'):
    try:
      ml_dtypes.finfo(dtype)
      return True
    except (TypeError, ValueError):
      return False
  return False


def check_dtype(dtype: np.dtype, where: str) -> None:
  """Raises TypeError unless the formats can store `dtype`."""
  ok = dtype.kind in 'biufc' or (
      dtype.kind == 'V' and dtype.type.__module__.startswith('ml_dtypes'))
  if not ok or dtype.hasobject:
    raise TypeError(f'{where}: unsupported dtype {dtype}')


def codebook_dtype(option) -> np.dtype | None:
  """The validated `codebook_dtype` option (None keeps the leaf dtype)."""
  if option is None:
    return None
  try:
    cb = np.dtype(getattr(ml_dtypes, str(option), option))
  except TypeError as e:
    raise ValueError(f'unknown codebook_dtype {option!r}') from e
  if not is_floating(cb):
    raise ValueError(f'codebook_dtype must be floating, got {cb}')
  return cb


def storage_dtype(dtype: np.dtype, cb: np.dtype | None) -> np.dtype:
  """The dtype a leaf's codebook is stored in: `cb` for wider floats."""
  if cb is None or not is_floating(dtype) or cb.itemsize >= dtype.itemsize:
    return dtype
  return cb


# ---------------------------------------------------- bytes and checksums ---


def le_bytes(x: np.ndarray) -> bytes:
  """C-order little-endian bytes of an array."""
  x = np.ascontiguousarray(x)
  if sys.byteorder == 'big' and x.dtype.itemsize > 1:
    x = x.byteswap()
  return x.tobytes()


def le_view(x: np.ndarray) -> memoryview:
  """The C-order little-endian bytes of `x`, without a copy where possible."""
  if sys.byteorder == 'big' and x.dtype.itemsize > 1:
    return memoryview(le_bytes(x))
  return memoryview(np.ascontiguousarray(x).reshape(-1).view(np.uint8))


def crc(x: np.ndarray, value: int) -> int:
  """CRC32 of the C-order little-endian bytes of `x`, continuing `value`."""
  return zlib.crc32(le_view(x), value)


def from_le(buf, dtype: np.dtype, count: int) -> np.ndarray:
  """Array of `count` native `dtype` entries from little-endian bytes."""
  x = np.frombuffer(buf, dtype=dtype, count=count).copy()
  if sys.byteorder == 'big' and dtype.itemsize > 1:
    x = x.byteswap()
  return x


# ---------------------------------------------------------------- integers ---


def varint(n: int) -> bytes:
  """Unsigned LEB128: 7 bits a byte, low first, high bit = more follow."""
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def varint_size(n: int) -> int:
  """len(varint(n))."""
  return max(1, (int(n).bit_length() + 6) // 7)


def zigzag(n: int) -> int:
  """Signed to unsigned: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
  return 2 * n if n >= 0 else -2 * n - 1


def unzigzag(n: int) -> int:
  return n // 2 if n % 2 == 0 else -(n + 1) // 2


# ------------------------------------------------------- reader and writer ---


class Reader:
  """Bounds-checked cursor over a buffer, with the version-2 strings."""

  def __init__(self, buf: memoryview):
    self.buf, self.pos = buf, 0
    self._strings: list[str] = []

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

  def varints(self, count: int) -> np.ndarray:
    """`count` varints as int64 (each below 2**63)."""
    if count > len(self.buf) - self.pos:  # Each takes a byte at least.
      raise CorruptFileError(f'{count:,} varints declared, '
                             f'{len(self.buf) - self.pos:,} bytes left')
    out = np.empty(count, np.int64)
    for i in range(count):
      v = self.varint()
      if v >= 1 << 63:
        raise CorruptFileError(f'count {v} too large')
      out[i] = v
    return out

  def string(self) -> str:
    """A string: odd v is new ((v - 1) / 2 bytes), even v repeats one."""
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
    if code == DTYPE_INLINE:
      dtype = dtype_from_name(self.string())
    elif code < len(DTYPE_CODES):
      dtype = dtype_from_name(DTYPE_CODES[code])
    else:
      raise CorruptFileError(f'unknown dtype code {code}')
    try:
      check_dtype(dtype, 'file')
    except TypeError as e:
      raise CorruptFileError(str(e)) from e
    return dtype


class Writer:
  """Byte buffer with the version-2 primitives (varints, strings, dtypes)."""

  def __init__(self):
    self.buf = bytearray()
    self._strings: dict[str, int] = {}

  def varint(self, n: int) -> None:
    self.buf += varint(n)

  def string(self, text: str) -> None:
    if text in self._strings:
      self.varint(2 * self._strings[text])
      return
    self._strings[text] = len(self._strings)
    data = text.encode('utf-8')
    self.varint(2 * len(data) + 1)
    self.buf += data

  def dtype(self, dtype: np.dtype) -> None:
    code = _DTYPE_INDEX.get(dtype.name)
    if code is not None:
      self.buf.append(code)
    else:
      self.buf.append(DTYPE_INLINE)
      self.string(dtype.name)
