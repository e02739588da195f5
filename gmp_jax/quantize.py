"""Post-processing: merge components, assign weights, prune and quantise.

After retraining, each weight is assigned to its most responsible component,

  k*(w) = argmax_k pi_k N(w | mu_k, sigma_k^2),

weights of the zero component become exactly 0 (pruned) and all others take
their component's mean. A mixture with `leaf_scales` assigns a weight of
leaf l by w / s_l and gives it the value s_l mu_k. Everything runs as jax ops on the device holding the
params. NumPy handles only the K-entry mixture arrays in `merge_components`.
`gmp_jax.sparsity_table` counts what is left (the poster's Table 1).

Reference: Ullrich, Meeds & Welling, ICLR 2017, section 6 (post-processing).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmp_jax import _prior_kernel
from gmp_jax import prior as prior_lib

GaussianMixture = prior_lib.GaussianMixture

# Means closer than this, relative to the larger magnitude, are one value.
DUPLICATE_RTOL = 1e-3
# A mean within this many zero-component standard deviations of 0 has been
# drawn into the zero component (its weights are 0 at that scale).
ZERO_REACH = 0.1
# At most this many values per leaf (zero included) after merging: 4-bit
# indices.
DEFAULT_MAX_COMPONENTS = 16
# Borders of the pruned region agree within this (relative, absolute).
_BORDER_RTOL, _BORDER_ATOL = 1e-5, 1e-9
# The mixture's clipping range of log-precisions.
_LOG_PRECISION_RANGE = (-math.log(prior_lib.VARIANCE_CEILING),
                        -math.log(prior_lib.VARIANCE_FLOOR))


def _assign_values(w: jax.Array, mixture: GaussianMixture,
                   scale: float | None = None) -> jax.Array:
  if scale is not None:  # Normalised units, as `mixture_log_prob` sees w.
    w = w.astype(jnp.float32) * jnp.asarray(1.0 / scale, jnp.float32)
  score = prior_lib.component_log_density(w, mixture, dtype=jnp.float32)
  return jnp.argmax(score, axis=-1).astype(jnp.int32)


def _quantize_values(w: jax.Array, mixture: GaussianMixture,
                     scale: float | None = None) -> jax.Array:
  idx = _assign_values(w, mixture, scale)
  means = mixture.means
  if scale is not None:
    means = jnp.asarray(scale, jnp.float32) * means.astype(jnp.float32)
  values = jnp.take(means, idx).astype(w.dtype)
  return jnp.where(idx == 0, jnp.zeros((), w.dtype), values)


def _scales_by_path(mixture: GaussianMixture) -> dict[str, float | None]:
  scales = mixture.leaf_scales or (None,) * len(mixture.signature)
  return {p: s for (p, _, _), s in zip(mixture.signature, scales)}


def assign(params, mixture: GaussianMixture):
  """Component index (int32) of every covered weight; None elsewhere.

  Returns a tree like `params` whose covered leaves hold
  argmax_k pi_k N(w / s_l | mu_k, sigma_k^2) (s_l = 1 without
  `leaf_scales`) and whose other leaves are None.
  """
  prior_lib.mixture_leaves(params, mixture)  # Validates the tree.
  scales = _scales_by_path(mixture)

  def leaf(p, x):
    p = jax.tree_util.keystr(p)
    return _assign_values(x, mixture, scales[p]) if p in scales else None

  return jax.tree_util.tree_map_with_path(leaf, params)


@jax.jit
def _quantize_leaves(leaves, mixture: GaussianMixture):
  # Only the covered arrays enter the jitted function: the rest of the tree
  # may hold leaves jax cannot trace (an Equinox model's activation
  # functions, Python ints). The scales are static, part of the mixture's
  # tree structure.
  scales = mixture.leaf_scales or (None,) * len(leaves)
  return [_quantize_values(w, mixture, s) for w, s in zip(leaves, scales)]


def quantize(params, mixture: GaussianMixture):
  """Prunes and quantises the covered weights; returns the same tree.

  Each covered weight becomes the mean of its most responsible component,
  argmax_k pi_k N(w | mu_k, sigma_k^2); weights of the zero component become
  exactly 0. With `leaf_scales`, a weight of leaf l is assigned by w / s_l
  and becomes s_l mu_k (computed in float32, then cast to the leaf's dtype),
  so each leaf has its own K-1 values. Leaves the mixture does not cover are returned unchanged and
  every leaf keeps its dtype, so a whole model with non-array leaves (an
  Equinox module's activation functions, Python ints) passes through.
  Compiled with `jax.jit` (once per set of covered shapes and K); it runs on
  the device that holds the params.

  Args:
    params: the tree the mixture was built for.
    mixture: the (possibly merged) mixture.

  Returns:
    The quantised tree.
  """
  leaves = prior_lib.mixture_leaves(params, mixture)  # Validates the tree.
  quantized = dict(zip((p for p, _, _ in mixture.signature),
                       _quantize_leaves(leaves, mixture)))
  return jax.tree_util.tree_map_with_path(
      lambda p, x: quantized.get(jax.tree_util.keystr(p), x), params)


def prune_masks(params, mixture: GaussianMixture):
  """Boolean masks (True = kept) for covered leaves, None elsewhere."""
  return jax.tree.map(lambda a: None if a is None else a != 0,
                      assign(params, mixture),
                      is_leaf=lambda a: a is None)


def gaussian_kl(mu0, var0, mu1, var1):
  """KL(N(mu0, var0) || N(mu1, var1)), elementwise (NumPy or jax arrays)."""
  return 0.5 * (np.log(var1 / var0) + (var0 + (mu0 - mu1)**2) / var1 - 1.0)


def merge_components(mixture: GaussianMixture, *, threshold: float = 0.1,
                     duplicate_rtol: float = DUPLICATE_RTOL,
                     zero_reach: float = ZERO_REACH,
                     max_components: int | None = DEFAULT_MAX_COMPONENTS
                     ) -> GaussianMixture:
  """Merges redundant components without changing which weights are pruned.

  Three kinds of merge, on the host in float64 (the arrays have K entries;
  shrinking K costs no recompilation):

  1. A component of the given mixture whose mean was drawn into the zero
     component's reach, |mu_k| <= zero_reach sigma_0, joins the zero
     component, and so does one whose symmetric KL to it is below
     `threshold`. Its
     weights are pruned: the zero component (mean 0) keeps or is refitted
     (precision and proportion) to own its old region plus the joined one.
  2. Two non-zero components whose means agree to `duplicate_rtol`,
     |mu_i - mu_j| <= duplicate_rtol max(|mu_i|, |mu_j|), are merged
     whatever their KL (nearest first).
  3. Then, greedily, the closest pair by symmetrised KL,
     (KL(p||q) + KL(q||p)) / 2, while below `threshold`.
  4. With `max_components` (by default 16), the closest pairs go on
     merging, whatever their KL, until K <= max_components, each merge
     under the same check as above. 16 values per leaf, zero included,
     fit 4-bit indices (`gmp_jax.pack`); the default 17-component mixture
     often keeps all 17 after steps 1-3, which would need 5 bits.

  A merged pair takes the pi-weighted mean of the pair's means, the summed
  proportion and the pi-weighted variance; if that moves the pruned region,
  the wider variance and the larger proportion are tried, each also refitted
  through the borders of the pruned region the pair held.

  Every merge is checked against the assignment of the real line,
  argmax_k pi_k N(w | mu_k, sigma_k^2), computed exactly from the pairwise
  crossings of the components' log densities (on |w| up to ten times the
  largest |mu_k| + sigma_k): the region assigned to the zero component
  must stay what it was, plus the regions of joined components, its
  borders within 1e-5 relative (a joined component's within |mu_k| more:
  its weights move from mu_k to 0). A merge that fails the check is not
  made. So `quantize` with the merged mixture prunes the weights it pruned
  with the unmerged one, plus those of joined components, but for weights
  at a border. Where the check forbids every way of making a merge (a
  component near zero that holds a tail of the line cannot join a
  zero-mean component; two duplicates whose union moves a border), the
  components are kept: pruning comes first.

  Args:
    mixture: the retrained mixture.
    threshold: merge while the closest pair's symmetric KL is below this.
    duplicate_rtol: means closer than this, relative to the larger
      magnitude, are merged whatever their KL.
    zero_reach: components with |mu_k| <= zero_reach sigma_0 join the zero
      component.
    max_components: a cap K_max >= 2 on the components (values per leaf,
      zero included) after merging; 16 by default (4-bit indices), None
      for no cap (merge by the three rules above alone). Where the check
      forbids every merge that is left, fewer merges are made and a
      warning says so.

  With `leaf_scales` every leaf shares the normalised mixture, so merging
  it, in normalised units, keeps every leaf's pruned region (s_l times the
  normalised one) as above; the scales are carried over.

  Returns:
    A new `GaussianMixture` with 2 <= K' <= K components and a free pi_0,
    bound to the same tree (and the same `leaf_scales`).

  Raises:
    ValueError: a negative `threshold`, `duplicate_rtol` or `zero_reach`,
      a `max_components` below 2 (or not an int), or a mixture whose arrays
      do not fit together.
  """
  if not threshold >= 0:
    raise ValueError(f'threshold must be >= 0, got {threshold!r}.')
  if not duplicate_rtol >= 0:
    raise ValueError(
        f'duplicate_rtol must be >= 0, got {duplicate_rtol!r}.')
  prior_lib.check_mixture_shapes(mixture)
  if not zero_reach >= 0:
    raise ValueError(f'zero_reach must be >= 0, got {zero_reach!r}.')
  if max_components is not None and (
      isinstance(max_components, bool) or not isinstance(max_components, int)
      or max_components < 2):
    raise ValueError('max_components must be None or an int >= 2 (the zero '
                     f'component and one value), got {max_components!r}.')
  merger = _Merger(mixture, threshold, duplicate_rtol, zero_reach)
  merger.run()
  if max_components is not None:
    merger.cap(max_components)
  return merger.current.mixture


# ----------------------------------------------------------------------------
# merge_components: the assignment of the real line, and the merge loop
# ----------------------------------------------------------------------------


class _Params(NamedTuple):
  """Stored parameters of K components (float64 copies), component 0 first.

  `log_pis` need not be normalised: the mixture's log-softmax shifts them
  all alike, which leaves every argmax unchanged.
  """
  means: np.ndarray
  log_precisions: np.ndarray
  log_pis: np.ndarray
  ids: tuple[int, ...]  # Identity of each component, for rejected merges.


class _Candidate:
  """A parameter set and its assignment of the real line.

  The assignment uses the parameters rounded to the mixture's dtype, as
  `quantize` sees them; the (K,) arithmetic after that is float64.
  """

  def __init__(self, params: _Params, like: GaussianMixture):
    self.params = params
    self.like = like
    dtype = np.dtype(like.log_precisions.dtype)
    means, log_prec, log_pis = (np.asarray(np.asarray(x, dtype), np.float64)
                                for x in params[:3])
    self.means = means
    self.lams = np.exp(np.clip(log_prec, *_LOG_PRECISION_RANGE))
    top = np.max(log_pis)
    self.log_pis = log_pis - (top + np.log(np.sum(np.exp(log_pis - top))))
    self.offsets = (self.log_pis + 0.5 * np.log(self.lams)
                    - _prior_kernel.HALF_LOG_2PI)
    self.edges, self.owners = _assignment(self.means, self.lams, self.offsets)

  @property
  def stored_shift(self) -> float:
    """Stored minus normalised log proportions (the same for every k)."""
    return float(self.params.log_pis[0] - self.log_pis[0])

  @property
  def mixture(self) -> GaussianMixture:
    dtype = self.like.log_precisions.dtype
    return GaussianMixture(
        jnp.asarray(self.params.means[1:], dtype),
        jnp.asarray(self.params.log_precisions, dtype),
        jnp.asarray(self.params.log_pis, dtype), zero_proportion=None,
        signature=self.like.signature, leaf_scales=self.like.leaf_scales)

  def log_density(self, w) -> np.ndarray:
    """(n, K) log pi_k N(w | mu_k, 1 / lambda_k) in float64."""
    d = np.asarray(w, np.float64).reshape(-1, 1) - self.means
    return self.offsets - 0.5 * self.lams * d * d

  def owner(self, w: float) -> int:
    return int(np.argmax(self.log_density(w)[0]))

  def region(self, members, window: float) -> list[tuple[float, float]]:
    """Intervals of [-window, window] assigned to any of `members`."""
    return [(max(lo, -window), min(hi, window)) for lo, hi in
            _intervals(self.edges, np.isin(self.owners, list(members)))
            if hi > -window and lo < window]

  def borders(self, members) -> list[tuple[float, int]]:
    """(point, owner outside) at each finite border of `region(members)`."""
    inside = np.isin(self.owners, list(members))
    return [(float(x), int(self.owners[k + 1] if inside[k]
                           else self.owners[k]))
            for k, x in enumerate(self.edges) if inside[k] != inside[k + 1]]


def _assignment(means, lams, offsets):
  """argmax_k of the log densities on the real line, exactly.

  The log densities are parabolas; the argmax can change only where two of
  them cross. Returns `(edges, owners)`: the sorted crossings and the owner
  of each of the len(edges) + 1 pieces of the line between them.
  """
  i, j = np.triu_indices(means.shape[0], 1)
  # q_i - q_j = a w^2 + b w + c.
  a = 0.5 * (lams[j] - lams[i])
  b = lams[i] * means[i] - lams[j] * means[j]
  c = (offsets[i] - offsets[j] - 0.5 * lams[i] * means[i]**2
       + 0.5 * lams[j] * means[j]**2)
  roots = []
  with np.errstate(divide='ignore', invalid='ignore'):
    linear = np.abs(a) <= 1e-12 * (np.abs(lams[i]) + np.abs(lams[j]))
    roots.append(-c[linear] / b[linear])
    a, b, c = a[~linear], b[~linear], c[~linear]
    disc = b * b - 4.0 * a * c
    real = disc >= 0
    a, b, c, disc = a[real], b[real], c[real], disc[real]
    q = -0.5 * (b + np.copysign(np.sqrt(disc), b))  # Stable roots q/a, c/q.
    roots += [q / a, c / q]
  roots = np.concatenate(roots)
  edges = np.unique(roots[np.isfinite(roots)])
  if edges.size:
    span = np.maximum(1.0, np.abs(edges[[0, -1]]))
    samples = np.concatenate([[edges[0] - span[0]],
                              0.5 * (edges[1:] + edges[:-1]),
                              [edges[-1] + span[1]]])
  else:
    samples = np.zeros(1)
  d = samples[:, None] - means
  owners = np.argmax(offsets - 0.5 * lams * d * d, axis=1)
  return edges, owners


def _intervals(edges, inside) -> list[tuple[float, float]]:
  """Maximal intervals of the pieces where `inside` holds."""
  bounds = np.concatenate([[-np.inf], edges, [np.inf]])
  out = []
  for k in np.flatnonzero(inside):
    lo, hi = float(bounds[k]), float(bounds[k + 1])
    if out and out[-1][1] == lo:
      out[-1] = (out[-1][0], hi)
    else:
      out.append((lo, hi))
  return out


def _union(x, y) -> list[tuple[float, float]]:
  out = []
  for lo, hi in sorted(x + y):
    if out and lo <= out[-1][1]:
      out[-1] = (out[-1][0], max(hi, out[-1][1]))
    else:
      out.append((lo, hi))
  return out


def _same_region(x, y, slack=0.0) -> bool:
  """Same intervals, borders within the tolerances plus `slack`."""
  if len(x) != len(y):
    return False
  for u, v in zip(np.ravel(x), np.ravel(y)):
    if abs(u - v) > (_BORDER_ATOL + slack
                     + _BORDER_RTOL * max(abs(u), abs(v))):
      return False
  return True


def _borders(region, window) -> list[float]:
  return [x for iv in region for x in iv if abs(x) < window]


def _fits_through(mean, log_precisions, points, targets):
  """Candidate (log_precision, log_pi) of a component with mean `mean` whose
  log density meets `targets` at `points`, best first.

  With c = log pi + log(lambda) / 2 - log(2 pi) / 2 the log density is
  c - lambda (w - mu)^2 / 2, linear in (c, lambda): two points fix both (the
  exact fit, when lambda > 0). As that fails when the points lie
  symmetrically about the mean, the fits through one point at each of the
  precisions `log_precisions` follow; the caller checks each.
  """
  d2 = (np.asarray(points, np.float64) - mean)**2
  t = np.asarray(targets, np.float64)
  lams = []
  if len(points) == 2 and d2[0] != d2[1]:
    lam = 2.0 * (t[1] - t[0]) / (d2[0] - d2[1])
    if np.isfinite(lam) and lam > 0:
      lams.append((lam, 0))
  if len(points) <= 2:
    lams += [(math.exp(x), a) for x in log_precisions
             for a in range(len(points))]
  for lam, anchor in lams:
    log_lam = math.log(lam)
    if _LOG_PRECISION_RANGE[0] <= log_lam <= _LOG_PRECISION_RANGE[1]:
      c = t[anchor] + 0.5 * lam * d2[anchor]
      log_pi = c - 0.5 * log_lam + _prior_kernel.HALF_LOG_2PI
      if log_pi <= 0.0:  # A proportion above 1 is no refit.
        yield log_lam, log_pi


def _precision_grid(log_precisions, first):
  """`first`, then 13 log-precisions spanning the mixture's, nearest first."""
  lo, hi = np.min(log_precisions) - 1.0, np.max(log_precisions) + 1.0
  return [first] + sorted(np.linspace(lo, hi, 13), key=lambda x: abs(x - first))


