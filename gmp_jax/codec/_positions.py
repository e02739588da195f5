"""The row model of the nonzero positions (file format version 2, private).

A leaf of shape (d_1, ..., d_n), n >= 2, is viewed as a matrix z of R =
d_1 ... d_{n-1} rows and C = d_n columns (a dense kernel: one row per input,
one column per output unit; a conv kernel: one row per (kh, kw, c_in)),
z_ij = 1 where the entry is nonzero. Pruned networks have very unequal rows
(dead inputs, busy ones) and columns (dead units), which the zero-order
model of version 1, one probability nnz / N for every entry, ignores.

The row model codes, first, the row counts r_i = sum_j z_ij, under the
static categorical model of their histogram (which the file stores), then
the rows in order, entry (i, j) being 1 with probability

  p_ij = r_i * c_ij / sum_j' c_ij',

  c_ij = n_ij (i C + 2) + BETA (T_i + 1),

where n_ij counts the ones of column j in rows 0..i-1 and T_i all the ones
in those rows: c_ij / ((i + BETA)(i C + 2)) is the column's rate so far,
(n_ij + BETA g_i) / (i + BETA), shrunk towards the overall rate so far,
g_i = (T_i + 1) / (i C + 2), with the strength of BETA rows. The expected
ones of row i are exactly r_i. Rows with r_i = 0 or r_i = C are known from
their count and take no bits. The 'columns' variant applies the same model
to z transposed.

The probabilities are exact functions of integers: p_ij is the float64
quotient of the int64 values r_i c_ij and sum_j' c_ij' (each rounded to
float64 once), clipped to [PROB_MIN, 1 - PROB_MIN], so the encoder and any
decoder compute the same bits on every IEEE-754 platform. Leaves whose
integers could exceed int64 are not offered the model.

`encode_plan` works on the whole matrix; the writer uses the blocked
`plan_cost` (bounded memory; since p_ij depends on j only through n_ij, the
cost of row i is a sum over the histogram of (n_ij, z_ij), one log2 per
distinct n_ij) and `encode_reverse`, which give the same integers and
probabilities.
"""

from __future__ import annotations

import math

import numpy as np

BETA = 16
PROB_MIN = 2.0**-16
MODELS = ('global', 'rows', 'columns')


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
  """(R, C) of the row model's view of a leaf, or None if it has none."""
  if len(shape) < 2:
    return None
  r, c = math.prod(shape[:-1]), shape[-1]
  if r < 2 or c < 2:
    return None
  # The largest integer formed: C * (R (R C + 2) + BETA (R C + 1)).
  if c * (r * (r * c + 2) + BETA * (r * c + 1)) >= 2**62:
    return None
  return r, c


def _numerators(z: np.ndarray) -> np.ndarray:
  """c_ij for every entry of a (R, C) 0/1 int64 matrix (vectorised)."""
  rows, cols = z.shape
  above = np.cumsum(z, axis=0) - z  # n_ij
  total = (np.cumsum(z.sum(axis=1)) - z.sum(axis=1))[:, None]  # T_i
  i = np.arange(rows, dtype=np.int64)[:, None]
  return above * (i * cols + 2) + BETA * (total + 1)


def _probabilities(r: np.ndarray, c: np.ndarray) -> np.ndarray:
  """p for rows of numerators `c` (..., C) with counts `r` (...)."""
  num = (r[..., None] * c).astype(np.float64)
  den = c.sum(axis=-1, keepdims=True).astype(np.float64)
  return np.clip(num / den, PROB_MIN, 1.0 - PROB_MIN)


def encode_plan(z: np.ndarray):
  """Everything the encoder needs for the row model of the matrix `z`.

  Args:
    z: (R, C) boolean.

  Returns:
    `(counts, hist, bits, p, cost_bits)`: the row counts r, the histogram of
    r (length max(r) + 1), the coded bits (rows with 0 < r_i < C, in order)
    with their probabilities, and the ideal cost in bits of the counts and
    the bits (not counting the stored histogram).
  """
  zi = z.astype(np.int64)
  counts = zi.sum(axis=1)
  hist = np.bincount(counts)
  coded = (counts > 0) & (counts < z.shape[1])
  p = _probabilities(counts[coded], _numerators(zi)[coded]).reshape(-1)
  bits = zi[coded].reshape(-1)
  cost = float(-np.sum(np.where(bits == 1, np.log2(p), np.log2(1 - p))))
  nz = hist[hist > 0].astype(np.float64)
  cost += float(np.sum(nz * np.log2(counts.size / nz)))
  return counts, hist, bits, p, cost


