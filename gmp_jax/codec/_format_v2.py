"""File format version 2: the planner, the streaming writer and the reader.

Layout (all integers little-endian; varints are unsigned LEB128) ::

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
*dtype* is one byte, an index into `_wire.DTYPE_CODES` ('float32' is 10), or
255 followed by its name as a string. A *node* is a tag byte: 0 None; 1 dict
(varint n, then n pairs of string key and node); 2 list and 3 tuple (varint
n, n nodes); 4 array (dtype, varint ndim, ndim varint dims, leaf record);
10 dict with int keys (varint n, then n pairs of key and node, the key a
tag 5 and a string or a tag 6 and the zigzag varint of an int; written only
for dicts with an int key, so files without one are unchanged); metadata
only: 5 string, 6 int (varint of the zigzag code 2n or -2n - 1), 7 float
(8-byte double), 8 False, 9 True.

A *leaf record* starts with a flags byte. 1: raw, the N entries in C order
follow. Otherwise the leaf is coded: bits 2-3 give the position model (0
global, 1 rows, 2 columns; `gmp_jax.codec._positions`), bit 4 says the codebook
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
`gmp_jax.codec._ans`: under the global model, if 0 < nnz < N, `z` as N symbols
under the categorical model (N - nnz, nnz); under the rows or columns
model, if 0 < nnz < N, the row counts under the categorical model of their
histogram, then the bits of every row that is neither empty nor full,
each with the probability of `gmp_jax.codec._positions`; then, if K > 1, the
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

Streaming
---------
The writer makes two passes over the leaves and keeps only each leaf's
small plan (codebook, counts, histogram, model) between them: the first
chooses the storage and model of each leaf and computes the data CRC, the
second codes the streams leaf by leaf from the LAST leaf to the first (the
stack coder decodes in the opposite order), each leaf in blocks of
`_CHUNK` entries. The temporaries of one leaf (its nonzero mask, a block of
indices or probabilities) are freed before the next. The choice of the
position model is exact (the costs of `_positions.plan_cost`, up to the
float64 rounding of their sums), so the bytes are those of the
whole-leaf planner this replaced. The file is then written piece by piece
(`Encoded.write_to`); raw leaves go from their arrays to the file, and no
bytes object of the whole file is formed. The leaves are taken as given
(`jax.Array`s, sharded or not, stay on their devices): each pass gathers
one leaf to the host at a time and drops it before the next, so the host
holds one leaf, not the model. The reader decodes each leaf in
blocks into its preallocated output array.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
import zlib

import numpy as np

from gmp_jax.codec import _ans
from gmp_jax.codec import _positions
from gmp_jax.codec import _trees
from gmp_jax.codec import _wire
from gmp_jax.codec._wire import CorruptFileError

VERSION = 2
T_NONE, T_DICT, T_LIST, T_TUPLE, T_ARRAY = 0, 1, 2, 3, 4
T_STR, T_INT, T_FLOAT, T_FALSE, T_TRUE = 5, 6, 7, 8, 9
T_KEYED_DICT = 10
RAW_FLAG, SHARED_FLAG, STORE_FLAG = 1, 16, 32
MODEL_SHIFT = 2
MAX_CODEBOOK = 1 << 16  # Larger codebooks are stored raw.
MAX_SHARED_K = 256  # Leaves with larger codebooks keep their own.
SAMPLE = 1 << 16  # Distinct values in this many nonzeros decide raw early.
MAX_NDIM = 64
_CHUNK = 1 << 20  # Entries per block of the writer's and reader's loops.


@dataclasses.dataclass
class _Plan:
  """How one leaf is stored (encoder and decoder side)."""
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
  raw_view: memoryview | None = None  # Decoder: the raw bytes.
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def k(self) -> int:
    return 0 if self.codebook is None else int(self.codebook.size)


# ---------------------------------------------------------------- planner ---


def _stored_bits(x: np.ndarray, store: np.dtype) -> np.ndarray | None:
  """Flat unsigned view of `x` cast to `store`, or None if no uint fits."""
  uint = _wire.UINT.get(store.itemsize)
  if uint is None:
    return None
  s = x.astype(store) if store != x.dtype else x
  return np.ascontiguousarray(s).reshape(-1).view(uint)


def _chunks(n: int):
  return [slice(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK)]


def _codebook(nz: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """Sorted distinct values and counts of `nz`, or None to store raw.

  None when a prefix already shows too many distinct values for a codebook
  to pay off, or there are more than `MAX_CODEBOOK`.
  """
  candidates = np.unique(nz[:SAMPLE])
  if nz.size > SAMPLE and candidates.size > SAMPLE // 2:
    return None
  # The prefix usually covers a quantised leaf, and a binary search in a
  # small codebook beats sorting every entry.
  counts = np.zeros(candidates.size, np.int64)
  for part in _chunks(nz.size):
    block = nz[part]
    idx = np.minimum(np.searchsorted(candidates, block), candidates.size - 1)
    if not np.array_equal(candidates[idx], block):
      break
    counts += np.bincount(idx, minlength=candidates.size)
  else:
    return candidates, counts
  codebook, counts = np.unique(nz, return_counts=True)
  if codebook.size > MAX_CODEBOOK:
    return None
  return codebook, counts


def _entropy(p: float) -> float:
  if p <= 0 or p >= 1:
    return 0.0
  return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _plan_positions(plan: _Plan, mask: np.ndarray) -> float:
  """Picks the cheapest position model; returns its estimated bits."""
  n, nnz = plan.size, plan.nnz
  best = float(n * _entropy(nnz / n))
  view = _positions.matrix_shape(plan.shape)
  if view is None:
    return best
  z = mask.reshape(view)
  for model in (1, 2):
    counts, hist, cost = _positions.plan_cost(z, transposed=model == 2)
    cost += 8 * (_wire.varint_size(hist.size - 1)
                 + sum(_wire.varint_size(int(h)) for h in hist))
    if cost < best:
      best = cost
      plan.model, plan.row_counts, plan.hist = model, counts, hist
  return best


def plan_leaf(x: np.ndarray, cb: np.dtype | None, *, stream_bits: int = 0,
              crc: int = 0) -> tuple[_Plan, int]:
  """Chooses raw or coded storage and the position model of a leaf.

  `stream_bits` is added to the estimated cost of a leaf whose symbols would
  open a stream that may otherwise stay empty (its final flush).

  Returns:
    The plan and the data CRC `crc` continued over the leaf.
  """
  store = _wire.storage_dtype(x.dtype, cb)
  plan = _Plan(dtype=x.dtype, shape=tuple(x.shape), store=store)
  bits = _stored_bits(x, store)

  def raw():
    plan.raw, plan.store = True, x.dtype
    plan.codebook = plan.counts = plan.hist = plan.row_counts = None
    plan.model = 0
    return plan, _wire.crc(x, crc)

  if bits is None:
    return raw()
  n = bits.size
  mask = bits != 0
  plan.nnz = int(np.count_nonzero(mask))
  if not plan.nnz:
    return plan, _wire.crc(bits, crc)
  nz = bits[mask]
  found = _codebook(nz)
  del nz
  if found is None:
    return raw()
  plan.codebook, plan.counts = found
  k = plan.k
  cost = 8 * (_wire.varint_size(plan.nnz) + _wire.varint_size(k)
              + k * store.itemsize)
  if k > 1:
    cost += 8 * sum(_wire.varint_size(int(c)) for c in plan.counts)
    cost += float(np.sum(plan.counts * np.log2(plan.nnz / plan.counts)))
  if plan.nnz < n:
    cost += _plan_positions(plan, mask)
  if k > 1 or plan.nnz < n:
    cost += stream_bits
  if cost >= 8 * x.nbytes:
    return raw()
  return plan, _wire.crc(bits, crc)


def shared_table(plans: list[_Plan]) -> np.ndarray | None:
  """The shared codebook of the params' coded leaves, if it saves bytes.

  Marks the leaves that select their codebook from it (a bitmap of
  ceil(G / 8) bytes instead of K values).
  """
  by_dtype: dict[np.dtype, list[_Plan]] = {}
  for p in plans:
    if not p.raw and 0 < p.k <= MAX_SHARED_K:
      by_dtype.setdefault(p.store, []).append(p)
  if not by_dtype:
    return None
  store, group = max(by_dtype.items(), key=lambda kv: len(kv[1]))
  table = np.unique(np.concatenate([p.codebook for p in group]))
  bitmap = (table.size + 7) // 8
  users = [p for p in group
           if bitmap < _wire.varint_size(p.k) + p.k * store.itemsize]
  saved = sum(_wire.varint_size(p.k) + p.k * store.itemsize - bitmap
              for p in users)
  cost = _wire.varint_size(table.size) + 1 + table.size * store.itemsize
  if saved <= cost:
    return None
  for p in users:
    p.shared = True
  return table


# ---------------------------------------------------------------- streams ---


def _encode_leaf_reverse(enc: _ans.ReverseEncoder, plan: _Plan,
                         x: np.ndarray) -> None:
  """Codes a coded leaf's chunks into `enc`, last symbol first."""
  if plan.raw or not plan.nnz:
    return
  n = plan.size
  bits = _stored_bits(x, plan.store)
  if plan.k > 1:  # The indices come last in the stream: coded first.
    model = _ans.categorical_model(plan.counts)
    for part in reversed(_chunks(n)):
      block = bits[part]
      nz = block[block != 0]
      enc.categorical(np.searchsorted(plan.codebook, nz), model)
  if plan.nnz == n:
    return
  if plan.model:
    z = (bits != 0).reshape(_positions.matrix_shape(plan.shape))
    _positions.encode_reverse(z, enc, transposed=plan.model == 2)
    enc.categorical(plan.row_counts, _ans.categorical_model(plan.hist))
  else:
    model = _ans.categorical_model(np.array([n - plan.nnz, plan.nnz]))
    for part in reversed(_chunks(n)):
      enc.categorical(bits[part] != 0, model)