class _Merger:
  """The merge loop of `merge_components` (see its docstring)."""

  def __init__(self, mixture, threshold, duplicate_rtol, zero_reach):
    self.like = mixture
    self.zero_reach = zero_reach
    self.threshold = threshold
    self.duplicate_rtol = duplicate_rtol
    k = mixture.num_components
    self.current = _Candidate(_Params(
        np.asarray(mixture.means, np.float64),
        np.asarray(mixture.log_precisions, np.float64),
        np.asarray(mixture.log_mixing_proportions, np.float64),
        tuple(range(k))), mixture)
    self.given = self.current
    self.next_id = k
    # The line is compared on a window far beyond every component.
    c = self.current
    self.window = 10.0 * float(np.max(np.abs(c.means) + c.lams**-0.5))
    self.target = c.region([0], self.window)  # What stays pruned.
    self.rejected = set()
    self.pair_threshold = threshold  # Raised to inf by `cap`.

  def run(self):
    while self.current.means.shape[0] > 2 and (self._join() or self._pair()):
      pass

  def cap(self, max_components: int):
    """Merges the closest allowed pairs, any KL, down to max_components."""
    self.pair_threshold = math.inf
    while (self.current.means.shape[0] > max_components
           and (self._pair() or self._join())):
      pass
    if self.current.means.shape[0] > max_components:
      warnings.warn(
          f'merge_components: {self.current.means.shape[0]} components left '
          f'above max_components={max_components}; every remaining merge '
          'would change which weights are pruned.', stacklevel=3)

  def _sym_kl(self, i, j, c=None):
    c = self.current if c is None else c
    vi, vj = 1.0 / c.lams[i], 1.0 / c.lams[j]
    return 0.5 * (gaussian_kl(c.means[i], vi, c.means[j], vj)
                  + gaussian_kl(c.means[j], vj, c.means[i], vi))

  def _accept(self, params, target, slack=0.0) -> bool:
    candidate = _Candidate(params, self.like)
    if not _same_region(candidate.region([0], self.window), target, slack):
      return False
    self.current, self.target = candidate, target
    return True

  def _new_id(self):
    self.next_id += 1
    return self.next_id - 1

  # Joins into the zero component.

  def _join(self) -> bool:
    c = self.current
    for k in sorted(range(1, c.means.shape[0]),
                    key=lambda k: abs(c.means[k])):
      key = ('join', c.params.ids[k], c.params.ids[0])
      if key in self.rejected:
        continue
      if c.params.ids[k] >= self.like.num_components:
        continue  # Merged components do not join (their weights are mixed).
      # Reach is that of the given mixture: a zero component grown by a
      # join does not draw in the next one.
      zero_std = self.given.lams[0]**-0.5
      if not (abs(c.means[k]) <= self.zero_reach * zero_std or self._sym_kl(
          0, c.params.ids[k], self.given) < self.threshold):
        continue
      if self._try_join(k):
        return True
      self.rejected.add(key)
    return False

  def _try_join(self, k) -> bool:
    c, p = self.current, self.current.params
    target = _union(self.target, c.region([k], self.window))
    keep = np.arange(p.means.shape[0]) != k
    rest = _Params(p.means[keep], p.log_precisions[keep], p.log_pis[keep],
                   tuple(i for i, kept in zip(p.ids, keep) if kept))
    # Its weights move from mu_k to 0, its borders by up to |mu_k|.
    slack = abs(float(c.means[k]))
    if self._accept(rest, target, slack):  # Zero takes it as it is.
      return True
    # Refit the zero component through the borders of the new region.
    points = _borders(target, self.window)
    others = np.flatnonzero(keep)[1:]
    targets = [float(np.max(c.log_density(x)[0, others])) for x in points]
    grid = _precision_grid(p.log_precisions, p.log_precisions[0])
    ids = (self._new_id(),) + rest.ids[1:]
    for fit in _fits_through(0.0, grid, points, targets):
      log_prec, log_pi = (np.array(a) for a in (rest.log_precisions,
                                                rest.log_pis))
      log_prec[0], log_pi[0] = fit[0], fit[1] + c.stored_shift
      if self._accept(rest._replace(log_precisions=log_prec, log_pis=log_pi,
                                    ids=ids), target, slack):
        return True
    return False

  # Pairs of non-zero components.

  def _pairs(self):
    c = self.current
    means = c.means
    found = []
    for i in range(1, means.shape[0]):
      for j in range(i + 1, means.shape[0]):
        gap = abs(means[i] - means[j])
        if gap <= self.duplicate_rtol * max(abs(means[i]), abs(means[j])):
          found.append(((0, gap), i, j))
        else:
          kl = self._sym_kl(i, j)
          if kl < self.pair_threshold:
            found.append(((1, kl), i, j))
    return [(i, j) for _, i, j in sorted(found)]

  def _pair(self) -> bool:
    for i, j in self._pairs():
      ids = self.current.params.ids
      key = ('pair', ids[i], ids[j])
      if key in self.rejected:
        continue
      if self._try_pair(i, j):
        return True
      self.rejected.add(key)
    return False

  def _try_pair(self, i, j) -> bool:
    c, p = self.current, self.current.params
    pis = np.exp(c.log_pis)
    w = pis[i] + pis[j]
    mean = (pis[i] * c.means[i] + pis[j] * c.means[j]) / w
    keep = np.arange(p.means.shape[0]) != j
    ids = list(p.ids)
    ids[i] = self._new_id()
    ids = tuple(x for x, kept in zip(ids, keep) if kept)
    # Borders of the pruned region that i or j holds: the merged component
    # is refitted through them when it moves them.
    points = [x for x, owner in c.borders([0])
              if owner in (i, j) and abs(x) < self.window]
    targets = [float(c.log_density(x)[0, 0]) for x in points]
    # The pi-weighted variance and summed proportion first; then the wider
    # variance, which keeps the tails of the line where the wider component
    # held them, and the larger proportion, which keeps the pair's envelope
    # where it lay (two equal components merge into either of them).
    weighted = (pis[i] / c.lams[i] + pis[j] / c.lams[j]) / w
    wide = 1.0 / min(c.lams[i], c.lams[j])
    for var, pi in ((weighted, w), (wide, w), (weighted, max(pis[i], pis[j])),
                    (wide, max(pis[i], pis[j]))):
      means, log_prec, log_pi = (np.array(a) for a in (
          p.means, p.log_precisions, p.log_pis))
      means[i], log_prec[i] = mean, -math.log(var)
      log_pi[i] = math.log(pi) + c.stored_shift
      merged = _Params(means[keep], log_prec[keep], log_pi[keep], ids)
      first = _Candidate(merged, self.like)
      if _same_region(first.region([0], self.window), self.target):
        self.current = first
        return True
      # Also the borders the merged component would take over.
      extra = [x for x, owner in first.borders([0])
               if owner == i and abs(x) < self.window
               and not any(abs(x - y) <= 1e-9 for y in points)
               and any(abs(x - y) <= _BORDER_ATOL + _BORDER_RTOL * abs(y)
                       for y in _borders(self.target, self.window))]
      fit_points = points + extra
      fit_targets = targets + [float(c.log_density(x)[0, 0]) for x in extra]
      if not fit_points:
        continue
      grid = _precision_grid(p.log_precisions, -math.log(var))
      for fit in _fits_through(mean, grid, fit_points, fit_targets):
        log_prec, log_pi = (np.array(a) for a in (merged.log_precisions,
                                                  merged.log_pis))
        log_prec[i], log_pi[i] = fit[0], fit[1] + c.stored_shift
        if self._accept(merged._replace(log_precisions=log_prec,
                                        log_pis=log_pi), self.target):
          return True
    return False