_BLOCK = 1 << 18  # Entries per block of the blocked functions below.
_ROW_LOOP = 64  # Blocks of at most this many rows sum them row by row.


def _block(zb: np.ndarray, r0: int, above0: np.ndarray, total0: int):
  """Coded bits (int64) and probabilities of rows r0.. of z, block `zb`.

  `above0` (C,) holds the column sums and `total0` the ones of the rows
  above the block; the integers, so the probabilities, are those of
  `encode_plan` bit for bit.
  """
  cols = zb.shape[1]
  zi = zb.astype(np.int64)
  rs = zi.sum(axis=1)
  sel = (rs > 0) & (rs < cols)
  above = (above0 + np.cumsum(zi, axis=0) - zi)[sel]
  total = (total0 + np.cumsum(rs) - rs)[sel]
  i = np.arange(r0, r0 + zb.shape[0], dtype=np.int64)[sel]
  c = above * (i * cols + 2)[:, None] + BETA * (total + 1)[:, None]
  return zi[sel], _probabilities(rs[sel], c)


def transpose(z: np.ndarray, tile: int = 256) -> np.ndarray:
  """z.T, C-contiguous, copied tile by tile (cache-friendly; 4x faster)."""
  out = np.empty(z.shape[::-1], z.dtype)
  for i in range(0, z.shape[0], tile):
    for j in range(0, z.shape[1], tile):
      out[j:j + tile, i:i + tile] = z[i:i + tile, j:j + tile].T
  return out


