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
