"""Packed arrays: quantised leaves held as indices into a small codebook.

A quantised leaf w with K <= 256 distinct values is held as

  w = codebook[indices],   codebook[0] = +0.0 (the all-zero bit pattern),

with the indices in 4 bits (two per byte, K <= 16) or 8 bits (one uint8,
K <= 256). A `PackedArray` is a pytree whose children are the uint8
`indices` and the `codebook` (K,) and whose static aux data is the shape
and the index bits, so it passes through `jax.jit` and `jax.device_put`
(sharding each child) like any tree of arrays. Its dtype is the codebook's
(a float64 codebook put on a device without x64 becomes float32, and the
array with it). Its resident size is

  nbytes = ceil(n / 2) bytes (4-bit; per row of the last axis) or n (8-bit)
           + K * itemsize,

e.g. 4.004 bits per weight for a 4096 x 4096 float32 leaf with K = 16.

Layout: 8-bit indices have the leaf's shape. 4-bit indices have shape
`shape[:-1] + (ceil(shape[-1] / 2),)`: entry j of a row lives in byte
j // 2, the low nibble for even j, the high nibble for odd j; a row of odd
length has a zero high nibble in its last byte. A scalar leaf has a ()
index array (the low nibble with 4 bits).

Exactness: values are matched by bit pattern, as in the compressed file
(`gmp_jax.codec`), so `unpack(pack(tree))` reproduces every bit. Index 0 is
+0.0; -0.0 (and any NaN payload) is a codebook entry of its own, so a leaf
holding both +0.0 and -0.0 needs one more entry. `pack` adds the +0.0 entry
when a leaf has no zero. The codebook of `pack` and of
`load_compressed(..., packed=True)` is sorted by bit pattern read as an
unsigned integer (the file's order), with 0 first.

Running: `packed_apply(apply_fn)` calls a model on a packed tree inside the
caller's `jax.jit`. Each matrix product `dot_general(x, W)` with a packed 2-D
W (any contraction side, a transpose or a dtype cast in between) becomes
`packed_matmul`: W is dequantised a block of rows at a time (about 1 MiB of
dense values, kept in cache) and the partial products are summed,

  x @ W = sum_b x[:, rows_b] @ codebook[indices[rows_b]],

so the dense W is never formed; every other use of a packed leaf
dequantises it whole, once per call. Dequantisation reads a 256-entry table
of value pairs, pair[b] = (codebook[b & 15], codebook[b >> 4]), one gather
per byte (4-bit) or a 256-entry padded codebook (8-bit); every index is in
bounds by construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from gmp_jax.codec import _wire

MAX_K = 256  # Codebook entries an 8-bit index can address.
NIBBLE_K = 16  # Codebook entries a 4-bit index can address.
BLOCK_BYTES = 1 << 20  # Dense bytes of one block of `packed_matmul`.
_SAMPLE = 1 << 16  # Entries whose distinct values `pack` tries first.


def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def packed_shape(shape: tuple[int, ...], bits: int) -> tuple[int, ...]:
  """Shape of the uint8 index array of a leaf of `shape` (see the module)."""
  shape = tuple(shape)
  if bits == 8 or not shape:
    return shape
  return shape[:-1] + ((shape[-1] + 1) // 2,)


def bits_for(k: int) -> int:
  """Index bits of a codebook of `k` entries: 4 (k <= 16) or 8 (k <= 256)."""
  if not 1 <= k <= MAX_K:
    raise ValueError(f'a packed codebook holds 1 to {MAX_K} entries, got '
                     f'K={k}')
  return 4 if k <= NIBBLE_K else 8


def _check_floating(dtype, where: str) -> np.dtype:
  dtype = np.dtype(dtype)
  if not _wire.is_floating(dtype):
    raise ValueError(f'{where}: a packed codebook must be floating, got '
                     f'{dtype}')
  return dtype


def _uint(dtype: np.dtype) -> type:
  return _wire.UINT[np.dtype(dtype).itemsize]


def _check_layout(shape, codebook, dtype, bits, where: str
                  ) -> tuple[tuple[int, ...], int]:
  """(shape, bits) of a packed array, checked against its codebook."""
  shape = tuple(int(d) for d in shape)
  if any(d < 0 for d in shape):
    raise ValueError(f'negative dimension in shape {shape}')
  codebook_dtype = np.dtype(codebook.dtype)
  dtype = codebook_dtype if dtype is None else np.dtype(dtype)
  _check_floating(dtype, where)
  if codebook_dtype != dtype:
    raise ValueError(f'codebook dtype {codebook_dtype} differs from the '
                     f'array dtype {dtype}')
  if len(codebook.shape) != 1:
    raise ValueError(f'codebook must be 1-D, got shape {codebook.shape}')
  k = int(codebook.shape[0])
  if k > MAX_K:
    raise ValueError(f'codebook has K={k} entries; packed arrays hold at '
                     f'most {MAX_K} (8-bit indices)')
  if k < 1:
    raise ValueError('codebook is empty; entry 0 must be +0.0')
  bits = bits_for(k) if bits is None else int(bits)
  if bits not in (4, 8):
    raise ValueError(f'bits must be 4 or 8, got {bits}')
  if k > 1 << bits:
    raise ValueError(f'codebook has K={k} entries, more than {bits}-bit '
                     f'indices address ({1 << bits})')
  return shape, bits


@jax.tree_util.register_pytree_node_class
class PackedArray:
  """A quantised array resident as indices and a codebook (see the module).

  Attributes:
    indices: uint8 array of shape `packed_shape(shape, bits)`.
    codebook: (K,) floating array, entry 0 exactly +0.0.
    shape: the dense shape (static).
    bits: 4 (two indices per byte, K <= 16) or 8 (static).
    dtype: the dense dtype, the codebook's.

  The constructor checks the parts; concrete (non-traced) ones also for
  entry 0 and for indices in range, ValueError naming the problem. Pytree
  unflattening skips the checks (jax passes placeholders through it).
  """

  __slots__ = ('indices', 'codebook', 'shape', 'bits')

  def __init__(self, indices, codebook, shape, dtype=None, bits=None):
    shape, bits = _check_layout(shape, codebook, dtype, bits, 'PackedArray')
    if np.dtype(indices.dtype) != np.uint8:
      raise ValueError(f'indices must be uint8, got {indices.dtype}')
    want = packed_shape(shape, bits)
    if tuple(indices.shape) != want:
      raise ValueError(f'indices of shape {tuple(indices.shape)} do not fit '
                       f'a {bits}-bit packed array of shape {shape} (want '
                       f'{want})')
    self.indices, self.codebook = indices, codebook
    self.shape, self.bits = shape, bits
    if not (_is_tracer(indices) or _is_tracer(codebook)):
      self._check_values()

  def _check_values(self) -> None:
    cb = np.asarray(self.codebook)
    if cb.reshape(-1)[:1].view(_uint(cb.dtype))[0] != 0:
      raise ValueError(f'codebook entry 0 must be exactly +0.0 (all bits '
                       f'zero), got {cb[0]!r}')
    idx = np.asarray(self.indices)
    k = cb.shape[0]
    if self.bits == 4:
      top = int(max(np.max(idx & 15, initial=0), np.max(idx >> 4, initial=0)))
      if self.shape and self.shape[-1] % 2 and idx.size and np.any(
          idx[..., -1] >> 4):
        raise ValueError('the padding nibble of a row of odd length must be 0')
      if not self.shape and idx >> 4:
        raise ValueError('the high nibble of a scalar must be 0')
    else:
      top = int(np.max(idx, initial=0))
    if top >= k:
      raise ValueError(f'index {top} is out of range for a codebook of K={k} '
                       'entries')

  def tree_flatten(self):
    return (self.indices, self.codebook), (self.shape, self.bits)

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.indices, obj.codebook = children
    obj.shape, obj.bits = aux
    return obj

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(self.codebook.dtype)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def num_values(self) -> int:
    """K, the codebook's entries (index 0 included)."""
    return int(self.codebook.shape[0])

  @property
  def nbytes(self) -> int:
    """Resident bytes: the indices plus the codebook."""
    return (math.prod(packed_shape(self.shape, self.bits))
            + self.num_values * self.dtype.itemsize)

  @property
  def bits_per_weight(self) -> float:
    """8 * nbytes / size (codebook included); inf for an empty array."""
    return 8 * self.nbytes / self.size if self.size else math.inf

  def dequantize(self) -> jax.Array:
    """The dense array codebook[indices], as jax ops (jit-able)."""
    return dequantize(self.indices, self.codebook, self.shape, self.bits)

  def __array__(self, dtype=None, copy=None):
    """The dense NumPy array (host side); used by `np.asarray` and the codec."""
    del copy
    out = _unpack_host(self)
    return out if dtype is None else out.astype(dtype)

  def __repr__(self) -> str:
    return (f'PackedArray(shape={self.shape}, dtype={self.dtype.name}, '
            f'K={self.num_values}, bits={self.bits})')