# ----------------------------------------------------------------- writer ---


class _RawLeaf:
  """A raw leaf's data as a piece of the file, gathered when written."""

  def __init__(self, leaf, nbytes: int):
    self.leaf, self.nbytes = leaf, nbytes


class Encoded:
  """A planned and coded file: `size` bytes, written by `write_to`."""

  def __init__(self, pieces: list, size: int):
    self._pieces, self.size = pieces, size

  def write_to(self, f) -> None:
    """Writes the file to the binary file object `f`, piece by piece.

    Each raw leaf is gathered (`_trees.as_array`) as it is written and
    dropped after.
    """
    crc = 0
    for piece in self._pieces:
      if isinstance(piece, _RawLeaf):
        x = _trees.as_array(piece.leaf)
        view = _wire.le_view(x)
        f.write(view)
        crc = zlib.crc32(view, crc)
        del x, view
        continue
      f.write(piece)
      crc = zlib.crc32(piece, crc)
    f.write(struct.pack('<I', crc))


def _write_tree(w: _wire.Writer, node, leaves, plans, table, pieces) -> None:
  """Writes a tree node; raw leaf data goes to `pieces` as `_RawLeaf`s."""
  tag = node[0]
  if tag == 'n':
    w.buf.append(T_NONE)
  elif tag == 'd':
    keyed = any(not isinstance(k, str) for k, _ in node[1])
    w.buf.append(T_KEYED_DICT if keyed else T_DICT)
    w.varint(len(node[1]))
    for key, child in node[1]:
      if not keyed:
        w.string(key)
      elif isinstance(key, str):
        w.buf.append(T_STR)
        w.string(key)
      else:
        w.buf.append(T_INT)
        w.varint(_wire.zigzag(key))
      _write_tree(w, child, leaves, plans, table, pieces)
  elif tag in ('l', 't'):
    w.buf.append(T_LIST if tag == 'l' else T_TUPLE)
    w.varint(len(node[1]))
    for child in node[1]:
      _write_tree(w, child, leaves, plans, table, pieces)
  elif tag == 'a':
    leaf, plan = leaves[node[1]], plans[node[1]]
    w.buf.append(T_ARRAY)
    w.dtype(plan.dtype)
    w.varint(len(plan.shape))
    for d in plan.shape:
      w.varint(d)
    _write_record(w, plan, leaf, table, pieces)
  else:  # 'v': a JSON scalar of the metadata.
    v = node[1]
    if isinstance(v, bool):
      w.buf.append(T_TRUE if v else T_FALSE)
    elif isinstance(v, int):
      w.buf.append(T_INT)
      w.varint(_wire.zigzag(v))
    elif isinstance(v, float):
      w.buf.append(T_FLOAT)
      w.buf += struct.pack('<d', v)
    else:
      w.buf.append(T_STR)
      w.string(v)


