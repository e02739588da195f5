"""Gaussian-mixture prior over network weights (soft weight-sharing).

The prior of Ullrich, Meeds & Welling (2017) is a K-component mixture

  p(w) = prod_i sum_k pi_k N(w_i | mu_k, sigma_k^2),

whose component 0 is pinned at mu_0 = 0 (the pruning cluster). The non-zero
means, the log-precisions log(1 / sigma_k^2) and the mixing logits are learned
together with the weights.

`GaussianMixture` is a pytree (a frozen dataclass), so it passes through
`jax.jit`, `jax.grad` and optax. It also remembers which leaves of which
tree it was built for, so a mixture applied to another tree fails with a
clear error instead of silently regularising the wrong weights. The fused
likelihood kernel behind `mixture_log_prob` lives in the private
`gmp_jax._prior_kernel`.

References:
  Ullrich, Meeds & Welling, "Soft Weight-Sharing for Neural Network
  Compression", ICLR 2017. https://arxiv.org/abs/1702.04008
  Nowlan & Hinton, "Simplifying Neural Networks by Soft Weight-Sharing",
  Neural Computation 1992.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmp_jax import _nonparams
from gmp_jax import _prior_kernel
from gmp_jax import filters

# Variances are kept in [VARIANCE_FLOOR, VARIANCE_CEILING] by clipping the
# log-precision; the prior and its gradients stay finite at both ends.
VARIANCE_FLOOR = 1e-8
VARIANCE_CEILING = 1e4
_LOG_PRECISION_MAX = -math.log(VARIANCE_FLOOR)
_LOG_PRECISION_MIN = -math.log(VARIANCE_CEILING)

FilterFn = Callable[[tuple, Any], bool] | str
# (path string, shape, dtype string) for every leaf the prior covers.
Signature = tuple[tuple[str, tuple[int, ...], str], ...]


is_floating = filters.is_floating  # Every floating leaf ('all_floating').


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=('nonzero_means', 'log_precisions', 'mixing_logits'),
    meta_fields=('zero_proportion', 'signature', 'leaf_scales'))
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class GaussianMixture:
  """A Gaussian mixture with component 0 fixed at mean 0.

  A frozen dataclass registered as a pytree. Learned leaves (the pytree
  children):
    nonzero_means: (K-1,) means of components 1..K-1.
    log_precisions: (K,) log(1 / sigma_k^2).
    mixing_logits: (K-1,) when pi_0 is fixed, otherwise (K,).

  Static fields (pytree metadata, keyword-only): `zero_proportion` (the
  fixed pi_0, or None when learned), `signature`, the leaves of the tree
  the mixture was built for, and `leaf_scales`: None (one mixture over the
  weights themselves), or one fixed positive scale s_l per covered leaf in
  signature order, the mixture then being a prior on w / s_l (see
  `init_mixture(leaf_scale=...)` and `mixture_log_prob`). The means,
  variances and everything derived from them are then in these normalised
  units; weight l's values are s_l mu_k.

  Derived views: `means`, `variances`, `precisions`, `mixing_proportions`
  and `log_mixing_proportions`, all of shape (K,); index 0 is the zero
  component, `means[0] == 0` exactly and the proportions sum to 1.
  `replace(**fields)` returns a copy with fields changed.

  No validation happens on construction: jax rebuilds the class with
  arbitrary leaves (tracers, optax labels, None). Equality and hashing are
  by identity, as the leaves are arrays.
  """
  nonzero_means: Any
  log_precisions: Any
  mixing_logits: Any
  zero_proportion: float | None = dataclasses.field(
      default=None, kw_only=True, metadata={'static': True})
  signature: Signature = dataclasses.field(
      default=(), kw_only=True, metadata={'static': True})
  leaf_scales: tuple[float, ...] | None = dataclasses.field(
      default=None, kw_only=True, metadata={'static': True})

  def replace(self, **fields) -> GaussianMixture:
    return dataclasses.replace(self, **fields)

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
            f'covered_leaves={len(self.signature)}'
            + ('' if self.leaf_scales is None else
               f', leaf_scales={self.leaf_scales}') + ')')


# ----------------------------------------------------------------------------
# Leaf selection
# ----------------------------------------------------------------------------


def _path_str(path) -> str:
  return jax.tree_util.keystr(path)


def select_leaves(params, filter_fn: FilterFn | None = None):
  """Returns [(path_str, leaf)] of the leaves chosen by `filter_fn`.

  Raises:
    TypeError: a leaf chosen by a custom filter is not floating point.
    ValueError: no leaf is chosen, or a chosen leaf is model state (BatchNorm
      statistics, an RNG key or counter), not a parameter.
  """
  fn = filters.resolve(filter_fn)
  chosen = []
  state_leaves = _nonparams.non_parameter_leaves(params)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not fn(path, leaf):
      continue
    if _path_str(path) in state_leaves:
      raise ValueError(
          f'Leaf {_path_str(path)} was chosen by the filter but is model '
          f'state ({state_leaves[_path_str(path)]}), not a parameter; the '
          'mixture prior covers parameters only. Pass the parameters alone '
          "(Linen: variables['params']; NNX: nnx.state(model, nnx.Param)) "
          'or a filter that leaves it out.')
    dtype = getattr(leaf, 'dtype', None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f'Leaf {_path_str(path)} was chosen by the filter but has dtype '
          f'{dtype}; the mixture prior applies only to floating-point leaves.')
    chosen.append((_path_str(path), leaf))
  if not chosen:
    leaves = jax.tree_util.tree_leaves(params)
    floating = sum(is_floating((), x) for x in leaves)
    name = (f'the {filters.DEFAULT!r} default filter' if filter_fn is None
            else f'filter {filter_fn!r}' if isinstance(filter_fn, str)
            else 'the filter')
    raise ValueError(
        f'The parameter tree has no compressible leaves: {name} chose none '
        f'of its {len(leaves)} leaves ({floating} floating-point). Check '
        'filter_fn: a name in gmp_jax.filters.FILTERS, or a function called '
        'as filter_fn(path, leaf), path a tuple of jax key entries '
        '(jax.tree_util.keystr(path) gives "[\'dense\'][\'kernel\']").')
  return chosen


def check_mixture_shapes(mixture: GaussianMixture) -> None:
  """Raises a ValueError naming the problem unless the fields fit together.

  A K-component mixture holds `nonzero_means` of shape (K-1,),
  `log_precisions` of shape (K,) and `mixing_logits` of shape (K-1,) with a
  fixed pi_0 or (K,) with a learned one, K >= 2, and `leaf_scales`, when
  given, one entry per covered leaf. Fields without a shape (tracers carry
  one; optax labels do not) are not checked.
  """
  if not isinstance(mixture, GaussianMixture):
    raise TypeError(
        f'Expected a GaussianMixture, got {type(mixture).__name__}.')
  scales = mixture.leaf_scales
  if scales is not None and len(scales) != len(mixture.signature):
    raise ValueError(
        f'The mixture has {len(scales)} leaf_scales for '
        f'{len(mixture.signature)} covered leaves; it needs one per leaf, '
        'in signature order.')
  fields = {name: getattr(mixture, name) for name in
            ('nonzero_means', 'log_precisions', 'mixing_logits')}
  if not all(hasattr(x, 'shape') for x in fields.values()):
    return
  shapes = {name: tuple(x.shape) for name, x in fields.items()}
  got = ', '.join(f'{name} {shape}' for name, shape in shapes.items())
  if any(len(shape) != 1 for shape in shapes.values()):
    raise ValueError(f'The mixture fields must be 1-d arrays; got {got}.')
  k = shapes['log_precisions'][0]
  fixed = mixture.zero_proportion is not None
  logits = k - 1 if fixed else k
  if k < 2 or shapes['nonzero_means'][0] != k - 1 or (
      shapes['mixing_logits'][0] != logits):
    raise ValueError(
        f'The mixture fields do not fit together: {got}. A K-component '
        f'mixture (K >= 2) with a {"fixed" if fixed else "learned"} pi_0 '
        'needs nonzero_means (K-1,), log_precisions (K,) and mixing_logits '
        f'({"K-1" if fixed else "K"},).')


def mixture_leaves(params, mixture: GaussianMixture) -> list[jax.Array]:
  """The leaves of `params` that `mixture` covers, in signature order.

  Raises:
    ValueError: `params` is not the tree the mixture was built for, or the
      mixture's fields have inconsistent shapes (`check_mixture_shapes`).
  """
  check_mixture_shapes(mixture)
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
                 init_std: float | None = None,
                 zero_proportion: float | None = None,
                 learn_zero_proportion: bool | None = None,
                 means_range: tuple[float, float] | None = None,
                 leaf_scale: str | Sequence[float] | None = 'rms',
                 scale_groups: (Mapping[str, str]
                                | Sequence[tuple[str, str]] | None) = None,
                 dtype=jnp.float32) -> GaussianMixture:
  r"""Initialises a mixture prior from the covered weights' own statistics.

  Every default is scale-free, so it transfers from a LeNet's weights to a
  transformer's. The prior is on :math:`w / s_l`, with a fixed scale per
  covered leaf l (`leaf_scale='rms'`),

  .. math::

    s_l = \sqrt{\tfrac{1}{n_l} \textstyle\sum_{i \in l} w_i^2},

  the root mean square about 0 (not the standard deviation: the zero
  component sits at 0, so a leaf's offset from 0 is part of its scale; not a
  median |w|, which is 0 for a half-pruned leaf). One mixture in weight
  units (`leaf_scale=None`) fails when the leaves' scales differ: its
  spacing is set by the widest leaf, and a leaf of small weights falls whole
  into the zero component (a CNN's dense layer beside its convolutions).
  Then, on the normalised weights pooled over leaves:

  * the K-1 non-zero means are spread evenly over :math:`\pm q`, q the
    99.9% quantile of :math:`|w / s_l|` (with `leaf_scale=None`, over the
    weights' range, :math:`\mathrm{linspace}(\min w, \max w, K - 1)`), or
    over `means_range`: with every leaf at unit RMS, a few outliers of one
    leaf would otherwise set the spacing for all, and a symmetric range puts
    no mean closer to 0 than half the spacing :math:`\Delta`;
  * every component starts with standard deviation `init_std`, by default
    :math:`\Delta / 2`: the 1-sigma intervals of neighbouring means touch;
  * the mixing proportions, the zero component's included, start at the
    fraction of the covered weights nearest to each mean (0 included),
    :math:`\pi_k = (n_k + 1) / (n + K)`, and are learned. So quantising
    the trained model with the initial mixture prunes about the weights
    nearest to zero, not all of them.

  `scale_groups` lets chosen leaves share one scale (with 'rms' only): each
  covered leaf joins the first group whose regex matches its path, and a
  group g's scale is the RMS of its leaves' weights pooled,

  .. math::

    s_g = \sqrt{\textstyle\sum_{l \in g} \sum_{i \in l} w_i^2
                 \,/\, \sum_{l \in g} n_l},

  every leaf of g then using s_g. A leaf no group matches keeps its own s_l.

  Giving `zero_proportion` fixes pi_0, the non-zero components sharing
  1 - pi_0 equally. The published recipe (Ullrich et al. 2017; their
  tutorial used K=17, sigma=0.25, pi_0=0.99 fixed) is
  `init_mixture(params, 17, leaf_scale=None, init_std=0.25,
  zero_proportion=0.99)`, as `experiments/configs/mnist.py` pins.

  Args:
    params: any pytree of arrays, e.g. Flax Linen `params` or NNX state.
    num_components: K >= 2, including the zero component.
    filter_fn: the covered leaves: a name in `gmp_jax.filters.FILTERS`
      (default ``'no_norm'``: every floating leaf outside normalisation
      layers) or `(path, leaf) -> bool`.
    init_std: initial standard deviation of every component; None: half the
      spacing of the means.
    zero_proportion: None: every proportion from the weights (see above);
      else pi_0, the non-zero components sharing the rest equally.
    learn_zero_proportion: learn pi_0 with the other proportions. None: True
      when `zero_proportion` is None, else False (pi_0 fixed).
    means_range: `(low, high)` for the non-zero means instead of the weights'
      range (in normalised units with `leaf_scale`).
    leaf_scale: 'rms' (default): the prior on w / s_l with s_l each covered
      leaf's root mean square; an empty or all-zero leaf (a bias at its
      initial zeros) has none and takes the pooled RMS of the other covered
      weights (1 if every one is zero). None: one mixture over the weights
      themselves, as the published recipe. Or a sequence of positive floats,
      one s_l per covered leaf in signature order (e.g. a saved
      `mixture.leaf_scales`).
      The scales are fixed: stored in `leaf_scales`, never learned.
    scale_groups: with `leaf_scale='rms'`, groups of leaves that share one
      scale (pooled RMS, above): an ordered mapping ``{name: regex}`` or a
      sequence of ``(name, regex)`` pairs, e.g. ``{'conv': r'conv',
      'dense': r'Dense_\d+'}``. A regex is matched with `re.search` against
      a leaf's path as `mixture.signature` shows it
      (`jax.tree_util.keystr`, e.g. ``"['Dense_0']['kernel']"``); a leaf
      joins the first group that matches, and a leaf no group matches keeps
      its own RMS. None: every leaf its own scale.
    dtype: dtype of the mixture parameters.

  Returns:
    A `GaussianMixture` bound to the chosen leaves of `params`.

  Raises:
    ValueError: bad K, std or pi_0, no compressible leaves, NaN/inf
      weights, or with `leaf_scale` an unknown name, a sequence of the wrong
      length or with a non-positive or non-finite entry, or `scale_groups` without `leaf_scale='rms'`, with an empty name, a
      regex that is no string or does not compile, a group that gets no
      covered leaf, or one whose pooled weights are all zero.
    TypeError: a custom filter chose an integer leaf.
  """
  if (not isinstance(num_components, (int, np.integer))
      or isinstance(num_components, bool) or num_components < 2):
    raise ValueError(
        f'num_components must be an integer >= 2 (the zero component plus at '
        f'least one other), got {num_components!r}.')
  if init_std is not None and not init_std > 0:
    raise ValueError(f'init_std must be > 0 or None, got {init_std!r}.')
  if zero_proportion is not None and not 0.0 < zero_proportion < 1.0:
    raise ValueError(
        f'zero_proportion must lie in (0, 1) or be None, got '
        f'{zero_proportion!r}.')
  if learn_zero_proportion is None:
    learn_zero_proportion = zero_proportion is None
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
  if scale_groups is not None and not (isinstance(leaf_scale, str)
                                       and leaf_scale == 'rms'):
    raise ValueError(
        f"scale_groups needs leaf_scale='rms' (the groups' scales are pooled "
        f'RMS), got leaf_scale={leaf_scale!r}; give explicit per-leaf floats '
        'without scale_groups instead.')
  scales = None
  if leaf_scale is not None:
    scales = _leaf_scales(chosen, leaf_scale, scale_groups)
    low, high = _normalised_range(chosen, scales)
  if means_range is not None:
    low, high = means_range
  elif not np.isfinite(low):  # Only empty leaves.
    low, high = -1.0, 1.0
  if low == high:
    pad = init_std or max(abs(float(low)), 1.0) * 0.5
    low, high = low - pad, high + pad
  num_nonzero = num_components - 1
  if num_nonzero == 1:
    means = np.array([high if abs(high) >= abs(low) else low])
    spacing = float(abs(means[0]))
  else:
    means = np.linspace(low, high, num_nonzero)
    spacing = float(high - low) / (num_nonzero - 1)
  if init_std is None:
    init_std = max(spacing / 2.0, math.sqrt(VARIANCE_FLOOR))
  log_precisions = np.full(num_components, -2.0 * math.log(init_std))
  if zero_proportion is None:
    counts = _nearest_counts(chosen, np.concatenate([[0.0], means]), scales)
    proportions = (counts + 1.0) / (counts.sum() + num_components)
    zero = float(proportions[0])
    rest = proportions[1:] / proportions[1:].sum()
  else:
    zero = float(zero_proportion)
    rest = np.full(num_nonzero, 1.0 / num_nonzero)
  if learn_zero_proportion:
    logits = np.log(np.concatenate([[zero], (1.0 - zero) * rest]))
    fixed = None
  else:
    # Equal shares as zero logits, the published recipe's exact values.
    logits = (np.zeros(num_nonzero) if zero_proportion is not None
              else np.log(rest))
    fixed = zero
  return GaussianMixture(
      jnp.asarray(means, dtype), jnp.asarray(log_precisions, dtype),
      jnp.asarray(logits, dtype), zero_proportion=fixed,
      signature=tuple((p, tuple(leaf.shape), str(leaf.dtype))
                      for p, leaf in chosen),
      leaf_scales=scales)


LEAF_SCALES = ('rms',)  # The names `init_mixture(leaf_scale=...)` accepts.
# The means span +-(this quantile of the pooled |w / s_l|).
_SCALED_RANGE_QUANTILE = 0.999
# The quantiles are read from at most this many weights (an even stride).
_RANGE_SAMPLE = 1 << 24


def _group_of_leaf(chosen, scale_groups) -> tuple[list[str], list]:
  """(group names, each chosen leaf's group index or None): first match."""
  items = (list(scale_groups.items()) if isinstance(scale_groups, Mapping)
           else None if isinstance(scale_groups, (str, bytes))
           else list(scale_groups))
  if items is None or not all(isinstance(x, (tuple, list)) and len(x) == 2
                              for x in items):
    raise ValueError(
        'scale_groups must be a mapping {name: regex} or a sequence of '
        f'(name, regex) pairs, got {scale_groups!r}.')
  names, patterns = [], []
  for name, regex in items:
    if not isinstance(name, str) or not name:
      raise ValueError(f'scale_groups: group name {name!r} (regex {regex!r}) '
                       'must be a non-empty string.')
    if name in names:
      raise ValueError(f'scale_groups: group name {name!r} appears twice.')
    if not isinstance(regex, str):
      raise ValueError(f'scale_groups: group {name!r} has regex {regex!r} of '
                       f'type {type(regex).__name__}; give a string.')
    try:
      patterns.append(re.compile(regex))
    except re.error as e:
      raise ValueError(f'scale_groups: group {name!r} has an invalid regex '
                       f'{regex!r}: {e}.') from e
    names.append(name)
  paths = [path for path, _ in chosen]
  groups = [next((g for g, p in enumerate(patterns) if p.search(path)), None)
            for path in paths]
  for g, (name, pattern) in enumerate(zip(names, patterns)):
    if g in groups:
      continue
    earlier = [names[groups[i]] for i, path in enumerate(paths)
               if pattern.search(path)]
    if earlier:
      raise ValueError(
          f'scale_groups: group {name!r} (regex {pattern.pattern!r}) gets no '
          f'leaf: every covered leaf it matches is taken by an earlier group '
          f'({", ".join(repr(x) for x in dict.fromkeys(earlier))}); a leaf '
          'joins the first group that matches.')
    shown = ', '.join(paths[:5]) + (', ...' if len(paths) > 5 else '')
    raise ValueError(
        f'scale_groups: group {name!r} (regex {pattern.pattern!r}) matches '
        f'no covered leaf; the {len(paths)} covered leaves are {shown} (the '
        'regex is matched with re.search against these path strings).')
  return names, groups


def _leaf_scales(chosen, leaf_scale, scale_groups=None) -> tuple[float, ...]:
  """One positive scale s_l per chosen leaf (see `init_mixture`)."""
  if isinstance(leaf_scale, str):
    if leaf_scale not in LEAF_SCALES:
      raise ValueError(f'leaf_scale must be None, one of {LEAF_SCALES} or '
                       f'one float per covered leaf, got {leaf_scale!r}.')
    names, groups = ([], [None] * len(chosen)) if scale_groups is None else (
        _group_of_leaf(chosen, scale_groups))
    # Pooled sum of w^2 and count of each group, float64.
    sums, counts = [0.0] * len(names), [0] * len(names)
    for (_, leaf), g in zip(chosen, groups):
      if g is not None:
        values = np.ravel(np.asarray(leaf, np.float32))
        sums[g] += float(np.sum(np.square(values, dtype=np.float64)))
        counts[g] += values.size
    pooled = []
    for name, total, n in zip(names, sums, counts):
      if n and total == 0.0:
        raise ValueError(
            f'scale_groups: every weight of group {name!r} is zero, so its '
            'pooled RMS is zero and it has no scale; leave its leaves out '
            'with filter_fn or out of the group.')
      pooled.append(math.sqrt(total / n) if n else 1.0)
    scales = []
    for (path, leaf), g in zip(chosen, groups):
      if g is not None:
        scales.append(pooled[g])
        continue
      values = np.ravel(np.asarray(leaf, np.float32))
      scales.append(
          math.sqrt(float(np.mean(np.square(values, dtype=np.float64))))
          if values.size else None)
    # An empty or all-zero leaf (a bias at its initial zeros) has no scale of
    # its own: it takes the RMS of every other covered weight, pooled.
    sum_sq = sum(s * s * np.size(leaf) for s, (_, leaf) in zip(scales, chosen)
                 if s)
    count = sum(np.size(leaf) for s, (_, leaf) in zip(scales, chosen) if s)
    fallback = math.sqrt(sum_sq / count) if count else 1.0
    return tuple(s if s else fallback for s in scales)
  scales = tuple(float(x) for x in leaf_scale)
  if len(scales) != len(chosen):
    raise ValueError(f'leaf_scale has {len(scales)} entries for '
                     f'{len(chosen)} covered leaves; give one per leaf.')
  for (path, _), x in zip(chosen, scales):
    if not (math.isfinite(x) and x > 0):
      raise ValueError(f'leaf_scale for leaf {path} must be finite and > 0, '
                       f'got {x!r}.')
  return scales


def _normalised_range(chosen, scales) -> tuple[float, float]:
  """+-(a quantile of the pooled |w / s_l|); (inf, -inf) if empty."""
  total = sum(int(np.size(leaf)) for _, leaf in chosen)
  if not total:
    return np.inf, -np.inf
  stride = -(-total // _RANGE_SAMPLE)
  pooled = np.concatenate([
      np.abs(np.ravel(np.asarray(leaf, np.float32))[::stride]
             * np.float32(1.0 / s)) for (_, leaf), s in zip(chosen, scales)])
  high = float(np.quantile(pooled, _SCALED_RANGE_QUANTILE))
  return -high, high


def _nearest_counts(chosen, centres: np.ndarray, scales=None) -> np.ndarray:
  """How many covered weights (w / s_l with scales) lie nearest to each
  centre (float64)."""
  order = np.argsort(centres)
  ordered = centres[order]
  bounds = (ordered[1:] + ordered[:-1]) / 2.0
  counts = np.zeros(len(centres))
  for i, (_, leaf) in enumerate(chosen):
    values = np.ravel(np.asarray(leaf, np.float32))
    if scales is not None:
      values = values * np.float32(1.0 / scales[i])
    if values.size:
      counts[order] += np.bincount(np.searchsorted(bounds, values),
                                   minlength=len(centres))
  return counts


# ----------------------------------------------------------------------------
# Log-likelihood
# ----------------------------------------------------------------------------


def component_log_density(w: jax.Array, mixture: GaussianMixture, *,
                          dtype=None) -> jax.Array:
  """log pi_k + log N(w | mu_k, sigma_k^2) of every weight and component.

  .. math::

    \\log \\pi_k + \\tfrac12 \\log \\lambda_k - \\tfrac12 \\log 2\\pi
    - \\tfrac12 \\lambda_k (w - \\mu_k)^2, \\qquad \\lambda_k = 1 / \\sigma_k^2

  A dense (w.size x K) computation, for assignments (`gmp_jax.quantize`);
  the training loss goes through the fused kernel of `mixture_log_prob`.

  Args:
    w: weights of any shape.
    mixture: the mixture.
    dtype: compute dtype; default the widest of w's, the mixture's and
      float32.

  Returns:
    An array of shape `w.shape + (K,)`.
  """
  if dtype is None:
    dtype = _prior_kernel.compute_dtype(w.dtype, mixture.means.dtype)
  # (K,) constants shaped to broadcast against w[..., None] explicitly.
  k_shape = (1,) * jnp.ndim(w) + (mixture.num_components,)
  lam = mixture.precisions.astype(dtype).reshape(k_shape)
  log_pi = mixture.log_mixing_proportions.astype(dtype).reshape(k_shape)
  d = w.astype(dtype)[..., None] - mixture.means.astype(dtype).reshape(k_shape)
  return (log_pi + 0.5 * jnp.log(lam) - _prior_kernel.HALF_LOG_2PI
          - 0.5 * lam * d * d)


def mixture_log_prob(params, mixture: GaussianMixture) -> jax.Array:
  """Log-likelihood of the covered weights under the mixture prior.

  .. math::

    \\log p(w) = \\sum_i \\log \\sum_{k=0}^{K-1} \\pi_k
                 \\mathcal{N}(w_i \\mid \\mu_k, \\sigma_k^2)

  summed over every weight of every leaf the mixture covers. With
  `leaf_scales` it is the density of the weights when w / s_l follows the
  mixture, for the fixed scale s_l of each covered leaf l:

  .. math::

    \\log p(w) = \\sum_l \\sum_{i \\in l} \\Big[\\log \\sum_k \\pi_k
                 \\mathcal{N}(w_i / s_l \\mid \\mu_k, \\sigma_k^2)
                 - \\log s_l\\Big]

  The kernel sees w * (1 / s_l), so autodiff gives the weights' gradient
  the chain rule's factor 1 / s_l; the constant -n_l log s_l changes no
  gradient. The forward
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
    ValueError: `params` is not the tree the mixture was built for, or the
      mixture's fields have inconsistent shapes.
  """
  check_mixture_shapes(mixture)
  dtype = _prior_kernel.compute_dtype(mixture.log_precisions.dtype)
  means = mixture.means.astype(dtype)
  precisions = mixture.precisions.astype(dtype)
  log_pi = mixture.log_mixing_proportions.astype(dtype)
  leaves = mixture_leaves(params, mixture)
  offset = 0.0
  if mixture.leaf_scales is not None:
    scaled = []
    for w, s in zip(leaves, mixture.leaf_scales):
      wdtype = _prior_kernel.compute_dtype(w.dtype, dtype)
      scaled.append(w.astype(wdtype) * jnp.asarray(1.0 / s, wdtype))
      offset -= w.size * math.log(s)
    leaves = scaled
  leaves = tuple(leaf for leaf in leaves if leaf.size)
  if not leaves:
    return jnp.zeros((), dtype)
  total = _prior_kernel.leaves_log_prob(leaves, means, precisions, log_pi)
  return total if offset == 0.0 else total + jnp.asarray(offset, dtype)


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
  dtype = _prior_kernel.compute_dtype(mixture.log_precisions.dtype)
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
