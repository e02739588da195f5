"""Tables of a compressed model: sparsity (Table 1) and real file size.

`sparsity_table` gives the poster's Table 1 for a quantised tree: per leaf
or per layer, the parameters, the fraction pruned and the number of distinct
values left.

`compression_report` encodes a quantised tree (or reads a saved file) and
returns per-leaf rows and three totals that papers quote in different ways:

1. ``CR_file = 32·N / (8·file_bytes)``: the real file, as in EPR or MIRACLE;
2. ``CR_Han``: Deep Compression's analytic storage count (formula below);
3. ``|W| / |W≠0|``: the pruning-only rate of Sparse VD.

and, per leaf and in all, the memory the parameters take when loaded with
`load_compressed(path, packed=True)` (`resident_*`: packed, sparse or
dense, and why a leaf stays dense), ``CR_resident = 32·N / (8·bytes)``.

Here N counts the entries of every parameter leaf, 32 bits each.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmp_jax import codec
from gmp_jax import packed as packed_lib
from gmp_jax import prior as prior_lib


def huffman_bits(counts) -> int:
  """Total length of the optimal Huffman code of a symbol stream.

  The total is the sum of the weights of the internal nodes of the Huffman
  tree. Symbols of equal count are merged in bulk, so a large alphabet of
  mostly-distinct values stays fast. A one-symbol stream is given a 1-bit
  code, as a prefix code needs at least one bit per codeword.

  Args:
    counts: occurrences of each symbol (zeros are ignored).

  Returns:
    Sum over symbols of count × code length, in bits.

  References:
    Huffman, "A Method for the Construction of Minimum-Redundancy Codes",
    Proc. IRE 40(9), 1952.
  """
  counts = np.asarray(counts, np.int64).reshape(-1)
  counts = counts[counts > 0]
  if counts.size <= 1:
    return int(counts.sum())
  weights, mult = np.unique(counts, return_counts=True)
  multiplicity = dict(zip(weights.tolist(), mult.tolist()))
  heap = weights.tolist()  # Sorted, hence already a heap.

  def add(w: int, m: int) -> None:
    if w in multiplicity:
      multiplicity[w] += m
    else:
      multiplicity[w] = m
      heapq.heappush(heap, w)

  def take(w: int, m: int) -> None:
    multiplicity[w] -= m
    if not multiplicity[w]:
      del multiplicity[w]
      heapq.heappop(heap)  # `w` is the smallest weight.

  total, nodes = 0, int(counts.size)
  while nodes > 1:
    a = heap[0]
    pairs = multiplicity[a] // 2
    if pairs:  # The two smallest weights are both `a`: merge them in bulk.
      take(a, 2 * pairs)
      add(2 * a, pairs)
      total += 2 * a * pairs
      nodes -= pairs
    else:  # One `a` left: merge it with the next smallest weight.
      take(a, 1)
      b = heap[0]
      take(b, 1)
      add(a + b, 1)
      total += a + b
      nodes -= 1
  return total


def entropy_bits(counts) -> float:
  """Empirical Shannon information of a symbol stream, in bits.

  .. math::

    I = \\sum_s c_s \\log_2 \\frac{n}{c_s}, \\qquad n = \\sum_s c_s,

  the zero-order bound on the length of any code of the stream under its
  own frequencies.

  Args:
    counts: occurrences of each symbol (zeros are ignored).
  """
  c = np.asarray(counts, np.float64)
  c = c[c > 0]
  return float(np.sum(c * np.log2(c.sum() / c))) if c.size else 0.0


def _bit_patterns(x: np.ndarray) -> np.ndarray:
  """One row per entry that identifies its bit pattern (zero = all zero)."""
  uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(
      x.dtype.itemsize)
  flat = np.ascontiguousarray(x).reshape(-1)
  if uint is not None:
    return flat.view(uint)
  return flat.view(np.uint8).reshape(flat.size, x.dtype.itemsize)


@dataclasses.dataclass(frozen=True)
class LeafRow:
  """One leaf of the report; sizes are in bits.

  Attributes:
    name: '/'-joined path of the leaf.
    shape: leaf shape.
    dtype: leaf dtype name.
    storage: 'coded' (codebook + streams) or 'raw'.
    parameters: number of entries.
    nonzeros: entries with a nonzero bit pattern.
    distinct: distinct nonzero values.
    position_bits: position stream in the file.
    index_bits: codebook-index stream plus its frequency table.
    codebook_bits: codebook in the file.
    raw_bits: raw data in the file (raw leaves only).
    overhead_bits: record kind byte, counts and stream lengths.
    position_entropy_bits: N·H(nnz/N), the zero-order bound of the
      positions (None for raw leaves).
    index_entropy_bits: nnz·H(counts/nnz), the zero-order bound of the
      codebook indices (None for raw leaves).
    han_index_width: relative-index width, 8 (conv) or 5 (other) bits.
    han_entries: nonzeros plus filler zeros.
    han_bits: Deep Compression's storage count of the leaf.
    resident_kind: how `load_compressed(path, packed=True)` holds the leaf:
      'packed' (`PackedArray`), 'sparse' (`SparsePackedArray`) or 'dense'.
    resident_bytes: its bytes so held (indices, positions and codebook).
    resident_reason: why a dense leaf stays dense: 'raw' (uncoded in the
      file), 'not floating', 'too many values' (over 256), 'not smaller';
      '' for packed and sparse leaves.
  """
  name: str
  shape: tuple[int, ...]
  dtype: str
  storage: str
  parameters: int
  nonzeros: int
  distinct: int
  position_bits: int
  index_bits: int
  codebook_bits: int
  raw_bits: int
  overhead_bits: int
  position_entropy_bits: float | None
  index_entropy_bits: float | None
  han_index_width: int
  han_entries: int
  han_bits: int
  resident_kind: str = 'dense'
  resident_bytes: int = 0
  resident_reason: str = ''

  @property
  def resident_bits_per_weight(self) -> float | None:
    """8 · resident bytes / parameters (None for an empty leaf)."""
    return _ratio(8 * self.resident_bytes, self.parameters)

  @property
  def file_bits(self) -> int:
    return (self.position_bits + self.index_bits + self.codebook_bits
            + self.raw_bits + self.overhead_bits)


def _ratio(a: float, b: float) -> float | None:
  return a / b if b else None


def format_ratio(value: float | None) -> str:
  """A compression rate for tables: `'232.0×'`, or `'n/a'` for None."""
  return 'n/a' if value is None else f'{value:.1f}×'


@dataclasses.dataclass(frozen=True)
class CompressionReport:
  """Per-leaf rows and the three compression figures.

  Attributes:
    rows: one `LeafRow` per parameter leaf, in file order.
    file_bytes: size of the compressed file.
    header_bytes: preamble plus header (tree structure, dtypes, shapes).
    metadata_bytes: records of metadata leaves.
  """
  rows: tuple[LeafRow, ...]
  file_bytes: int
  header_bytes: int
  metadata_bytes: int

  @property
  def parameters(self) -> int:
    return sum(r.parameters for r in self.rows)

  @property
  def nonzeros(self) -> int:
    return sum(r.nonzeros for r in self.rows)

  @property
  def han_bits(self) -> int:
    return sum(r.han_bits for r in self.rows)

  @property
  def cr_file(self) -> float | None:
    """32·N / (8·file_bytes)."""
    return _ratio(32 * self.parameters, 8 * self.file_bytes)

  @property
  def cr_han(self) -> float | None:
    """32·N / Han bits (see `compression_report`)."""
    return _ratio(32 * self.parameters, self.han_bits)

  @property
  def cr_sparsity(self) -> float | None:
    """|W| / |W≠0|."""
    return _ratio(self.parameters, self.nonzeros)

  def _sum(self, field: str) -> float:
    return sum(getattr(r, field) or 0 for r in self.rows)

  def totals(self) -> dict[str, Any]:
    """The total row and figures as a flat dict."""
    coded = [r for r in self.rows if r.storage == 'coded']
    pos = sum(r.position_bits for r in coded)
    idx = sum(r.index_bits for r in coded)
    return {
        'parameters': self.parameters,
        'nonzeros': self.nonzeros,
        'file_bytes': self.file_bytes,
        'header_bytes': self.header_bytes,
        'metadata_bytes': self.metadata_bytes,
        'position_bits': int(self._sum('position_bits')),
        'index_bits': int(self._sum('index_bits')),
        'codebook_bits': int(self._sum('codebook_bits')),
        'raw_bits': int(self._sum('raw_bits')),
        'overhead_bits': int(self._sum('overhead_bits')),
        'position_bits_over_entropy': _ratio(
            pos, sum(r.position_entropy_bits for r in coded)),
        'index_bits_over_entropy': _ratio(
            idx, sum(r.index_entropy_bits for r in coded)),
        'han_bits': self.han_bits,
        'cr_file': self.cr_file,
        'cr_han': self.cr_han,
        'cr_sparsity': self.cr_sparsity,
        'resident_bytes': self.resident_bytes,
        'resident_bits_per_weight': _ratio(8 * self.resident_bytes,
                                           self.parameters),
        'cr_resident': self.cr_resident,
    }

  @property
  def resident_bytes(self) -> int:
    """Bytes of the parameters loaded with `packed=True`."""
    return sum(r.resident_bytes for r in self.rows)

  @property
  def cr_resident(self) -> float | None:
    """32·N / (8·resident bytes): float32 against the packed tree."""
    return _ratio(32 * self.parameters, 8 * self.resident_bytes)

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable dict: {'rows': [...], 'totals': {...}}."""
    rows = []
    for r in self.rows:
      d = dataclasses.asdict(r)
      d['shape'] = list(r.shape)
      d['file_bits'] = r.file_bits
      d['resident_bits_per_weight'] = r.resident_bits_per_weight
      rows.append(d)
    return {'rows': rows, 'totals': self.totals()}

  def to_markdown(self) -> str:
    """The per-leaf table and the three figures as Markdown."""
    head = ('| leaf | shape | params | nonzero | distinct | stored '
            '| position bits | index bits | codebook bits | file bits '
            '| Han bits |')
    lines = [head, '|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|']
    for r in self.rows:
      lines.append(
          f'| {r.name} | {tuple(r.shape)} | {r.parameters:,} '
          f'| {r.nonzeros:,} | {r.distinct:,} | {r.storage} '
          f'| {r.position_bits:,} | {r.index_bits:,} | {r.codebook_bits:,} '
          f'| {r.file_bits:,} | {r.han_bits:,} |')
    t = self.totals()
    leaf_bits = sum(r.file_bits for r in self.rows)
    lines.append(
        f'| **total** | | {t["parameters"]:,} | {t["nonzeros"]:,} | | '
        f'| {t["position_bits"]:,} | {t["index_bits"]:,} '
        f'| {t["codebook_bits"]:,} | {leaf_bits:,} | {t["han_bits"]:,} |')
    cr = format_ratio
    lines += [
        '',
        '| figure | value |',
        '|---|---:|',
        f'| file bytes (header {self.header_bytes:,}, metadata '
        f'{self.metadata_bytes:,}) | {self.file_bytes:,} |',
        f'| CR_file = 32·N / (8·file bytes) | {cr(self.cr_file)} |',
        f'| CR_Han (Deep Compression storage count) | {cr(self.cr_han)} |',
        f'| \\|W\\| / \\|W≠0\\| | {cr(self.cr_sparsity)} |',
        '',
        'Resident when loaded with `load_compressed(path, packed=True)`:',
        '',
        '| leaf | held as | resident bytes | bits per weight | why dense |',
        '|---|---|---:|---:|---|',
    ]
    for r in self.rows:
      bpw = r.resident_bits_per_weight
      lines.append(f'| {r.name} | {r.resident_kind} | {r.resident_bytes:,} '
                   f'| {"n/a" if bpw is None else f"{bpw:.3f}"} '
                   f'| {r.resident_reason} |')
    bpw = t['resident_bits_per_weight']
    lines.append(f'| **total** | | {t["resident_bytes"]:,} '
                 f'| {"n/a" if bpw is None else f"{bpw:.3f}"} | |')
    lines.append(f'\nCR_resident = 32·N / (8·resident bytes): '
                 f'{cr(self.cr_resident)}')
    return '\n'.join(lines)


