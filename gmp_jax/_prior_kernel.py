"""Fused custom-VJP kernel of the mixture log-likelihood (private).

`leaves_log_prob(leaves, means, precisions, log_pi)` returns

  sum over leaves and weights w of log sum_k pi_k N(w | mu_k, 1 / lambda_k)

with a hand-written backward pass. `gmp_jax.prior.mixture_log_prob` is its
public entry point; `tests/prior_kernel_test.py` checks every code path
against float64 NumPy and a dense formula.

The prior is an elementwise pass over I weights x K components, so its cost
is a few exponentials per (weight, component) pair and nothing else. The
kernel below is written for what XLA fuses well on CPU (measured on
jax 0.10; see benchmarks/train_step.py) and for what its SPMD partitioner
keeps local when the weights are sharded:

* Each leaf is seen as a matrix (A, B) whose columns are its last axis
  (`_view`); only leaves with a short last axis are flattened to one row.
  The view never merges the last axis with another, so a leaf sharded
  along its last axis stays sharded the same way.
* Components lie along the major axis of a (K, ...) expression that is never
  stored: the per-weight sums over k are one multi-output `lax.reduce` over
  axis 0, so each exponential is computed once and used three times.
* The per-component sums over weights reduce an (a, P, B) view of the rows
  over its small middle axis P; XLA emits these as vectorised loops,
  whereas a reduction over a long weight axis with exponentials inside runs
  an order of magnitude slower. What remains, (K, a, B), is summed by
  matrix-vector products, over the rows first and over the last axis once
  per leaf. Under sharding along the last axis every partial sum stays on
  its device until then, so the mixture's gradient communicates 3K floats
  per sharded leaf and the value one float, which XLA sends as one
  all-reduce (tests/sharding_test.py reads it from the compiled HLO).
* The (K,) per-component constants enter those fusions precomputed (see
  `_component_table`).

No (I, K) array is materialised and none is kept for the backward pass: the
forward pass saves the per-weight log-sum-exp and gradient (two arrays the
size of the weights) and the backward pass recomputes the responsibilities.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# P of the module docstring. XLA:CPU vectorises a reduction this short; from
# P = 20 on the backward pass ran 5x slower, at P = 8 about 15% slower (jax 0.10.2).
_SUM_SPLIT = 16
_UNROLLED_MAX_COMPONENTS = 32  # Above this, the max over k is a reduce.
# Leaves whose last axis is shorter than this are flattened to one row: the
# reductions vectorise along the last axis.
_MIN_COLUMNS = 16


def _view(w, dtype):
  """(A, B) matrix view of a leaf in the compute dtype; see the notes above.

  B is the last axis when the leaf has two or more axes and the last has at
  least `_MIN_COLUMNS` entries; otherwise the leaf is one row. Rows whose
  length is not a multiple of the vector width cost a little: a (784, 300)
  leaf's value and gradients take about 10% more CPU time than through one
  flat row, a (1250, 500) leaf's about 3% (jax 0.10.2, AVX-512).
  """
  if w.ndim >= 2 and w.shape[-1] >= _MIN_COLUMNS:
    return w.reshape(-1, w.shape[-1]).astype(dtype)
  return w.reshape(1, -1).astype(dtype)


def compute_dtype(*dtypes) -> jnp.dtype:
  """The widest of `dtypes` and float32: float64 if any is, else float32.

  Chosen explicitly rather than by promotion, so the kernel runs the same
  under `jax_numpy_dtype_promotion='strict'`.
  """
  return max((jnp.dtype(d) for d in (*dtypes, jnp.float32)),
             key=lambda d: d.itemsize)


def _component_table(means, precisions, log_pi):
  """(5, K) rows: log-density offset, -lambda / 2, mu, lambda, lambda mu.

  Row 0 plus row 1 times (w - mu)^2 is log pi_k N(w | mu_k, 1 / lambda_k).
  The table goes through an identity matmul, which is exact for finite
  values: XLA:CPU does not fuse a dot into its consumers, so the table
  reaches the O(I K) fusions as a precomputed input. Fused in, the (K,)
  arithmetic is re-evaluated inside the weight loop, which is about ten
  times slower there.
  """
  table = jnp.stack([log_pi + 0.5 * jnp.log(precisions) - HALF_LOG_2PI,
                     -0.5 * precisions, means, precisions,
                     precisions * means])
  eye = jnp.eye(table.shape[1], dtype=table.dtype)
  return jnp.dot(table, eye, precision=jax.lax.Precision.HIGHEST)


def _add(x, y):
  return tuple(a + b for a, b in zip(x, y))


def _sum_last(x):
  # Sum over the last axis as a matrix-vector product: XLA:CPU runs a long
  # reduction as several reduce-window passes, a dot reads the array once.
  return jnp.dot(x, jnp.ones(x.shape[-1], x.dtype),
                 precision=jax.lax.Precision.HIGHEST)


def _sum_rows(x):
  """(A, B) -> (B,) or (K, A, B) -> (K, B): the sum over A.

  A (batched) vector-matrix product, which XLA:CPU runs without transposing
  x (contracting A directly costs a transpose, ~50% more here).
  """
  hi = jax.lax.Precision.HIGHEST
  if x.ndim == 2:
    return jnp.dot(jnp.ones(x.shape[0], x.dtype), x, precision=hi)
  ones = jnp.ones((x.shape[0], 1, x.shape[1]), x.dtype)
  return jax.lax.dot_general(ones, x, (((2,), (1,)), ((0,), (0,))),
                             precision=hi)[:, 0]


def _per_component(v, x):
  """(K,) -> (K, 1, ..., 1) broadcasting against (K,) + x.shape."""
  return v.reshape((-1,) + (1,) * x.ndim)


def _max_log_density(x, table):
  """max_k log pi_k N(x | mu_k, 1 / lambda_k), elementwise."""
  offset, half_neg_lam, mu = table[0], table[1], table[2]
  num_components = offset.shape[0]
  if num_components > _UNROLLED_MAX_COMPONENTS:
    d = x[None] - _per_component(mu, x)
    return jnp.max(_per_component(offset, x)
                   + _per_component(half_neg_lam, x) * (d * d), axis=0)
  m = offset[0] + half_neg_lam[0] * jnp.square(x - mu[0])
  for k in range(1, num_components):
    m = jnp.maximum(m, offset[k] + half_neg_lam[k] * jnp.square(x - mu[k]))
  return m


def _lse_and_grad(x, table):
  """Per-weight log-sum-exp over components and its derivative in w.

  Args:
    x: weights in the compute dtype, any shape.
    table: from `_component_table`.

  Returns:
    `(lse, grad)`, both shaped like x: log sum_k pi_k N(x | mu_k,
    1 / lambda_k) and -sum_k r_k lambda_k (x - mu_k), r_k the
    responsibilities.
  """
  offset, half_neg_lam, mu, lam, lam_mu = table
  m = _max_log_density(x, table)
  d = x[None] - _per_component(mu, x)
  e = jnp.exp(_per_component(offset, x)
              + _per_component(half_neg_lam, x) * (d * d) - m[None])
  zero = jnp.zeros((), x.dtype)
  s, a, b = jax.lax.reduce(
      (e, e * _per_component(lam, x), e * _per_component(lam_mu, x)),
      (zero, zero, zero), _add, (0,))
  # m and the exponents use one expression, hnl * (d * d), so the maximal
  # component contributes exp(0) = 1 and s >= 1; the floor guards a far
  # weight (|w| ~ 1e4 and more) against the two fusions rounding apart.
  # (Clamping each exponent at 0 instead costs 4x: it breaks the fused
  # reduction.)
  # The ratio below keeps the unfloored s: where a compiler rounds the two
  # fusions apart (XLA without its optimisations does, at |w| ~ 100), every
  # e_k carries the same factor, which the ratio cancels.
  # sum_k r_k lambda_k (mu_k - x) = (b - x a) / s. Its rounding error is that
  # of moving x by about one ulp of the means; summing r lambda (mu - x)
  # directly is as exact but about 10% slower here.
  return (m + jnp.log(jnp.maximum(s, 1)),
          (b - x * a) / jnp.where(s > 0, s, 1))


def _component_sums(x, lse, table):
  """sum_i r_ik [1, d_ik, d_ik^2] with d_ik = x_i - mu_k; three (K,) arrays.

  Args:
    x: (A, B) weights from `_view`.
    lse: (A, B) their log-sum-exp from `_lse_and_grad`.
    table: from `_component_table`.
  """
  offset, half_neg_lam, mu = table[0], table[1], table[2]

  def sums(xv, lv):
    # (a, P, B) views -> three (K, a, B) sums over P.
    d = xv[None] - _per_component(mu, xv)
    r = jnp.exp(_per_component(offset, xv)
                + _per_component(half_neg_lam, xv) * (d * d) - lv[None])
    zero = jnp.zeros((), x.dtype)
    return jax.lax.reduce((r, r * d, r * d * d), (zero, zero, zero), _add,
                          (2,))

  if x.shape[0] == 1:  # One row: a (1, P, B / P) view plus a tail.
    x, lse = x.reshape(1, 1, -1), lse.reshape(1, 1, -1)
    n = x.shape[-1]
    cols = n // _SUM_SPLIT
    head = _SUM_SPLIT * cols
    pieces = [(x[..., :head].reshape(1, _SUM_SPLIT, cols),
               lse[..., :head].reshape(1, _SUM_SPLIT, cols))] if cols else []
    if head < n:
      pieces.append((x[..., head:], lse[..., head:]))
    totals = [jnp.zeros(mu.shape, x.dtype)] * 3
    for xv, lv in pieces:
      totals = [t + _sum_last(p[:, 0]) for t, p in zip(totals, sums(xv, lv))]
    return totals
  # Rows in groups of P, then the remaining rows. The pieces share the
  # columns: their column sums are added, and the columns summed once (one
  # (K,) partial sum per leaf when the columns are sharded).
  rows, columns = x.shape
  groups = rows // _SUM_SPLIT
  head = _SUM_SPLIT * groups
  pieces = [(x[:head].reshape(groups, _SUM_SPLIT, columns),
             lse[:head].reshape(groups, _SUM_SPLIT, columns))
            ] if groups else []
  if head < rows:
    pieces.append((x[head:][None], lse[head:][None]))
  by_column = None
  for xv, lv in pieces:
    c = [_sum_rows(p) for p in sums(xv, lv)]
    by_column = c if by_column is None else [
        a + b for a, b in zip(by_column, c)]
  return [_sum_last(c) for c in by_column]


@jax.custom_vjp
def leaves_log_prob(leaves, means, precisions, log_pi):
  """sum_leaves sum_w log sum_k exp(log_pi_k) N(w | means_k, 1 / precisions_k).

  Args:
    leaves: a tuple of non-empty weight arrays (any floating dtypes).
    means, precisions, log_pi: (K,) arrays in the compute dtype.

  Returns:
    A scalar in the dtype of `means`. Gradients flow to every argument;
    each leaf's gradient keeps the leaf's dtype.
  """
  table = _component_table(means, precisions, log_pi)
  total = jnp.zeros((), means.dtype)
  for w in leaves:
    lse, grad = _lse_and_grad(_view(w, compute_dtype(w.dtype, means.dtype)),
                              table)
    # The barrier keeps the unused gradient, and with it the fused pass of
    # the forward pass. Without it XLA:CPU (jax 0.10.2) drops the gradient
    # and gives the lone log-sum-exp to a YNNPACK fusion that stores each
    # (I,) broadcast of the table and the per-component terms: the value
    # alone then cost 100-180 ns per weight at K = 17, against 13-20 ns
    # for the value and all gradients.
    lse, _ = jax.lax.optimization_barrier((lse, grad))
    total = total + _sum_last(_sum_rows(lse))
  return total


def _leaves_log_prob_fwd(leaves, means, precisions, log_pi):
  table = _component_table(means, precisions, log_pi)
  total = jnp.zeros((), means.dtype)
  saved = []
  for w in leaves:
    lse, grad = _lse_and_grad(_view(w, compute_dtype(w.dtype, means.dtype)),
                              table)
    total = total + _sum_last(_sum_rows(lse))
    saved.append((lse, grad))
  return total, (leaves, means, precisions, log_pi, tuple(saved))


def _leaves_log_prob_bwd(res, g):
  # Weight gradients were computed in the forward pass. The mixture's need
  # the per-component sums of responsibilities, recomputed here from the
  # saved log-sum-exp.
  leaves, means, precisions, log_pi, saved = res
  table = _component_table(means, precisions, log_pi)
  s0 = s1 = s2 = jnp.zeros(means.shape, means.dtype)
  grad_leaves = []
  for w, (lse, grad) in zip(leaves, saved):
    t0, t1, t2 = _component_sums(_view(w, lse.dtype), lse, table)
    s0, s1, s2 = (s0 + t0.astype(s0.dtype), s1 + t1.astype(s1.dtype),
                  s2 + t2.astype(s2.dtype))
    grad_leaves.append((g * grad).astype(w.dtype).reshape(w.shape))
  grad_means = precisions * s1
  grad_precisions = 0.5 * s0 / precisions - 0.5 * s2
  return (tuple(grad_leaves), g * grad_means, g * grad_precisions, g * s0)


leaves_log_prob.defvjp(_leaves_log_prob_fwd, _leaves_log_prob_bwd)
