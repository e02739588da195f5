"""Gaussian-mixture prior over network weights (soft weight-sharing).

The prior of Ullrich, Meeds & Welling (2017) is a K-component mixture

  p(w) = prod_i sum_k pi_k N(w_i | mu_k, sigma_k^2),

whose component 0 is pinned at mu_0 = 0 (the pruning cluster). The non-zero
means, the log-precisions log(1 / sigma_k^2) and the mixing logits are learned
together with the weights.

`GaussianMixture` is a pytree, so it passes through `jax.jit`, `jax.grad` and
optax. It also remembers which leaves of which tree it was built for, so a
mixture applied to another tree fails with a clear error instead of silently
regularising the wrong weights.

References:
  Ullrich, Meeds & Welling, "Soft Weight-Sharing for Neural Network
  Compression", ICLR 2017. https://arxiv.org/abs/1702.04008
  Nowlan & Hinton, "Simplifying Neural Networks by Soft Weight-Sharing",
  Neural Computation 1992.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Variances are kept in [VARIANCE_FLOOR, VARIANCE_CEILING] by clipping the
# log-precision; the prior and its gradients stay finite at both ends.
VARIANCE_FLOOR = 1e-8
VARIANCE_CEILING = 1e4
_LOG_PRECISION_MAX = -math.log(VARIANCE_FLOOR)
_LOG_PRECISION_MIN = -math.log(VARIANCE_CEILING)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

FilterFn = Callable[[tuple, Any], bool]
# (path string, shape, dtype string) for every leaf the prior covers.
Signature = tuple[tuple[str, tuple[int, ...], str], ...]


def is_floating(path: tuple, leaf: Any) -> bool:
  """Default leaf filter: every floating-point leaf, biases included."""
  del path
  return hasattr(leaf, 'dtype') and jnp.issubdtype(leaf.dtype, jnp.floating)


@jax.tree_util.register_pytree_with_keys_class
class GaussianMixture:
  """A Gaussian mixture with component 0 fixed at mean 0.

  Learned leaves (the pytree children):
    nonzero_means: (K-1,) means of components 1..K-1.
    log_precisions: (K,) log(1 / sigma_k^2).
    mixing_logits: (K-1,) when pi_0 is fixed, otherwise (K,).

  Static data: `zero_proportion` (the fixed pi_0, or None when learned) and
  `signature`, the leaves of the tree the mixture was built for.

  Derived views: `means`, `variances`, `precisions`, `mixing_proportions`
  and `log_mixing_proportions`, all of shape (K,); index 0 is the zero
  component, `means[0] == 0` exactly and the proportions sum to 1.
  """

  __slots__ = ('nonzero_means', 'log_precisions', 'mixing_logits',
               'zero_proportion', 'signature')

  def __init__(self, nonzero_means, log_precisions, mixing_logits, *,
               zero_proportion: float | None = None,
               signature: Signature = ()):
    # No validation here: jax rebuilds the class with arbitrary leaves
    # (tracers, optax labels, None) through tree_unflatten.
    self.nonzero_means = nonzero_means
    self.log_precisions = log_precisions
    self.mixing_logits = mixing_logits
    self.zero_proportion = zero_proportion
    self.signature = signature

  def tree_flatten_with_keys(self):
    children = (
        (jax.tree_util.GetAttrKey('nonzero_means'), self.nonzero_means),
        (jax.tree_util.GetAttrKey('log_precisions'), self.log_precisions),
        (jax.tree_util.GetAttrKey('mixing_logits'), self.mixing_logits),
    )
    return children, (self.zero_proportion, self.signature)

  @classmethod
  def tree_unflatten(cls, aux, children):
    zero_proportion, signature = aux
    return cls(*children, zero_proportion=zero_proportion,
               signature=signature)

  def replace(self, **kwargs) -> GaussianMixture:
    fields = {s: getattr(self, s) for s in self.__slots__}
    fields.update(kwargs)
    return GaussianMixture(
        fields['nonzero_means'], fields['log_precisions'],
        fields['mixing_logits'], zero_proportion=fields['zero_proportion'],
        signature=fields['signature'])

  @property
  def num_components(self) -> int:
    return self.log_precisions.shape[0]

  @property
  def means(self) -> jax.Array:
    zero = jnp.zeros((1,), self.nonzero_means.dtype)
    return jnp.concatenate([zero, self.nonzero_means])

  @property
  def log_precisions_clipped(self) -> jax.Array:
    return jnp.clip(self.log_precisions, _LOG_PRECISION_MIN,
                    _LOG_PRECISION_MAX)

  @property
  def precisions(self) -> jax.Array:
    return jnp.exp(self.log_precisions_clipped)

  @property
  def variances(self) -> jax.Array:
    return jnp.exp(-self.log_precisions_clipped)

  @property
  def log_mixing_proportions(self) -> jax.Array:
    if self.zero_proportion is None:
      return jax.nn.log_softmax(self.mixing_logits)
    pi0 = self.zero_proportion
    rest = math.log1p(-pi0) + jax.nn.log_softmax(self.mixing_logits)
    return jnp.concatenate([jnp.full((1,), math.log(pi0), rest.dtype), rest])

  @property
  def mixing_proportions(self) -> jax.Array:
    return jnp.exp(self.log_mixing_proportions)

  def __repr__(self) -> str:
    return (f'GaussianMixture(nonzero_means={self.nonzero_means!r}, '
            f'log_precisions={self.log_precisions!r}, '
            f'mixing_logits={self.mixing_logits!r}, '
            f'zero_proportion={self.zero_proportion}, '
            f'covered_leaves={len(self.signature)})')


# ----------------------------------------------------------------------------
# Leaf selection
# ----------------------------------------------------------------------------


def _path_str(path) -> str:
  return jax.tree_util.keystr(path)


def select_leaves(params, filter_fn: FilterFn | None = None):
  """Returns [(path_str, leaf)] of the leaves chosen by `filter_fn`.

  Raises:
    TypeError: a leaf chosen by a custom filter is not floating point.
    ValueError: no leaf is chosen.
  """
  fn = is_floating if filter_fn is None else filter_fn
  chosen = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not fn(path, leaf):
      continue
    dtype = getattr(leaf, 'dtype', None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f'Leaf {_path_str(path)} was chosen by the filter but has dtype '
          f'{dtype}; the mixture prior applies only to floating-point leaves.')
    chosen.append((_path_str(path), leaf))
  if not chosen:
    raise ValueError(
        'The parameter tree has no compressible leaves: the filter chose none '
        'of its leaves (the default chooses every floating-point leaf).')
  return chosen


def signature_of(params, filter_fn: FilterFn | None = None) -> Signature:
  return tuple((p, tuple(leaf.shape), str(leaf.dtype))
               for p, leaf in select_leaves(params, filter_fn))


def mixture_leaves(params, mixture: GaussianMixture) -> list[jax.Array]:
  """The leaves of `params` that `mixture` covers, in signature order.

  Raises:
    ValueError: `params` is not the tree the mixture was built for.
  """
  by_path = {_path_str(p): leaf for p, leaf in
             jax.tree_util.tree_flatten_with_path(params)[0]}
  leaves = []
  for path, shape, _ in mixture.signature:
    leaf = by_path.get(path)
    if leaf is None:
      raise ValueError(
          f'The mixture was built for another tree: leaf {path} is missing '
          f'from the parameters (they have {len(by_path)} leaves). Build the '
          'mixture with init_mixture(params) on this tree.')
    if tuple(leaf.shape) != shape:
      raise ValueError(
          f'The mixture was built for another tree: leaf {path} has shape '
          f'{tuple(leaf.shape)}, the mixture expects {shape}.')
    leaves.append(leaf)
  if not leaves:
    raise ValueError('The mixture covers no leaves; build it with '
                     'init_mixture(params).')
  return leaves


def map_mixture_leaves(fn, params, mixture: GaussianMixture):
  """Applies `fn(leaf)` to the covered leaves; other leaves pass through."""
  mixture_leaves(params, mixture)  # Validates the tree.
  covered = {p for p, _, _ in mixture.signature}
  return jax.tree_util.tree_map_with_path(
      lambda p, x: fn(x) if _path_str(p) in covered else x, params)


# ----------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------


def init_mixture(params, num_components: int = 17, *,
                 filter_fn: FilterFn | None = None,
                 init_std: float = 0.25,
                 zero_proportion: float = 0.99,
                 learn_zero_proportion: bool = False,
                 means_range: tuple[float, float] | None = None,
                 dtype=jnp.float32) -> GaussianMixture:
  """Initialises a mixture prior for the floating leaves of `params`.

  The K-1 non-zero means are spread evenly over the range of the pretrained
  weights (`linspace(min w, max w, K-1)`), every component starts with
  standard deviation `init_std`, and the non-zero components share
  1 - pi_0 equally. This follows the published recipe (Ullrich et al. 2017;
  their tutorial used K=17, sigma=0.25, pi_0=0.99 fixed).

  Args:
    params: any pytree of arrays, e.g. Flax Linen `params` or NNX state.
    num_components: K >= 2, including the zero component.
    filter_fn: `(path, leaf) -> bool` choosing the compressible leaves;
      defaults to every floating-point leaf, biases included.
    init_std: initial standard deviation of every component.
    zero_proportion: pi_0, the prior mass of the zero component (default
      0.99). Fixed unless `learn_zero_proportion`.
    learn_zero_proportion: learn pi_0 with the other mixing proportions,
      starting from `zero_proportion`.
    means_range: `(low, high)` for the non-zero means instead of the weights'
      range.
    dtype: dtype of the mixture parameters.

  Returns:
    A `GaussianMixture` bound to the chosen leaves of `params`.

  Raises:
    ValueError: bad K, std or pi_0, no compressible leaves, or NaN/inf
      weights.
    TypeError: a custom filter chose an integer leaf.
  """
  if (not isinstance(num_components, (int, np.integer))
      or isinstance(num_components, bool) or num_components < 2):
    raise ValueError(
        f'num_components must be an integer >= 2 (the zero component plus at '
        f'least one other), got {num_components!r}.')
  if not init_std > 0:
    raise ValueError(f'init_std must be > 0, got {init_std!r}.')
  if not 0.0 < zero_proportion < 1.0:
    raise ValueError(
        f'zero_proportion must lie in (0, 1), got {zero_proportion!r}.')
  chosen = select_leaves(params, filter_fn)
  low, high = np.inf, -np.inf
  for path, leaf in chosen:
    values = np.asarray(leaf, dtype=np.float32)
    if not np.all(np.isfinite(values)):
      raise ValueError(
          f'Leaf {path} holds NaN or inf values; the mixture prior needs '
          'finite weights.')
    if values.size:
      low, high = min(low, values.min()), max(high, values.max())
  if means_range is not None:
    low, high = means_range
  elif not np.isfinite(low):  # Only empty leaves.
    low, high = -1.0, 1.0
  if low == high:
    low, high = low - init_std, high + init_std
  num_nonzero = num_components - 1
  if num_nonzero == 1:
    means = np.array([high if abs(high) >= abs(low) else low])
  else:
    means = np.linspace(low, high, num_nonzero)
  log_precisions = np.full(num_components, -2.0 * math.log(init_std))
  if learn_zero_proportion:
    logits = np.full(num_components, math.log((1 - zero_proportion) /
                                              num_nonzero))
    logits[0] = math.log(zero_proportion)
    fixed = None
  else:
    logits = np.zeros(num_nonzero)
    fixed = float(zero_proportion)
  return GaussianMixture(
      jnp.asarray(means, dtype), jnp.asarray(log_precisions, dtype),
      jnp.asarray(logits, dtype), zero_proportion=fixed,
      signature=tuple((p, tuple(leaf.shape), str(leaf.dtype))
                      for p, leaf in chosen))


# ----------------------------------------------------------------------------
# Log-likelihood
# ----------------------------------------------------------------------------
#
# The prior is an elementwise pass over I weights x K components, so its cost
# is a few exponentials per (weight, component) pair and nothing else. The
# kernel below is written for what XLA fuses well on CPU (measured on
# jax 0.10; see benchmarks/train_step.py) and for what its SPMD partitioner
# keeps local when the weights are sharded:
#
# * Each leaf is seen as a matrix (A, B) whose columns are its last axis
#   (`_view`); only leaves with a short last axis are flattened to one row.
#   The view never merges the last axis with another, so a leaf sharded
#   along its last axis stays sharded the same way.
# * Components lie along the major axis of a (K, ...) expression that is
#   never stored: the per-weight sums over k are one multi-output
#   `lax.reduce` over axis 0, so each exponential is computed once and used
#   three times.
# * The per-component sums over weights reduce an (a, P, B) view of the rows
#   over its small middle axis P; XLA emits these as vectorised loops,
#   whereas a reduction over a long weight axis with exponentials inside
#   runs an order of magnitude slower. What remains, (K, a, B), is summed by
#   matrix-vector products, over the rows first and over the last axis once
#   per leaf. Under sharding along the last axis every partial sum stays on
#   its device until then, so the mixture's gradient communicates 3K floats
#   per sharded leaf and the value one float, which XLA sends as one
#   all-reduce (tests/sharding_test.py reads it from the compiled HLO).
# * The (K,) per-component constants enter those fusions precomputed (see
#   `_component_table`).
#
# No (I, K) array is materialised and none is kept for the backward pass: the
# forward pass saves the per-weight log-sum-exp and gradient (two arrays the
# size of the weights) and the backward pass recomputes the responsibilities.

# P above. XLA:CPU vectorises a reduction this short; from P = 20 on the
# backward pass ran 5x slower, at P = 8 about 15% slower (jax 0.10.2).
_SUM_SPLIT = 16
_UNROLLED_MAX_COMPONENTS = 32  # Above this, the max over k is a reduce.
# Leaves whose last axis is shorter than this are flattened to one row: the
# reductions vectorise along the last axis.
_MIN_COLUMNS = 16


def _component_log_density(w, means, precisions, log_pi):
  """(..., K) log pi_k + log N(w | mu_k, 1 / lambda_k)."""
  d = w[..., None] - means
  return (log_pi + 0.5 * jnp.log(precisions) - _HALF_LOG_2PI
          - 0.5 * precisions * d * d)


def _compute_dtype(w, means):
  return jnp.result_type(w.dtype, means.dtype, jnp.float32)


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


def _component_table(means, precisions, log_pi):
  """(5, K) rows: log-density offset, -lambda / 2, mu, lambda, lambda mu.

  Row 0 plus row 1 times (w - mu)^2 is log pi_k N(w | mu_k, 1 / lambda_k).
  The table goes through an identity matmul, which is exact for finite
  values: XLA:CPU does not fuse a dot into its consumers, so the table
  reaches the O(I K) fusions as a precomputed input. Fused in, the (K,)
  arithmetic is re-evaluated inside the weight loop, which is about ten
  times slower there.
  """
  table = jnp.stack([log_pi + 0.5 * jnp.log(precisions) - _HALF_LOG_2PI,
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
                   + _per_component(half_neg_lam, x) * d * d, axis=0)
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
  e = jnp.exp(_per_component(offset, x) + _per_component(half_neg_lam, x)
              * d * d - m[None])
  zero = jnp.zeros((), x.dtype)
  s, a, b = jax.lax.reduce(
      (e, e * _per_component(lam, x), e * _per_component(lam_mu, x)),
      (zero, zero, zero), _add, (0,))
  # sum_k r_k lambda_k (mu_k - x) = (b - x a) / s. Its rounding error is that
  # of moving x by about one ulp of the means; summing r lambda (mu - x)
  # directly is as exact but about 10% slower here.
  return m + jnp.log(s), (b - x * a) / s


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
                + _per_component(half_neg_lam, xv) * d * d - lv[None])
    zero = jnp.zeros((), x.dtype)
    return jax.lax.reduce((r, r * d, r * d * d), (zero, zero, zero), _add,
                          (2,))

  one_row = x.shape[0] == 1
  if one_row:  # Split the row into (1, P, B / P) plus a tail.
    x, lse = x.reshape(1, 1, -1), lse.reshape(1, 1, -1)
    n = x.shape[-1]
    cols = n // _SUM_SPLIT
    head = _SUM_SPLIT * cols
    pieces = [(x[..., :head].reshape(1, _SUM_SPLIT, cols),
               lse[..., :head].reshape(1, _SUM_SPLIT, cols))] if cols else []
    if head < n:
      pieces.append((x[..., head:], lse[..., head:]))
  else:  # Rows in groups of P, then the remaining rows.
    rows, columns = x.shape
    groups = rows // _SUM_SPLIT
    head = _SUM_SPLIT * groups
    pieces = [(x[:head].reshape(groups, _SUM_SPLIT, columns),
               lse[:head].reshape(groups, _SUM_SPLIT, columns))
              ] if groups else []
    if head < rows:
      pieces.append((x[head:][None], lse[head:][None]))
  if one_row:
    totals = [jnp.zeros(mu.shape, x.dtype)] * 3
    for xv, lv in pieces:
      totals = [t + _sum_last(p[:, 0])  # One row: a == 1.
                for t, p in zip(totals, sums(xv, lv))]
    return totals
  # The pieces share the columns: add their column sums, then sum the
  # columns once (one (K,) partial sum per leaf when columns are sharded).
  columns = None
  for xv, lv in pieces:
    c = [_sum_rows(p) for p in sums(xv, lv)]
    columns = c if columns is None else [a + b for a, b in zip(columns, c)]
  return [_sum_last(c) for c in columns]


@jax.custom_vjp
def _leaves_log_prob(leaves, means, precisions, log_pi):
  table = _component_table(means, precisions, log_pi)
  total = jnp.zeros((), means.dtype)
  for w in leaves:
    lse, _ = _lse_and_grad(_view(w, _compute_dtype(w, means)), table)
    total = total + _sum_last(_sum_rows(lse))
  return total


def _leaves_log_prob_fwd(leaves, means, precisions, log_pi):
  table = _component_table(means, precisions, log_pi)
  total = jnp.zeros((), means.dtype)
  saved = []
  for w in leaves:
    lse, grad = _lse_and_grad(_view(w, _compute_dtype(w, means)), table)
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


_leaves_log_prob.defvjp(_leaves_log_prob_fwd, _leaves_log_prob_bwd)


def log_prob_of_values(w: jax.Array, mixture: GaussianMixture) -> jax.Array:
  """Elementwise log sum_k pi_k N(w | mu_k, sigma_k^2), same shape as `w`.

  A plain dense reference (it builds a (w.size, K) array); training uses the
  fused kernel of `mixture_log_prob`.
  """
  return jax.nn.logsumexp(_component_log_density(
      w.astype(_compute_dtype(w, mixture.means)), mixture.means,
      mixture.precisions, mixture.log_mixing_proportions), axis=-1)


def mixture_log_prob(params, mixture: GaussianMixture) -> jax.Array:
  """Log-likelihood of the covered weights under the mixture prior.

  .. math::

    \\log p(w) = \\sum_i \\log \\sum_{k=0}^{K-1} \\pi_k
                 \\mathcal{N}(w_i \\mid \\mu_k, \\sigma_k^2)

  summed over every weight of every leaf the mixture covers. The forward
  pass fuses the log-sum-exp and the weights' gradient into one pass over
  the weights; the backward pass adds one more for the mixture's gradient.
  No (weights x K) array is stored, and only two arrays the size of the
  weights are kept between the passes.

  Args:
    params: the parameter tree the mixture was built for.
    mixture: a `GaussianMixture` from `init_mixture`.

  Returns:
    A scalar (float32, or float64 for a float64 mixture).

  Raises:
    ValueError: `params` is not the tree the mixture was built for.
  """
  dtype = jnp.result_type(mixture.log_precisions.dtype, jnp.float32)
  means = mixture.means.astype(dtype)
  precisions = mixture.precisions.astype(dtype)
  log_pi = mixture.log_mixing_proportions.astype(dtype)
  leaves = tuple(leaf for leaf in mixture_leaves(params, mixture) if leaf.size)
  if not leaves:
    return jnp.zeros((), dtype)
  return _leaves_log_prob(leaves, means, precisions, log_pi)


# ----------------------------------------------------------------------------
# Hyperpriors
# ----------------------------------------------------------------------------


class Hyperpriors(NamedTuple):
  """Gamma priors on the precisions and an optional Beta prior on pi_0.

  Gamma(lambda | alpha, beta) has log-density (alpha - 1) log lambda -
  beta lambda + const; its mode is lambda = (alpha - 1) / beta. Without
  these the variances collapse onto single weights and quantisation fails.
  The defaults are the published tutorial's values (mode sigma ~ 0.02 for
  every component, the zero component held far more tightly).

  Attributes:
    zero_gamma: (alpha, beta) for the zero component's precision, or None.
    gamma: (alpha, beta) for the other precisions, or None.
    zero_beta: (a, b) Beta prior on a learned pi_0, or None.
  """
  zero_gamma: tuple[float, float] | None = (5000.0, 2.0)
  gamma: tuple[float, float] | None = (250.0, 0.1)
  zero_beta: tuple[float, float] | None = None


def hyperprior_log_prob(mixture: GaussianMixture,
                        hyperpriors: Hyperpriors = Hyperpriors()) -> jax.Array:
  """Un-normalised log-density of the hyperpriors (constants dropped).

  .. math::

    (\\alpha_0 - 1)\\log\\lambda_0 - \\beta_0\\lambda_0
    + \\sum_{k \\ge 1} (\\alpha - 1)\\log\\lambda_k - \\beta\\lambda_k
    + (a - 1)\\log\\pi_0 + (b - 1)\\log(1 - \\pi_0)

  The Beta term applies only when pi_0 is learned.
  """
  dtype = jnp.result_type(mixture.log_precisions.dtype, jnp.float32)
  log_lam = mixture.log_precisions_clipped.astype(dtype)
  lam = jnp.exp(log_lam)
  total = jnp.zeros((), dtype)
  if hyperpriors.zero_gamma is not None:
    a, b = hyperpriors.zero_gamma
    total += (a - 1.0) * log_lam[0] - b * lam[0]
  if hyperpriors.gamma is not None:
    a, b = hyperpriors.gamma
    total += jnp.sum((a - 1.0) * log_lam[1:] - b * lam[1:])
  if hyperpriors.zero_beta is not None and mixture.zero_proportion is None:
    a, b = hyperpriors.zero_beta
    log_pi = mixture.log_mixing_proportions.astype(dtype)
    log_rest = jax.nn.logsumexp(log_pi[1:])
    total += (a - 1.0) * log_pi[0] + (b - 1.0) * log_rest
  return total


def complexity_loss(params, mixture: GaussianMixture, *,
                    hyperpriors: Hyperpriors | None = Hyperpriors()
                    ) -> jax.Array:
  """Negative log prior plus negative log hyperprior: the eq. 1 penalty."""
  loss = -mixture_log_prob(params, mixture)
  if hyperpriors is not None:
    loss = loss - hyperprior_log_prob(mixture, hyperpriors)
  return loss