def is_packed(x) -> bool:
  """True for a `PackedArray` or a `SparsePackedArray`."""
  return isinstance(x, (PackedArray, SparsePackedArray))


# ------------------------------------------------------------ host side ---


def pack_nibbles(idx: np.ndarray) -> np.ndarray:
  """uint8 indices < 16 of any shape in the 4-bit layout (see the module)."""
  if idx.ndim == 0:
    return idx.astype(np.uint8)
  if idx.shape[-1] % 2:
    pad = np.zeros(idx.shape[:-1] + (1,), np.uint8)
    idx = np.concatenate([idx, pad], axis=-1)
  return (idx[..., 0::2] | (idx[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """The uint8 indices of a 4-bit layout for a leaf of `shape` (NumPy)."""
  if not shape:
    return packed & 15
  both = np.stack([packed & 15, packed >> 4], axis=-1)
  return both.reshape(shape[:-1] + (2 * packed.shape[-1],))[..., :shape[-1]]


def _codebook_of(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """Sorted distinct bit patterns (0 first) and each entry's index.

  None when there are more than `MAX_K` (0 included). Tries the distinct
  values of a prefix first: a binary search in a small codebook beats
  sorting every entry.
  """
  head = np.unique(flat[:_SAMPLE])
  if head.size and head[0] == 0:
    candidates = head
  else:
    candidates = np.concatenate([np.zeros(1, flat.dtype), head])
  if candidates.size > MAX_K:
    return None
  idx = np.minimum(np.searchsorted(candidates, flat), candidates.size - 1)
  if not np.array_equal(candidates[idx], flat):
    table = np.unique(np.concatenate([np.zeros(1, flat.dtype), flat]))
    if table.size > MAX_K:
      return None
    candidates = table
    idx = np.searchsorted(candidates, flat)
  return candidates, idx.astype(np.uint8)


def pack_array(x, *, bits: int | None = None) -> PackedArray | None:
  """One floating array as a `PackedArray` (host side), or None.

  None when `x` has more than 256 distinct values (bit patterns), +0.0
  counted even if absent.

  Args:
    x: a floating NumPy or jax array (gathered to the host).
    bits: 4 or 8 index bits; None takes 4 when K <= 16, else 8.

  Raises:
    ValueError: a non-floating `x`, bad `bits`, or bits=4 for K > 16.
  """
  x = np.asarray(x)
  _check_floating(x.dtype, 'pack')
  if x.dtype.byteorder not in '=|':
    x = x.astype(x.dtype.newbyteorder('='))
  flat = np.ascontiguousarray(x).reshape(-1).view(_uint(x.dtype))
  found = _codebook_of(flat)
  if found is None:
    return None
  table, idx = found
  k = table.size
  bits = bits_for(k) if bits is None else bits
  if bits not in (4, 8):
    raise ValueError(f'bits must be 4 or 8, got {bits}')
  if k > 1 << bits:
    raise ValueError(f'{k} distinct values do not fit {bits}-bit indices')
  idx = idx.reshape(x.shape)
  indices = pack_nibbles(idx) if bits == 4 else idx
  return PackedArray(indices, table.view(x.dtype), x.shape, x.dtype, bits)


def _unpack_host(p: PackedArray) -> np.ndarray:
  cb = np.asarray(p.codebook)
  idx = np.asarray(p.indices)
  if p.bits == 4:
    idx = unpack_nibbles(idx, p.shape)
  return cb[idx.reshape(-1)].reshape(p.shape)  # Copies the bits.


def _is_array(x) -> bool:
  return isinstance(x, (np.ndarray, np.generic, jax.Array))


def _map(fn, tree):
  """`jax.tree.map(fn, tree)` that keeps the key order of plain dicts.

  jax rebuilds a dict with sorted keys; the compressed file keeps the
  order it is given, so `pack` must not change it.
  """
  if type(tree) is dict:  # pylint: disable=unidiomatic-typecheck
    return {k: _map(fn, v) for k, v in tree.items()}
  if type(tree) in (list, tuple):  # pylint: disable=unidiomatic-typecheck
    return type(tree)(_map(fn, v) for v in tree)
  if tree is None:
    return None
  return jax.tree.map(fn, tree, is_leaf=is_packed)


def pack(tree, *, bits: int | None = None, smaller_only: bool = True,
         layout: str = 'auto'):
  """Packs every floating array leaf with at most 256 distinct values.

  Host side (NumPy; `jax.Array` leaves are gathered). Other leaves (more
  distinct values: uncovered weights, norm scales; integer arrays; non-array
  leaves) are returned unchanged: dense. With `smaller_only`, so is a leaf
  whose packed form would not be smaller (a 128-entry bias with 129
  distinct values). `summary` lists which leaf is which.
  `unpack(pack(tree))` is `tree` bit for bit (see the module on -0.0).

  Args:
    tree: any pytree, e.g. the output of `gmp_jax.quantize`.
    bits: None or 4: 4-bit indices when K <= 16, else 8; 8: always 8.
    smaller_only: keep a leaf dense unless packing makes it smaller.
    layout: 'auto' (default): a leaf with at most `SPARSE_MAX_DENSITY` of
      its entries nonzero becomes a `SparsePackedArray` where that is
      smaller than the `PackedArray`; 'packed': never sparse; 'sparse':
      every packed leaf with a dimension sparse.

  Returns:
    The tree with `PackedArray` / `SparsePackedArray` leaves (NumPy
    children; `jax.device_put` makes them resident on a device).
  """

  if bits not in (None, 4, 8):
    raise ValueError(f'bits must be None, 4 or 8, got {bits}')
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')

  def one(x):
    if not _is_array(x) or not _wire.is_floating(np.dtype(x.dtype)):
      return x
    packed = pack_array(x)
    if packed is None:
      return x
    if bits == 8 and packed.bits == 4:
      idx = unpack_nibbles(packed.indices, packed.shape).astype(np.uint8)
      packed = PackedArray(idx, packed.codebook, packed.shape, packed.dtype, 8)
    if layout != 'packed' and packed.shape:
      idx = np.asarray(packed.indices)
      if packed.bits == 4:
        idx = unpack_nibbles(idx, packed.shape)
      nnz = int(np.count_nonzero(idx))
      if choose_layout(packed.shape, nnz, packed.num_values,
                       packed.dtype.itemsize, layout, packed.bits) == 'sparse':
        packed = sparse_from_indices(idx, np.asarray(packed.codebook),
                                     packed.shape, packed.bits)
    if smaller_only and packed.nbytes >= x.size * packed.dtype.itemsize:
      return x
    return packed

  return _map(one, tree)


def unpack(tree):
  """Every `PackedArray` leaf as its dense array, bit for bit.

  NumPy children give NumPy arrays; jax arrays (or tracers, inside `jit`)
  give jax arrays.
  """

  def one(x):
    if isinstance(x, SparsePackedArray):
      if all(isinstance(a, np.ndarray) for a in jax.tree.leaves(x)):
        return _unpack_sparse_host(x)
      return x.dequantize()
    if not isinstance(x, PackedArray):
      return x
    if isinstance(x.indices, np.ndarray) and isinstance(x.codebook,
                                                        np.ndarray):
      return _unpack_host(x)
    return x.dequantize()

  return _map(one, tree)


# ---------------------------------------------------------------- traced ---


def lookup_table(codebook, bits: int) -> jax.Array:
  """The table `lookup` reads: (256,) padded codebook (8-bit) or (256, 2)
  value pairs, pair[b] = (codebook[b & 15], codebook[b >> 4]) (4-bit)."""
  k = codebook.shape[0]
  if bits == 8:
    return jnp.pad(codebook, (0, MAX_K - k))
  cb = jnp.pad(codebook, (0, NIBBLE_K - k))
  byte = jnp.arange(MAX_K, dtype=jnp.int32)
  return jnp.stack([cb[byte & 15], cb[byte >> 4]], axis=-1)


def lookup(table, indices, shape: tuple[int, ...], bits: int) -> jax.Array:
  """The dense values of packed `indices` of dense `shape` (jit-able).

  One gather per byte from `lookup_table`'s table; every uint8 index is
  in bounds.
  """
  shape = tuple(shape)
  if not math.prod(shape):
    return jnp.zeros(shape, table.dtype)
  w = table.at[indices].get(mode='promise_in_bounds')
  if bits == 8:
    return w
  if not shape:
    return w[0]
  w = w.reshape(shape[:-1] + (2 * indices.shape[-1],))
  return w[..., :shape[-1]] if shape[-1] % 2 else w


def dequantize(indices, codebook, shape: tuple[int, ...],
               bits: int) -> jax.Array:
  """codebook[indices] of a packed layout, as jax ops (see the module)."""
  return lookup(lookup_table(codebook, bits), indices, shape, bits)


def pack_leaf(values, codebook, *, bits: int | None = None) -> PackedArray:
  """Packs `values` against a given `codebook` (jit-able).

  Each value takes the index of the codebook entry with its bit pattern.
  Concrete inputs are checked (ValueError: a value not in the codebook, a
  codebook entry 0 that is not +0.0, K > 256); traced ones cannot be, and a
  value missing from the codebook then gets an arbitrary index.

  Args:
    values: a floating array of the codebook's dtype.
    codebook: (K,) distinct values, entry 0 +0.0, in any order.
    bits: 4 or 8; None takes 4 when K <= 16.
  """
  values = jnp.asarray(values)
  codebook = jnp.asarray(codebook)
  if values.dtype != codebook.dtype:
    raise ValueError(f'values ({values.dtype}) and codebook '
                     f'({codebook.dtype}) differ in dtype')
  _check_floating(values.dtype, 'pack_leaf')
  k = int(codebook.shape[0])
  bits = bits_for(k) if bits is None else bits
  uint = jnp.dtype(_uint(values.dtype))
  cb_bits = lax.bitcast_convert_type(codebook, uint)
  order = jnp.argsort(cb_bits)
  v_bits = lax.bitcast_convert_type(values, uint)
  pos = jnp.clip(jnp.searchsorted(cb_bits[order], v_bits), 0, k - 1)
  idx = order[pos].astype(jnp.uint8)
  if not (_is_tracer(values) or _is_tracer(codebook)):
    if not np.array_equal(np.asarray(cb_bits)[np.asarray(idx)],
                          np.asarray(v_bits)):
      raise ValueError('values hold entries that are not in the codebook')
  if bits == 4 and idx.ndim:
    if idx.shape[-1] % 2:
      idx = jnp.concatenate(
          [idx, jnp.zeros(idx.shape[:-1] + (1,), jnp.uint8)], axis=-1)
    idx = idx[..., 0::2] | (idx[..., 1::2] << 4)
  return PackedArray(idx, codebook, values.shape, values.dtype, bits)


# ---------------------------------------------------------------- matmul ---


def _block_rows(rows: int, cols: int, itemsize: int) -> int:
  return max(1, min(rows, BLOCK_BYTES // max(1, cols * itemsize)))


def packed_matmul(x, w: PackedArray, *, transpose_w: bool = False,
                  precision=None, preferred_element_type=None) -> jax.Array:
  """x @ W (or x @ W.T) for a packed 2-D W, never forming the dense W.

  W is dequantised a block of rows at a time (`BLOCK_BYTES` of dense
  values) in a `lax.fori_loop`. Contracting over W's rows (x @ W), the
  partial products are summed in float32 or wider; contracting over its
  columns (x @ W.T) each block gives a block of output columns. Equal to
  the dense product within float rounding (the summation order differs).

  Args:
    x: (..., n) array, n the contracted length.
    w: a packed (n, m) array (or (m, n) with `transpose_w`).
    transpose_w: contract over W's columns.
    precision, preferred_element_type: as in `lax.dot_general`.

  Returns:
    (..., m) array of dtype `preferred_element_type` or the inputs' result
    type.
  """
  if w.ndim != 2:
    raise ValueError(f'packed_matmul needs a 2-D packed array, got shape '
                     f'{w.shape}')
  rows, cols = w.shape
  n = cols if transpose_w else rows
  if x.shape[-1] != n:
    raise ValueError(f'cannot contract x of shape {x.shape} with packed W '
                     f'of shape {w.shape}' + (' transposed' if transpose_w
                                              else ''))
  out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(
      x.dtype, w.dtype))
  lead = x.shape[:-1]
  r = _block_rows(rows, cols, w.dtype.itemsize)
  nb, tail = divmod(rows, r)
  m = rows if transpose_w else cols

  table = lookup_table(w.codebook, w.bits)  # Once, outside the loop.

  def deq(start, size):
    idx = lax.dynamic_slice_in_dim(w.indices, start, size, 0)
    return lookup(table, idx, (size, cols), w.bits)

  if r >= rows:
    return lax.dot_general(
        x, w.dequantize(), (((x.ndim - 1,), (1 if transpose_w else 0,)),
                            ((), ())),
        precision=precision, preferred_element_type=preferred_element_type
    ).astype(out_dtype)
  if transpose_w:  # Row blocks of W are column blocks of the output.
    def block(out, start, size):
      y = lax.dot_general(x, deq(start, size), (((x.ndim - 1,), (1,)),
                                                ((), ())),
                          precision=precision,
                          preferred_element_type=out_dtype)
      return lax.dynamic_update_slice_in_dim(out, y.astype(out_dtype),
                                             start, x.ndim - 1)
    out = jnp.zeros(lead + (m,), out_dtype)
    out = lax.fori_loop(0, nb, lambda b, o: block(o, b * r, r), out)
    return block(out, nb * r, tail) if tail else out
  acc_dtype = jnp.promote_types(out_dtype, jnp.float32)

  def part(acc, start, size):
    xs = lax.dynamic_slice_in_dim(x, start, size, x.ndim - 1)
    return acc + lax.dot_general(xs, deq(start, size),
                                 (((x.ndim - 1,), (0,)), ((), ())),
                                 precision=precision,
                                 preferred_element_type=acc_dtype)
  acc = jnp.zeros(lead + (m,), acc_dtype)
  acc = lax.fori_loop(0, nb, lambda b, a: part(a, b * r, r), acc)
  if tail:
    acc = part(acc, nb * r, tail)
  return acc.astype(out_dtype)


# ---------------------------------------------------------------- sparse ---

# Densest leaf (nonzeros / entries) that `pack(layout='auto')` and
# `load_compressed(packed=True)` hold sparse: the crossover measured on a
# 2-core CPU by `python -m benchmarks.packed` (section 'sparse'), where the
# sparse product stops beating the dense float32 one at batch 1 (at batch 64
# it wins up to about 10%); see `results/packed_cpu.json`.
SPARSE_MAX_DENSITY = 0.05
# Batch (product of x's leading dims) from which x @ W of a sparse W runs
# through the CSR matrix-matrix kernel (`jax.experimental.sparse` BCSR);
# below it, a gather of x and a scatter-add (faster at batch 1, measured).
SPARSE_KERNEL_MIN_BATCH = 2
LAYOUTS = ('auto', 'packed', 'sparse')


def index_dtype(n: int) -> np.dtype:
  """The smallest unsigned integer dtype holding 0 .. n - 1."""
  for t in (np.uint8, np.uint16, np.uint32):
    if n <= int(np.iinfo(t).max) + 1:
      return np.dtype(t)
  return np.dtype(np.uint64)


def sparse_dims(shape: tuple[int, ...]) -> tuple[int, int]:
  """(n, m): the 2-D view of a leaf, its last axis against the others."""
  shape = tuple(shape)
  if not shape:
    raise ValueError('a sparse packed array needs at least one dimension')
  return math.prod(shape[:-1]), shape[-1]


def packed_nbytes(shape: tuple[int, ...], k: int, itemsize: int,
                  bits: int | None = None) -> int:
  """Resident bytes of a `PackedArray` of `shape` with K = k."""
  bits = bits_for(k) if bits is None else bits
  return math.prod(packed_shape(shape, bits)) + k * itemsize


def sparse_nbytes(shape: tuple[int, ...], nnz: int, k: int, itemsize: int,
                  bits: int | None = None) -> int:
  """Resident bytes of a `SparsePackedArray`: row and column index per
  nonzero (smallest unsigned dtypes), its code (4 or 8 bits), the codebook."""
  n, m = sparse_dims(shape)
  bits = bits_for(k) if bits is None else bits
  codes = (nnz + 1) // 2 if bits == 4 else nnz
  return (nnz * (index_dtype(n).itemsize + index_dtype(m).itemsize) + codes
          + k * itemsize)


def choose_layout(shape: tuple[int, ...], nnz: int, k: int, itemsize: int,
                  layout: str = 'auto', bits: int | None = None) -> str:
  """'packed' or 'sparse' for a leaf of `nnz` nonzeros and K = k.

  'auto': sparse when the leaf has a dimension, at most
  `SPARSE_MAX_DENSITY` of its entries are nonzero and the sparse form is
  smaller than the packed one.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  shape = tuple(shape)
  if layout == 'packed' or not shape:
    return 'packed'
  if layout == 'sparse':
    return 'sparse'
  size = math.prod(shape)
  if not size or nnz > SPARSE_MAX_DENSITY * size:
    return 'packed'
  smaller = (sparse_nbytes(shape, nnz, k, itemsize, bits)
             < packed_nbytes(shape, k, itemsize, bits))
  return 'sparse' if smaller else 'packed'


@jax.tree_util.register_pytree_node_class
class SparsePackedArray:
  """A quantised array resident as its nonzeros: positions and codes.

  The leaf is viewed as an (n, m) matrix, m its last axis and n the product
  of the others. Nonzero entry t (bit pattern not +0.0) sits at
  (rows[t], cols[t]) and has the value codebook[code t]; the entries are
  sorted by column, then row (the CSR layout of the transposed matrix, the
  order the CSR kernel wants for x @ W). Every other entry is +0.0.

  Attributes:
    rows: (nnz,) row of each nonzero, `index_dtype(n)`.
    cols: (nnz,) column of each nonzero, sorted, `index_dtype(m)`.
    codes: uint8 codes, two per byte (4 bits: (nnz + 1) // 2 bytes, entry
      t in byte t // 2, low nibble for even t) or one per byte (8 bits).
    codebook: (K,) floating, entry 0 exactly +0.0.
    shape: the dense shape (static, at least one dimension).
    bits: 4 (K <= 16) or 8 (static).

  Resident bytes (`nbytes`): nnz * (row + column itemsize) + code bytes +
  K * itemsize. Checks as `PackedArray` (concrete parts: codebook entry 0,
  codes in range, positions in range and strictly sorted).
  """

  __slots__ = ('rows', 'cols', 'codes', 'codebook', 'shape', 'bits')

  def __init__(self, rows, cols, codes, codebook, shape, dtype=None,
               bits=None):
    if not tuple(shape):
      raise ValueError('a sparse packed array needs at least one dimension')
    shape, bits = _check_layout(shape, codebook, dtype, bits,
                                'SparsePackedArray')
    for name, a in (('rows', rows), ('cols', cols)):
      if len(a.shape) != 1 or not np.issubdtype(np.dtype(a.dtype),
                                                np.unsignedinteger):
        raise ValueError(f'{name} must be a 1-D unsigned integer array, got '
                         f'{a.dtype}{list(a.shape)}')
    nnz = int(rows.shape[0])
    if int(cols.shape[0]) != nnz:
      raise ValueError(f'rows ({nnz}) and cols ({cols.shape[0]}) differ in '
                       'length')
    if np.dtype(codes.dtype) != np.uint8:
      raise ValueError(f'codes must be uint8, got {codes.dtype}')
    want = ((nnz + 1) // 2,) if bits == 4 else (nnz,)
    if tuple(codes.shape) != want:
      raise ValueError(f'codes of shape {tuple(codes.shape)} do not fit '
                       f'{nnz} {bits}-bit codes (want {want})')
    n, m = sparse_dims(shape)
    if nnz > n * m:
      raise ValueError(f'{nnz} nonzeros do not fit shape {shape}')
    self.rows, self.cols, self.codes, self.codebook = rows, cols, codes, \
        codebook
    self.shape, self.bits = shape, bits
    if not any(_is_tracer(a) for a in (rows, cols, codes, codebook)):
      self._check_values()

  def _check_values(self) -> None:
    cb = np.asarray(self.codebook)
    if cb[:1].view(_uint(cb.dtype))[0] != 0:
      raise ValueError(f'codebook entry 0 must be exactly +0.0 (all bits '
                       f'zero), got {cb[0]!r}')
    codes = np.asarray(self.codes)
    nnz, k = self.nnz, cb.shape[0]
    if self.bits == 4:
      top = int(max(np.max(codes & 15, initial=0),
                    np.max(codes >> 4, initial=0)))
      if nnz % 2 and codes[-1] >> 4:
        raise ValueError('the padding nibble of an odd number of codes must '
                         'be 0')
    else:
      top = int(np.max(codes, initial=0))
    if top >= k:
      raise ValueError(f'code {top} is out of range for a codebook of K={k} '
                       'entries')
    n, m = sparse_dims(self.shape)
    rows = np.asarray(self.rows).astype(np.int64)
    cols = np.asarray(self.cols).astype(np.int64)
    if nnz and (rows.max() >= n or cols.max() >= m):
      raise ValueError(f'a position is out of range for shape {self.shape} '
                       f'(rows < {n}, cols < {m})')
    if nnz > 1 and np.any(np.diff(cols * n + rows) <= 0):
      raise ValueError('positions must be sorted by column, then row, '
                       'without repeats')

  def tree_flatten(self):
    return (self.rows, self.cols, self.codes, self.codebook), (self.shape,
                                                                self.bits)

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.rows, obj.cols, obj.codes, obj.codebook = children
    obj.shape, obj.bits = aux
    return obj

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(self.codebook.dtype)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def nnz(self) -> int:
    return int(self.rows.shape[0])

  @property
  def density(self) -> float:
    return self.nnz / self.size if self.size else 0.0

  @property
  def num_values(self) -> int:
    return int(self.codebook.shape[0])

  @property
  def nbytes(self) -> int:
    """Resident bytes: positions, codes and codebook (see the class)."""
    return (self.nnz * (np.dtype(self.rows.dtype).itemsize
                        + np.dtype(self.cols.dtype).itemsize)
            + math.prod(self.codes.shape)
            + self.num_values * self.dtype.itemsize)

  @property
  def bits_per_weight(self) -> float:
    return 8 * self.nbytes / self.size if self.size else math.inf

  def values(self) -> jax.Array:
    """(nnz,) codebook[codes], as jax ops."""
    return lookup(lookup_table(self.codebook, self.bits), self.codes,
                  (self.nnz,), self.bits)

  def dequantize(self) -> jax.Array:
    """The dense array: a scatter of the values into zeros (jit-able)."""
    n, m = sparse_dims(self.shape)
    out = jnp.zeros((n, m), self.dtype)
    if self.nnz:
      out = out.at[self.rows.astype(jnp.int32),
                   self.cols.astype(jnp.int32)].set(
                       self.values(), mode='promise_in_bounds',
                       unique_indices=True)
    return out.reshape(self.shape)

  def __array__(self, dtype=None, copy=None):
    del copy
    out = _unpack_sparse_host(self)
    return out if dtype is None else out.astype(dtype)

  def __repr__(self) -> str:
    return (f'SparsePackedArray(shape={self.shape}, dtype={self.dtype.name}, '
            f'nnz={self.nnz}, K={self.num_values}, bits={self.bits})')


def _unpack_sparse_host(p: SparsePackedArray) -> np.ndarray:
  cb = np.asarray(p.codebook)
  codes = np.asarray(p.codes)
  if p.bits == 4:
    codes = unpack_nibbles(codes, (p.nnz,))
  n, m = sparse_dims(p.shape)
  out = np.zeros((n, m), cb.dtype)
  out[np.asarray(p.rows).astype(np.intp),
      np.asarray(p.cols).astype(np.intp)] = cb[codes]
  return out.reshape(p.shape)


def sparse_from_indices(idx: np.ndarray, codebook, shape, bits: int
                        ) -> SparsePackedArray:
  """The sparse form of full uint8 codebook indices `idx` (host side)."""
  n, m = sparse_dims(shape)
  t = np.asarray(idx).reshape(n, m).T
  c, r = np.nonzero(t)  # Sorted by column, then row.
  codes = t[c, r].astype(np.uint8)
  if bits == 4:
    codes = pack_nibbles(codes)
  return SparsePackedArray(r.astype(index_dtype(n)), c.astype(index_dtype(m)),
                           codes, codebook, shape, np.dtype(codebook.dtype),
                           bits)


def to_sparse(p: PackedArray) -> SparsePackedArray:
  """A (host) `PackedArray` as a `SparsePackedArray`, exactly."""
  idx = np.asarray(p.indices)
  if p.bits == 4:
    idx = unpack_nibbles(idx, p.shape)
  return sparse_from_indices(idx, np.asarray(p.codebook), p.shape, p.bits)


def sparse_matmul(x, w: SparsePackedArray, *, transpose_w: bool = False,
                  preferred_element_type=None) -> jax.Array:
  """x @ W (or x @ W.T) for a sparse 2-D W, never forming the dense W.

  x @ W (contracting W's rows): from a batch of `SPARSE_KERNEL_MIN_BATCH`
  on (and matching float dtypes) through the CSR matrix-matrix product of
  `jax.experimental.sparse` (W^T in CSR is this class's layout; the row
  pointers are found by a binary search of the sorted columns); otherwise
  as a gather of x at the rows and a sorted scatter-add into the columns.
  x @ W.T: the gather and scatter-add at batch 1, the dequantised W and a
  dense product for larger batches. Equal to the dense product within float
  rounding (the summation order differs).
  """
  if w.ndim != 2:
    raise ValueError(f'sparse_matmul needs a 2-D sparse array, got shape '
                     f'{w.shape}')
  n, m = w.shape
  k_dim = m if transpose_w else n
  if x.shape[-1] != k_dim:
    raise ValueError(f'cannot contract x of shape {x.shape} with sparse W '
                     f'of shape {w.shape}' + (' transposed' if transpose_w
                                              else ''))
  out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(
      x.dtype, w.dtype))
  lead = x.shape[:-1]
  out_n = n if transpose_w else m
  batch = math.prod(lead)
  if not batch or not w.nnz:
    return jnp.zeros(lead + (out_n,), out_dtype)
  x2 = x.reshape(batch, k_dim)
  rows = w.rows.astype(jnp.int32)
  cols = w.cols.astype(jnp.int32)
  if transpose_w and batch >= SPARSE_KERNEL_MIN_BATCH:
    y = lax.dot_general(x2, w.dequantize(), (((1,), (1,)), ((), ())),
                        preferred_element_type=out_dtype)
    return y.astype(out_dtype).reshape(lead + (out_n,))
  v = w.values()
  if (not transpose_w and batch >= SPARSE_KERNEL_MIN_BATCH
      and x2.dtype == v.dtype == out_dtype
      and out_dtype in (jnp.float32, jnp.float64)):
    from jax.experimental import sparse as jsparse  # pylint: disable=g-import-not-at-top
    indptr = jnp.searchsorted(cols, jnp.arange(m + 1, dtype=jnp.int32),
                              side='left').astype(jnp.int32)
    wt = jsparse.BCSR((v, rows, indptr), shape=(m, n),
                      indices_sorted=True, unique_indices=True)
    y = jsparse.bcsr_dot_general(wt, x2.T,
                                 dimension_numbers=(((1,), (0,)), ((), ())))
    return y.T.reshape(lead + (out_n,))
  acc = jnp.promote_types(out_dtype, jnp.float32)
  src, dst = (cols, rows) if transpose_w else (rows, cols)
  g = x2[:, src].astype(acc) * v.astype(acc)[None]
  y = jnp.zeros((batch, out_n), acc).at[:, dst].add(
      g, indices_are_sorted=not transpose_w, mode='promise_in_bounds')
  return y.astype(out_dtype).reshape(lead + (out_n,))


# ---------------------------------------------------------- packed_apply ---


class _Leaf:
  """A packed leaf inside the interpreter: cast and transpose pending."""

  def __init__(self, packed: PackedArray, dtype=None, transposed=False):
    self.packed, self.transposed = packed, transposed
    self.dtype = packed.dtype if dtype is None else jnp.dtype(dtype)
    self._dense = None

  def as_packed(self):
    p = self.packed
    if self.dtype == p.dtype:
      return p
    children, aux = p.tree_flatten()
    return type(p).tree_unflatten(aux, (*children[:-1],
                                        children[-1].astype(self.dtype)))

  def dense(self) -> jax.Array:
    if self._dense is None:
      w = self.as_packed().dequantize()
      self._dense = w.T if self.transposed else w
    return self._dense


def _dot_rule(eqn, invals):
  """`packed_matmul` for a dot_general with one packed 2-D operand."""
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  sides = [i for i, v in enumerate(invals) if isinstance(v, _Leaf)]
  if lb or rb or len(sides) != 1:
    return None
  s = sides[0]
  leaf, other = invals[s], invals[1 - s]
  w_contract, o_contract = (lc, rc) if s == 0 else (rc, lc)
  if leaf.packed.ndim != 2 or len(w_contract) != 1:
    return None
  c = w_contract[0] if not leaf.transposed else 1 - w_contract[0]
  o = jnp.moveaxis(other, o_contract[0], -1)
  out_dtype = eqn.outvars[0].aval.dtype
  if isinstance(leaf.packed, SparsePackedArray):
    y = sparse_matmul(o, leaf.as_packed(), transpose_w=c == 1,
                      preferred_element_type=out_dtype)
  else:
    y = packed_matmul(o, leaf.as_packed(), transpose_w=c == 1,
                      precision=eqn.params.get('precision'),
                      preferred_element_type=out_dtype)
  return [jnp.moveaxis(y, -1, 0) if s == 0 else y]


def _rule(eqn, invals):
  """Outputs of `eqn` on packed inputs, or None to dequantise them."""
  name = eqn.primitive.name
  if name == 'dot_general':
    return _dot_rule(eqn, invals)
  x = invals[0] if len(invals) == 1 else None
  if isinstance(x, _Leaf):
    if name == 'convert_element_type' and jnp.issubdtype(
        eqn.params['new_dtype'], jnp.floating):
      return [_Leaf(x.packed, eqn.params['new_dtype'], x.transposed)]
    if name == 'transpose' and x.packed.ndim == 2:
      return [_Leaf(x.packed, x.dtype, not x.transposed)]
  if name in ('jit', 'pjit'):
    closed = eqn.params['jaxpr']
    return _eval_jaxpr(closed.jaxpr, closed.consts, invals)
  return None


def _eval_jaxpr(jaxpr, consts, args):
  """Evaluates `jaxpr` where packed leaves (`_Leaf`) may flow."""
  from jax.extend import core  # pylint: disable=g-import-not-at-top
  env = {}

  def read(v):
    return v.val if isinstance(v, core.Literal) else env[v]

  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    out = None
    if any(isinstance(x, _Leaf) for x in invals):
      out = _rule(eqn, invals)
      if out is None:
        invals = [x.dense() if isinstance(x, _Leaf) else x for x in invals]
    if out is None:
      params = eqn.primitive.get_bind_params(eqn.params)
      subfuns = ()
      if isinstance(params, tuple):  # Older jax: (subfuns, params).
        subfuns, params = params
      with eqn.ctx.manager:
        out = eqn.primitive.bind(*subfuns, *invals, **params)
      if not eqn.primitive.multiple_results:
        out = [out]
    for v, x in zip(eqn.outvars, out):
      env[v] = x  # A dropped output is written and never read.
  return [x.dense() if isinstance(x, _Leaf) else x
          for x in map(read, jaxpr.outvars)]


def _check_like(params, like) -> None:
  """ValueError unless the packed leaves match `like`'s shapes and dtypes."""
  got = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_packed)
  want = jax.tree_util.tree_flatten_with_path(like)
  if got[1] != want[1]:
    raise ValueError(f'packed params do not have the structure of the '
                     f'reference tree: {got[1]} vs {want[1]}')
  for (path, p), (_, ref) in zip(got[0], want[0]):
    if not is_packed(p):
      continue
    name = jax.tree_util.keystr(path)
    ref_shape = tuple(np.shape(ref))
    if p.shape != ref_shape:
      raise ValueError(f'{name}: packed leaf of shape {p.shape} does not '
                       f"match the model's parameter of shape {ref_shape}")
    if hasattr(ref, 'dtype') and np.dtype(ref.dtype) != p.dtype:
      raise ValueError(f'{name}: packed leaf of dtype {p.dtype} does not '
                       f"match the model's parameter of dtype {ref.dtype}")


def packed_apply(apply_fn: Callable[..., Any], *, like=None,
                 fuse_matmul: bool = True) -> Callable[..., Any]:
  """`apply_fn` on a tree with `PackedArray` leaves, the model unchanged.

  The returned `fn(params, *args, **kwargs)` is meant to run inside the
  caller's `jax.jit`: the packed leaves are its arguments (only they are
  resident between calls) and each is dequantised where it is used. With
  `fuse_matmul`, `apply_fn` is traced to a jaxpr with dense stand-ins for
  the packed leaves and evaluated with every `dot_general` on a packed 2-D
  leaf (also through a dtype cast, a transpose or a nested `jit`) replaced
  by `packed_matmul` (no dense W); any other use dequantises the leaf once.
  Array arguments are traced, other arguments (Python numbers, functions,
  flags) are passed as given. Without `fuse_matmul`, every packed leaf is
  dequantised and `apply_fn` called on the dense tree.

  Outputs equal `apply_fn(unpack(params), ...)` within float rounding
  (blocked sums), exactly where no matrix product is blocked.

  Args:
    apply_fn: `apply_fn(params, *args, **kwargs)` on the dense tree.
    like: optional reference tree (arrays or `jax.ShapeDtypeStruct`s) with
      the model's parameter shapes; each call checks the packed leaves
      against it.
    fuse_matmul: replace products with packed leaves by `packed_matmul`.

  Raises:
    ValueError (when called): a packed leaf whose shape or dtype disagrees
      with `like`, or a tree whose structure does.
  """

  def fn(params, *args, **kwargs):
    if like is not None:
      _check_like(params, like)
    leaves, treedef = jax.tree.flatten(params, is_leaf=is_packed)
    if not fuse_matmul or not any(map(is_packed, leaves)):
      dense = [x.dequantize() if is_packed(x) else x for x in leaves]
      return apply_fn(jax.tree.unflatten(treedef, dense), *args, **kwargs)
    rest, rest_def = jax.tree.flatten((args, kwargs))
    every = leaves + rest
    dynamic = [i for i, x in enumerate(every)
               if is_packed(x) or _is_array(x) or _is_tracer(x)]

    def flat_fn(*values):
      full = list(every)
      for i, v in zip(dynamic, values):
        full[i] = v
      p = jax.tree.unflatten(treedef, full[:len(leaves)])
      a, kw = jax.tree.unflatten(rest_def, full[len(leaves):])
      return apply_fn(p, *a, **kw)

    stand_ins = [jax.ShapeDtypeStruct(every[i].shape, every[i].dtype)
                 if is_packed(every[i]) else every[i] for i in dynamic]
    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(
        *stand_ins)
    inputs = [_Leaf(every[i]) if is_packed(every[i]) else every[i]
              for i in dynamic]
    out = _eval_jaxpr(closed.jaxpr, closed.consts, inputs)
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return fn


# --------------------------------------------------------------- summary ---


class LeafResidency(NamedTuple):
  """How one leaf is resident: `kind` 'packed', 'sparse' or 'dense';
  `num_values` (K) and `index_bits` None for dense leaves; `nnz` the stored
  nonzeros of a sparse leaf (else None); `reason` why a dense leaf is dense
  (`dense_reason`; '' for the others)."""
  name: str
  kind: str
  shape: tuple[int, ...]
  dtype: str
  num_values: int | None
  index_bits: int | None
  nbytes: int
  bits_per_weight: float
  reason: str = ''
  nnz: int | None = None


def dense_reason(x, *, raw: bool = False) -> str:
  """Why `pack` (and `load_compressed(packed=True)`) keep a leaf dense.

  'raw' (stored uncoded in the file: `raw`), 'not floating', 'too many
  values' (more than 256 bit patterns, +0.0 counted), 'not smaller' (the
  packed form would take as many bytes), or '' when it would be packed.
  """
  if raw:
    return 'raw'
  if not _is_array(x) or not _wire.is_floating(np.dtype(x.dtype)):
    return 'not floating'
  p = pack_array(x)
  if p is None:
    return 'too many values'
  if p.nbytes >= p.size * p.dtype.itemsize:
    return 'not smaller'
  return ''


def residency(x, *, raw: bool = False, layout: str = 'auto'
              ) -> tuple[str, int, str]:
  """(kind, resident bytes, reason) of a dense leaf once packed.

  The rule of `pack(..., layout=layout)` and of
  `load_compressed(..., packed=True, layout=layout)` (a `raw` leaf of the
  file stays dense): kind 'packed', 'sparse' or 'dense'.
  """
  dense_nbytes = int(np.prod(np.shape(x), dtype=np.int64)) * np.dtype(
      x.dtype).itemsize
  reason = dense_reason(x, raw=raw)
  if reason:
    return 'dense', dense_nbytes, reason
  p = pack(x, layout=layout)
  if not is_packed(p):
    return 'dense', dense_nbytes, 'not smaller'
  return ('sparse' if isinstance(p, SparsePackedArray) else 'packed',
          p.nbytes, '')


def summary(tree) -> list[LeafResidency]:
  """Per array leaf: packed, sparse or dense, resident bytes and bits per
  weight, and why a dense leaf is dense (`dense_reason`; a raw leaf of a
  file shows as the reason its values give, e.g. 'too many values': the
  file's report, `gmp_jax.compression_report`, names it 'raw').

  Names are '/'-joined paths as in `gmp_jax.codec.LeafInfo`.
  """
  rows = []
  for path, x in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=is_packed)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    if isinstance(x, PackedArray):
      rows.append(LeafResidency(name, 'packed', x.shape, x.dtype.name,
                                x.num_values, x.bits, x.nbytes,
                                x.bits_per_weight))
    elif isinstance(x, SparsePackedArray):
      rows.append(LeafResidency(name, 'sparse', x.shape, x.dtype.name,
                                x.num_values, x.bits, x.nbytes,
                                x.bits_per_weight, '', x.nnz))
    elif hasattr(x, 'shape') and hasattr(x, 'dtype'):
      size = math.prod(x.shape)
      nbytes = size * np.dtype(x.dtype).itemsize
      reason = (dense_reason(x) or 'left dense') if not _is_tracer(x) else ''
      rows.append(LeafResidency(name, 'dense', tuple(x.shape),
                                np.dtype(x.dtype).name, None, None, nbytes,
                                8 * nbytes / size if size else math.inf,
                                reason))
  return rows


def resident_bytes(tree) -> int:
  """Bytes of every array leaf as held: packed leaves with their codebook."""
  return sum(r.nbytes for r in summary(tree))


__all__ = (
    'PackedArray',
    'SparsePackedArray',
    'LeafResidency',
    'LAYOUTS',
    'SPARSE_MAX_DENSITY',
    'choose_layout',
    'dense_reason',
    'index_dtype',
    'packed_nbytes',
    'residency',
    'sparse_dims',
    'sparse_from_indices',
    'sparse_matmul',
    'sparse_nbytes',
    'to_sparse',
    'bits_for',
    'dequantize',
    'is_packed',
    'lookup',
    'lookup_table',
    'pack',
    'pack_array',
    'pack_leaf',
    'packed_apply',
    'packed_matmul',
    'pack_nibbles',
    'packed_shape',
    'resident_bytes',
    'summary',
    'unpack',
    'unpack_nibbles',
)