def _default_is_conv(name: str, shape: tuple[int, ...]) -> bool:
  del name
  return len(shape) == 4


def _han(x: np.ndarray, width: int) -> tuple[int, int, int, int, int]:
  """Counts of one leaf: nonzeros, distinct, entries, Han bits, counts."""
  patterns = _bit_patterns(x)
  if patterns.ndim == 1:
    nonzero = patterns != 0
    _, counts = np.unique(patterns[nonzero], return_counts=True)
  else:
    nonzero = patterns.any(axis=1)
    _, counts = np.unique(patterns[nonzero], axis=0, return_counts=True)
  positions = np.flatnonzero(nonzero)
  gaps = np.diff(positions, prepend=-1)  # Relative index of each nonzero.
  fillers = int(np.sum((gaps - 1) >> width))
  entries = positions.size + fillers
  bits = (width * entries + huffman_bits(np.append(counts, fillers))
          + 32 * counts.size)
  return positions.size, counts.size, entries, bits, counts


def compression_report(params=None, path=None, *, codebook_dtype='float32',
                       is_conv: Callable[[str, tuple[int, ...]], bool]
                       | None = None) -> CompressionReport:
  r"""Per-leaf sizes of a compressed file and three compression rates.

  With `path`, the saved file is read and described (`params` may then be
  None; if given, its leaf shapes must match the file). Without it, `params`
  is encoded in memory exactly as `codec.save_compressed` would write it.
  Every row and total describes the stored values.

  The Han et al. count treats each leaf l (N_l entries, flattened in C order)
  as one sparse vector of m_l nonzeros at positions p_1 < ... < p_m, with
  p_0 = -1, K_l distinct nonzero values and relative-index width b_l = 8 bits
  for conv kernels (`is_conv`, default: ndim == 4) and 5 bits otherwise:

  .. math::

     g_i = p_i - p_{i-1},\qquad
     F_l = \sum_i \lfloor (g_i - 1) / 2^{b_l} \rfloor,\qquad
     E_l = m_l + F_l,

     \mathrm{bits}_l = b_l E_l + \mathrm{Huff}_l + 32 K_l,\qquad
     \mathrm{CR_{Han}} = \frac{32 \sum_l N_l}{\sum_l \mathrm{bits}_l}.

  A b-bit field holds gaps 1..2^b (it stores g - 1, the zeros skipped); a
  longer gap inserts F filler zeros, each an entry with value 0. Huff_l is
  the length of the optimal Huffman code (`huffman_bits`) of the E_l entry
  values: the K_l codebook indices plus one symbol for the filler zero. The
  codebook costs 32 bits per entry. Each leaf is one relative-index vector
  (the paper's Fig. 2), so no CSR row pointers are counted, nor Huffman
  tables.

  Args:
    params: a quantised tree, or None when `path` is given.
    path: a file written by `save_compressed` (path or binary file object).
    codebook_dtype: passed to the in-memory encoding when `path` is None.
    is_conv: `(name, shape) -> bool` choosing the 8-bit index width.

  Returns:
    A `CompressionReport`.

  Raises:
    codec.CorruptFileError: for a bad file.
    ValueError: if `params` does not match the file.

  References:
    Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks with
    Pruning, Trained Quantization and Huffman Coding", ICLR 2016, sections 2
    (relative indices, Fig. 2), 3 and 4.
    Molchanov, Ashukha & Vetrov, "Variational Dropout Sparsifies Deep Neural
    Networks", ICML 2017 (|W| / |W≠0|).
  """
  is_conv = is_conv or _default_is_conv
  if path is None:
    if params is None:
      raise ValueError('give params, path, or both')
    decoded = codec.from_bytes(
        codec.to_bytes(params, codebook_dtype=codebook_dtype))
  else:
    decoded = codec.load_compressed_with_info(path)
    if params is not None:
      _check_match(params, decoded)
  leaves = _leaves(decoded.params)
  rows = []
  for info, x in zip((i for i in decoded.leaves if not i.is_metadata),
                     leaves):
    width = 8 if is_conv(info.name, tuple(x.shape)) else 5
    nnz, distinct, entries, han_bits, counts = _han(x, width)
    coded = info.kind == 'coded'
    kind, nbytes, reason = packed_lib.residency(x, raw=not coded)
    rows.append(LeafRow(
        name=info.name, shape=tuple(x.shape), dtype=info.dtype,
        storage=info.kind, parameters=int(x.size), nonzeros=nnz,
        distinct=distinct, position_bits=info.position_bits,
        index_bits=info.index_bits + info.table_bits,
        codebook_bits=info.codebook_bits, raw_bits=info.raw_bits,
        overhead_bits=info.overhead_bits,
        position_entropy_bits=(entropy_bits([x.size - nnz, nnz])
                               if coded else None),
        index_entropy_bits=entropy_bits(counts) if coded else None,
        han_index_width=width, han_entries=entries, han_bits=han_bits,
        resident_kind=kind, resident_bytes=nbytes, resident_reason=reason))
  return CompressionReport(
      rows=tuple(rows), file_bytes=decoded.file_bytes,
      header_bytes=decoded.header_bytes,
      metadata_bytes=sum(i.total_bits for i in decoded.leaves
                         if i.is_metadata) // 8)


def _leaves(tree) -> list[np.ndarray]:
  """Array leaves of a tree in file (depth-first) order."""
  # The codec's own traversal, so the order and checks match the file.
  return [x for _, x in codec.named_leaves(tree)]


def _check_match(params, decoded: codec.CompressedFile) -> None:
  """Raises ValueError unless `params` has the file's leaf shapes."""
  given = [x.shape for x in _leaves(params)]
  stored = [i.shape for i in decoded.leaves if not i.is_metadata]
  if given != stored:
    raise ValueError(f'params leaf shapes {given} do not match the file '
                     f'{stored}')


# ------------------------------------------------------------------ Table 1 ---


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):  # DictKey, GetAttrKey, SequenceKey.
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