def _blocks(z: np.ndarray, *, reverse: bool, transposed: bool = False):
  """Yields `(bits, p)` of the coded rows of z (or z.T), block by block."""
  if transposed:
    z = transpose(z)
  rows, cols = z.shape
  step = max(1, _BLOCK // cols)
  starts = range(0, rows, step)
  if not reverse:
    above, total = np.zeros(cols, np.int64), 0
    for r0 in starts:
      zb = z[r0:r0 + step]
      yield _block(zb, r0, above, total)
      above = above + zb.sum(axis=0, dtype=np.int64)
      total = int(above.sum())
    return
  col_total = z.sum(axis=0, dtype=np.int64)
  suffix = np.zeros(cols, np.int64)
  for r0 in reversed(starts):
    zb = z[r0:r0 + step]
    block = zb.sum(axis=0, dtype=np.int64)
    above = col_total - suffix - block
    yield _block(zb, r0, above, int(above.sum()))
    suffix += block


def _block_cost(zb: np.ndarray, r0: int, above0: np.ndarray,
                total0: int) -> float:
  """Sum of log2 of the probabilities of the coded bits of rows r0.. of z.

  Within row i, p_ij depends on j only through n_ij, so the sum runs over
  the histogram of (n_ij, z_ij) of each row: one log2 per distinct n_ij
  instead of one per entry. Each p is the one `encode_plan` computes (the
  same integers and float64 operations); only the order of the sum
  differs.
  """
  rows, cols = zb.shape
  rs = zb.sum(axis=1, dtype=np.int64)
  sel = (rs > 0) & (rs < cols)
  if not sel.any():
    return 0.0
  # Counts fit int32 (R < 2**31 here); the numerators are formed in int64.
  n = np.empty((rows, cols), np.int32)
  if rows <= _ROW_LOOP:  # Wide rows: one pass, row by row.
    n[0] = above0
    for k in range(1, rows):
      np.add(n[k - 1], zb[k - 1], out=n[k])
  else:
    np.cumsum(zb, axis=0, dtype=np.int32, out=n)
    n -= zb
    n += above0.astype(np.int32)
  total = total0 + np.cumsum(rs) - rs
  i = np.arange(r0, r0 + rows, dtype=np.int64)
  bits, r = zb, rs
  if not sel.all():  # Only the rows neither empty nor full.
    n, bits, total, i, r = n[sel], zb[sel], total[sel], i[sel], rs[sel]
  a, b = i * cols + 2, BETA * (total + 1)
  lo = n.min(axis=1)
  width = int((n.max(axis=1) - lo).max()) + 1
  m = n.shape[0]
  if m * width > 2 * n.size:  # Spread-out counts: entry by entry.
    c = n.astype(np.int64) * a[:, None] + b[:, None]
    p = _probabilities(r, c)
    return float(np.sum(np.log2(np.where(bits, p, 1 - p))))
  key = n - lo[:, None]
  key += (np.arange(m, dtype=np.int32) * width)[:, None]
  key *= 2
  key += bits
  hist = np.bincount(key.reshape(-1), minlength=2 * m * width).reshape(
      m, width, 2)
  v = lo.astype(np.int64)[:, None] + np.arange(width, dtype=np.int64)
  c = v * a[:, None] + b[:, None]
  # The row sums of the numerators, as `_probabilities` forms them.
  den = (n.sum(axis=1, dtype=np.int64) * a + cols * b).astype(
      np.float64)[:, None]
  num = (r[:, None] * c).astype(np.float64)
  p = np.clip(num / den, PROB_MIN, 1.0 - PROB_MIN)
  ones, zeros = hist[..., 1], hist[..., 0]
  return float(np.sum(ones * np.log2(p)) + np.sum(zeros * np.log2(1 - p)))


def plan_cost(z: np.ndarray, *, transposed: bool = False):
  """`encode_plan` without the bits and probabilities, in bounded memory.

  Args:
    z: (R, C) boolean, C-contiguous.
    transposed: the model of z.T.

  Returns:
    `(counts, hist, cost_bits)` as in `encode_plan` (the cost summed in
    another order: equal to `encode_plan`'s up to float64 rounding).
  """
  if transposed:
    z = transpose(z)
  rows, cols = z.shape
  counts = z.sum(axis=1, dtype=np.int64)
  hist = np.bincount(counts)
  step = max(1, _BLOCK // cols)
  above, total, log_q = np.zeros(cols, np.int64), 0, 0.0
  for r0 in range(0, rows, step):
    zb = z[r0:r0 + step]
    log_q += _block_cost(zb, r0, above, total)
    above = above + zb.sum(axis=0, dtype=np.int64)
    total = int(above.sum())
  nz = hist[hist > 0].astype(np.float64)
  cost = -log_q + float(np.sum(nz * np.log2(counts.size / nz)))
  return counts, hist, cost


def encode_reverse(z: np.ndarray, encoder, *,
                   transposed: bool = False) -> None:
  """Codes the bits of the coded rows of z into a `_ans.ReverseEncoder`.

  The blocks go last first, so the stream decodes rows in order, as
  `decode_rows` reads them.
  """
  for bits, p in _blocks(z, reverse=True, transposed=transposed):
    encoder.bernoulli(bits, p)


def decode_rows(counts: np.ndarray, cols: int, read_bits) -> np.ndarray:
  """The matrix z from its row counts; `read_bits(p)` decodes one row.

  Args:
    counts: (R,) row counts r.
    cols: C.
    read_bits: `p -> bits`, decoding len(p) bits with those probabilities.

  Returns:
    (R, C) boolean.

  Raises:
    ValueError: a decoded row does not hold its count of ones.
  """
  rows = counts.size
  z = np.zeros((rows, cols), bool)
  above = np.zeros(cols, np.int64)
  total = 0
  for i in range(rows):
    r = int(counts[i])
    if r == cols:
      z[i] = True
    elif r:
      c = above * (i * cols + 2) + BETA * (total + 1)
      row = np.asarray(read_bits(_probabilities(np.int64(r), c))) != 0
      if int(row.sum()) != r:
        raise ValueError(f'row {i} decodes to {int(row.sum())} ones, its '
                         f'count is {r}')
      z[i] = row
    above += z[i]
    total += r
  return z