def _write_record(w: _wire.Writer, plan: _Plan, leaf,
                  table: np.ndarray | None, pieces: list) -> None:
  if plan.raw:
    w.buf.append(RAW_FLAG)
    if plan.size:
      pieces.append(bytes(w.buf))
      pieces.append(_RawLeaf(leaf, plan.size * plan.dtype.itemsize))
      w.buf.clear()
    return
  flags = plan.model << MODEL_SHIFT
  flags |= SHARED_FLAG if plan.shared else 0
  flags |= STORE_FLAG if plan.store != plan.dtype else 0
  w.buf.append(flags)
  if plan.store != plan.dtype:
    w.dtype(plan.store)
  w.varint(plan.nnz)
  if not plan.nnz:
    return
  if plan.shared:
    selected = np.isin(table, plan.codebook)
    w.buf += np.packbits(selected, bitorder='little').tobytes()
  else:
    w.varint(plan.k)
    w.buf += _wire.le_bytes(plan.codebook)
  if plan.k > 1:
    for c in plan.counts:
      w.varint(int(c))
  if plan.model:
    w.varint(plan.hist.size - 1)
    for h in plan.hist:
      w.varint(int(h))


def encode(params, metadata, codebook_dtype) -> Encoded:
  """Plans and codes a file (see the module docstring).

  Raises:
    TypeError: for unsupported tree nodes, keys or dtypes (naming the path).
    ValueError: for a bad `codebook_dtype`.
  """
  leaves, names = [], []
  tree = _trees.flatten(params, leaves, names, scalars=False)
  n_params = len(leaves)
  meta = _trees.flatten(metadata, leaves, names, scalars=True)
  cb = _wire.codebook_dtype(codebook_dtype)
  # Each pass gathers one leaf at a time (`_trees.as_array`: no copy of a
  # NumPy array, a device or sharded jax.Array to the host) and drops it.
  plans, data_crc = [], 0
  for i, leaf in enumerate(leaves):
    x = _trees.as_array(leaf, names[i])
    # Metadata leaves are stored exactly.
    plan, data_crc = (plan_leaf(x, cb, crc=data_crc) if i < n_params
                      else plan_leaf(x, None, stream_bits=32, crc=data_crc))
    del x
    plans.append(plan)
  streams = []
  for part in (range(n_params), range(n_params, len(leaves))):
    enc = _ans.ReverseEncoder()
    for i in reversed(part):
      if not plans[i].raw and plans[i].nnz:
        x = _trees.as_array(leaves[i], names[i])
        _encode_leaf_reverse(enc, plans[i], x)
        del x
    streams.append(enc.words())
  table = shared_table(plans[:n_params])
  w, pieces = _wire.Writer(), []
  if table is None:
    w.varint(0)
  else:
    w.varint(table.size)
    w.dtype(next(p.store for p in plans if p.shared))
    w.buf += _wire.le_bytes(table)
  _write_tree(w, tree, leaves, plans, table, pieces)
  _write_tree(w, meta, leaves, plans, table, pieces)
  for words in streams:
    w.varint(words.size)
    w.buf += _wire.le_bytes(words)
  w.buf += struct.pack('<I', data_crc)
  pieces.append(bytes(w.buf))
  body = sum(p.nbytes if isinstance(p, _RawLeaf) else len(p)
             for p in pieces)
  fixed = len(_wire.PREFIX) + 1 + body + 4
  length = fixed + 1
  while _wire.varint_size(length) != length - fixed:
    length += 1
  head = _wire.PREFIX + bytes([VERSION]) + _wire.varint(length)
  return Encoded([head] + pieces, length)