# Sharded leaves list their distinct values by successive minima under jit;
# past this many the leaf is read to the host instead.
_MAX_DEVICE_DISTINCT = 4096


class _LeafCount(NamedTuple):
  """Entries, nonzero entries and sorted distinct nonzero float32 values."""
  size: int
  nonzero: int
  distinct: np.ndarray


@functools.partial(jax.jit, static_argnums=1)
def _device_count(x, cap: int):
  """`(nonzero, values, found, complete)` of x under jit, for sharded x.

  values[:found] are x's distinct nonzero values (as float32) in increasing
  order: each step takes min {x > last, x != 0}, a reduction XLA keeps on
  the devices holding x until one scalar per step. `complete` is False when
  `cap` steps did not exhaust them.
  """
  x = x.astype(jnp.float32)
  inf = jnp.array(jnp.inf, jnp.float32)

  def step(state):
    i, last, values, _ = state
    nxt = jnp.min(jnp.where((x > last) & (x != 0), x, inf))
    more = nxt < inf
    values = values.at[i].set(nxt)
    return i + more.astype(jnp.int32), nxt, values, ~more

  def going(state):
    i, _, _, done = state
    return (~done) & (i < cap)

  found, _, values, done = jax.lax.while_loop(
      going, step, (jnp.int32(0), -inf, jnp.zeros(cap, jnp.float32),
                    jnp.array(False)))
  return jnp.count_nonzero(x), values, found, done


def _is_sharded(leaf) -> bool:
  return (isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) > 1
          and not leaf.sharding.is_fully_replicated)


def _count(leaf) -> _LeafCount:
  """Counts of one leaf; a sharded leaf is counted where it lies."""
  size = int(np.prod(leaf.shape))
  if _is_sharded(leaf) and size:
    nonzero, values, found, done = jax.device_get(
        _device_count(leaf, _MAX_DEVICE_DISTINCT))
    if done:
      return _LeafCount(size, int(nonzero), np.asarray(values[:int(found)]))
  flat = np.asarray(jax.device_get(leaf)).astype(np.float32).ravel()
  nonzero = flat[flat != 0]
  return _LeafCount(size, int(nonzero.size), np.unique(nonzero))


def _row(name: str, shape, counts: list[_LeafCount]) -> dict[str, Any]:
  n = sum(c.size for c in counts)
  nonzero = sum(c.nonzero for c in counts)
  distinct = (np.unique(np.concatenate([c.distinct for c in counts]))
              if counts else np.zeros(0, np.float32))
  return {'layer': name, 'shape': shape, 'parameters': n,
          'nonzero': nonzero,
          'sparsity': 1.0 - nonzero / n if n else 0.0,
          'distinct_values': int(distinct.size)}


def sparsity_table(params, mixture=None, *,
                   by: str = 'leaf') -> list[dict[str, Any]]:
  """The poster's Table 1 for a quantised tree: sparsity and distinct values.

  One row per floating-point leaf (`by='leaf'`) or per top-level key of the
  tree (`by='layer'`: a layer's kernel and bias together), then a `'total'`
  row. For a row holding n entries, z of them exactly zero,

  .. math::

    \\mathrm{sparsity} = z / n, \\qquad
    \\mathrm{distinct\\_values} = |\\{w \\ne 0\\}|,

  the number of distinct non-zero values (counted in float32). The total
  row sums `parameters` and `nonzero` and counts distinct values across its
  rows. Integer leaves are left out.

  With `mixture` (the one `params` was quantised with), only the leaves it
  covers share values: their rows come first and `'total'` sums them. The
  leaves it does not cover keep raw values; their rows follow the total,
  then a `'raw'` row that sums them. Raw values are never counted in
  `'total'`. A layer with covered and raw leaves has a row in each part.
  Without `mixture` every floating-point leaf counts as covered.

  Leaves sharded over several devices (e.g. FSDP) are counted where they
  lie: jitted reductions, one scalar per distinct value leaving
  the devices; a sharded leaf with more than 4,096 distinct values is read
  to the host.

  Args:
    params: any pytree of arrays, e.g. the output of `gmp_jax.quantize`.
    mixture: optional `GaussianMixture` whose covered leaves are the coded
      part of the tree.
    by: 'leaf' or 'layer'.

  Returns:
    A list of dicts with keys `layer` (the '/'-joined leaf path, the
    top-level key, 'total' or 'raw'), `shape` (a list: the leaf's shape, for
    a layer its kernel's or else its first leaf's; None for the totals),
    `parameters`, `nonzero`, `sparsity` and `distinct_values`, in the
    tree's flattening order within each part.

  Raises:
    ValueError: `by` is neither 'leaf' nor 'layer', the tree has no
      floating-point leaf, or `params` is not the tree `mixture` was built
      for.
  """
  if by not in ('leaf', 'layer'):
    raise ValueError(f"by must be 'leaf' or 'layer', got {by!r}.")
  covered = None
  if mixture is not None:
    prior_lib.mixture_leaves(params, mixture)  # Validates the tree.
    covered = {path for path, _, _ in mixture.signature}
  groups: dict[tuple[bool, str], list[tuple[tuple[str, ...], Any]]] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = getattr(leaf, 'dtype', None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      continue
    names = tuple(_key_name(k) for k in path) or ('<root>',)
    raw = covered is not None and jax.tree_util.keystr(path) not in covered
    key = '/'.join(names) if by == 'leaf' else names[0]
    groups.setdefault((raw, key), []).append((names[1:], leaf))
  if not groups:
    raise ValueError('The tree has no floating-point leaves.')
  rows = {False: [], True: []}
  totals = {False: [], True: []}
  for (raw, name), members in groups.items():
    shape = next((v.shape for rest, v in members if 'kernel' in rest),
                 members[0][1].shape)
    counts = [_count(v) for _, v in members]
    rows[raw].append(_row(name, list(shape), counts))
    totals[raw] += counts
  table = rows[False] + [_row('total', None, totals[False])]
  if rows[True]:
    table += rows[True] + [_row('raw', None, totals[True])]
  return table