# ----------------------------------------------------------------- reader ---


def _read_record(r: _wire.Reader, dtype: np.dtype, shape: tuple[int, ...],
                 table: np.ndarray | None, table_store: np.dtype | None
                 ) -> _Plan:
  """Parses a leaf record (the streams come later); allocates nothing big."""
  start = r.pos
  flags = r.take(1)[0]
  plan = _Plan(dtype=dtype, shape=shape, store=dtype)
  n = plan.size
  if flags == RAW_FLAG:
    plan.raw = True
    plan.raw_view = r.take(n * dtype.itemsize)
    plan.info = dict(kind='raw', storage_dtype=dtype.name, nonzeros=None,
                     distinct=None, raw_bits=8 * n * dtype.itemsize,
                     overhead_bits=8)
    return plan
  model = (flags >> MODEL_SHIFT) & 3
  if flags & ~(SHARED_FLAG | STORE_FLAG | (3 << MODEL_SHIFT)) or (
      model >= len(_positions.MODELS)):
    raise CorruptFileError(f'bad leaf record flags {flags}')
  plan.model, plan.shared = model, bool(flags & SHARED_FLAG)
  if flags & STORE_FLAG:
    plan.store = r.dtype()
    if not (_wire.is_floating(dtype) and _wire.is_floating(plan.store)):
      raise CorruptFileError('a storage dtype for a non-floating leaf')
  if plan.store.itemsize not in _wire.UINT:
    raise CorruptFileError(f'coded leaf of dtype {plan.store}')
  uint = np.dtype(_wire.UINT[plan.store.itemsize])
  plan.nnz = r.varint()
  if plan.nnz > n:
    raise CorruptFileError(f'{plan.nnz} nonzeros declared for {n} entries '
                           '(more nonzeros than entries)')
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
    if not 1 <= k <= MAX_CODEBOOK:
      raise CorruptFileError(f'bad codebook size {k}')
    plan.codebook = _wire.from_le(r.take(k * uint.itemsize), uint, k)
  k = plan.k
  if not 1 <= k <= plan.nnz or plan.codebook[0] == 0 or np.any(
      plan.codebook[1:] <= plan.codebook[:-1]):
    raise CorruptFileError('codebook is not sorted and nonzero')
  codebook_bits = 8 * (r.pos - cb_start)
  table_start = r.pos
  plan.counts = r.varints(k) if k > 1 else np.array([plan.nnz])
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
    plan.hist = r.varints(top + 1)
    if plan.hist.sum() != rows or plan.hist[-1] <= 0 or (
        int(np.arange(top + 1) @ plan.hist) != plan.nnz):
      raise CorruptFileError('row-count histogram does not match')
  info.update(distinct=k, codebook_bits=codebook_bits, table_bits=table_bits,
              position_bits=8 * (r.pos - pos_start),
              overhead_bits=8 * (pos_start - start - (table_bits
                                                      + codebook_bits) // 8))
  return plan


def _decode_leaf(dec: _ans.StreamDecoder, plan: _Plan,
                 bits: np.ndarray) -> None:
  """Decodes a coded leaf's chunks into `bits` (flat uint, zero-filled)."""
  n = plan.size
  before = dec.bits_read
  if plan.nnz == n:
    mask = None  # Every entry.
  elif plan.model:
    rows, cols = _positions.matrix_shape(plan.shape)
    if plan.model == 2:
      rows, cols = cols, rows
    counts = dec.categorical(plan.hist, rows)
    try:
      z = _positions.decode_rows(counts, cols, dec.bernoulli)
    except ValueError as e:
      raise CorruptFileError(str(e)) from e
    mask = (z if plan.model == 1 else _positions.transpose(z)).reshape(-1)
    del z
  else:
    model = _ans.categorical_model(np.array([n - plan.nnz, plan.nnz]))
    mask = np.empty(n, bool)
    for part in _chunks(n):
      mask[part] = dec.categorical(None, part.stop - part.start, model)
    ones = int(np.count_nonzero(mask))
    if ones != plan.nnz:
      raise CorruptFileError(f'position stream decodes to {ones} nonzeros, '
                             f'the record declares {plan.nnz}')
  middle = dec.bits_read
  if plan.k == 1:
    if mask is None:
      bits[:] = plan.codebook[0]
    else:
      np.multiply(mask, plan.codebook[0], out=bits)
  else:
    model = _ans.categorical_model(plan.counts)
    found = np.zeros(plan.k, np.int64)
    for part in _chunks(n):
      block = bits[part]
      where = slice(None) if mask is None else mask[part]
      m = (part.stop - part.start if mask is None
           else int(np.count_nonzero(where)))
      if m:
        idx = dec.categorical(None, m, model)
        found += np.bincount(idx, minlength=plan.k)
        block[where] = plan.codebook[idx]
    if np.any(found != plan.counts):
      raise CorruptFileError('index stream disagrees with counts')
  plan.info['position_bits'] += middle - before
  plan.info['index_bits'] = dec.bits_read - middle


def _value(plan: _Plan, dec: _ans.StreamDecoder | None,
           data_crc: int) -> tuple[np.ndarray, int]:
  """The decoded leaf (a fresh array) and the data CRC continued over it."""
  if plan.raw:
    out = np.empty(plan.shape, plan.dtype)
    flat = out.reshape(-1)
    flat.view(np.uint8)[:] = np.frombuffer(plan.raw_view, np.uint8)
    if sys.byteorder == 'big' and flat.dtype.itemsize > 1:
      flat.byteswap(inplace=True)
    return out, zlib.crc32(plan.raw_view, data_crc)
  uint = np.dtype(_wire.UINT[plan.store.itemsize])
  if plan.store == plan.dtype:
    out = np.zeros(plan.shape, plan.dtype)
    bits = out.reshape(-1).view(uint)
  else:
    bits = np.zeros(plan.size, uint)
  if plan.nnz:
    _decode_leaf(dec, plan, bits)
  data_crc = _wire.crc(bits, data_crc)
  if plan.store != plan.dtype:
    out = bits.view(plan.store).reshape(plan.shape).astype(plan.dtype)
  return out, data_crc


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


def _parse_tree(r: _wire.Reader, plans: list, names: list, limits, table,
                table_store, *, scalars: bool):
  """The tree of one node, with `_LeafRef`s; appends the leaves' plans."""

  def node(path):
    tag = r.take(1)[0]
    if tag == T_NONE:
      return None
    if tag == T_DICT:
      out = {}
      for _ in range(r.varint()):
        key = r.string()
        out[key] = node(path + (key,))
      return out
    if tag == T_KEYED_DICT:
      out = {}
      for _ in range(r.varint()):
        kind = r.take(1)[0]
        if kind == T_STR:
          key = r.string()
        elif kind == T_INT:
          key = _wire.unzigzag(r.varint(max_bits=4096))
        else:
          raise CorruptFileError(f'unknown dict key tag {kind}')
        out[key] = node(path + (key,))
      return out
    if tag in (T_LIST, T_TUPLE):
      out = [node(path + (i,)) for i in range(r.varint())]
      return out if tag == T_LIST else tuple(out)
    if tag == T_ARRAY:
      name = _trees.path_name(path)
      dtype = r.dtype()
      ndim = r.varint()
      if ndim > MAX_NDIM:
        raise CorruptFileError(f'{name}: {ndim} dimensions (at most '
                               f'{MAX_NDIM})')
      shape = tuple(r.varint() for _ in range(ndim))
      limits(name, dtype, shape)  # Before anything the shape sizes.
      plans.append(_read_record(r, dtype, shape, table, table_store))
      names.append(name)
      return _LeafRef(len(plans) - 1)
    if scalars and tag == T_STR:
      return r.string()
    if scalars and tag == T_INT:
      return _wire.unzigzag(r.varint(max_bits=4096))
    if scalars and tag == T_FLOAT:
      return struct.unpack('<d', r.take(8))[0]
    if scalars and tag in (T_FALSE, T_TRUE):
      return tag == T_TRUE
    raise CorruptFileError(f'unknown tree node {tag}')

  return node(())


def check_length(data: memoryview) -> _wire.Reader:
  """Checks the declared length and the file CRC; a reader past them."""
  r = _wire.Reader(data)
  r.take(len(_wire.PREFIX) + 1)
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
  r.buf = data[:-8]
  return r


def read(data: memoryview, limits, *, decode: bool = True,
         params_value=None) -> dict:
  """Decodes the bytes of a version-2 file.

  Args:
    data: the file contents, exactly.
    limits: `check(name, dtype, shape)`, raising before any allocation when
      the declared leaves exceed the caller's bounds.
    decode: decode the streams; if False, only the structure and the
      declared leaves are read (`params` and `metadata` are None, the
      stream bits of the leaves 0).
    params_value: optional `(plan, decoder, data_crc) -> (value, data_crc)`
      decoding each params leaf in place of `_value` (e.g. into packed
      indices); metadata leaves are always decoded by `_value`.

  Returns:
    `params`, `metadata`, `infos` (the `LeafInfo` fields of each leaf),
    `file_bytes`, `header_bytes` and `version`.

  Raises:
    CorruptFileError: if the data is truncated, corrupted or foreign.
  """
  r = check_length(data)
  (d_crc,) = struct.unpack('<I', data[-8:-4])
  plans, names = [], []
  values = None
  try:
    g = r.varint()
    table, table_store = None, None
    if g:
      table_store = r.dtype()
      if table_store.itemsize not in _wire.UINT:
        raise CorruptFileError('shared codebook of a non-codable dtype')
      if g > MAX_CODEBOOK * 256:
        raise CorruptFileError(f'shared codebook of {g} entries')
      uint = np.dtype(_wire.UINT[table_store.itemsize])
      table = _wire.from_le(r.take(g * uint.itemsize), uint, g)
    tree = _parse_tree(r, plans, names, limits, table, table_store,
                       scalars=False)
    n_params = len(plans)
    meta = _parse_tree(r, plans, names, limits, table, table_store,
                       scalars=True)
    values, data_crc = [], 0
    for first, part in ((0, plans[:n_params]), (n_params, plans[n_params:])):
      value_of = params_value if first == 0 and params_value else _value
      n_words = r.varint()
      words = r.take(4 * n_words)
      coded = [p for p in part if not p.raw and p.nnz]
      if not decode:
        continue
      dec = _ans.StreamDecoder(
          _wire.from_le(words, np.dtype(np.uint32), n_words))
      for plan in part:
        value, data_crc = value_of(plan, dec, data_crc)
        values.append(value)
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
  if decode and data_crc != d_crc:
    raise CorruptFileError('decoded data checksum mismatch')
  infos = [dict(name=name, shape=p.shape, dtype=p.dtype.name,
                is_metadata=i >= n_params, **p.info)
           for i, (name, p) in enumerate(zip(names, plans))]
  leaf_bits = sum(_total_bits(i) for i in infos)
  return dict(params=_resolve(tree, values) if decode else None,
              metadata=_resolve(meta, values) if decode else None,
              infos=infos, file_bytes=len(data),
              header_bytes=(8 * len(data) - leaf_bits) // 8, version=VERSION)


def _total_bits(info: dict) -> int:
  return sum(v for k, v in info.items() if k.endswith('_bits'))
