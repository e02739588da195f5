"""Fine-tuning after quantisation, mask fixed: two modes, one state API.

Codebook mode trains the shared values alone, the assignment fixed;
straight-through mode also trains a latent float per kept weight, which
reads its nearest shared value. Each mode has a state (`CodebookState`,
`StraightThroughState`), a `create_*_state`, and a `make_*_step` taking
`loss=LossOptions(...)`; `state.quantized_params()` gives either state's
params tree.

Codebook mode
-------------

After quantisation every covered weight is one entry of a small codebook,

  w_i = c[a_i],   c = (0, c_1, ..., c_K),   a_i in {0, ..., K},

where a_i = 0 marks a pruned weight and c_0 = 0 is a constant, not a
parameter. With the assignment a fixed, the loss is a function of the K
shared values alone and, by the chain rule,

  dL/dc_k = sum_{i : a_i = k} dL/dw_i,

the sum of the gradients of the weights that share value k. Writing the
expansion as a gather (`expand_codebook`) makes `jax.grad` with respect to
the codebook compute exactly this sum (the gather's transpose is a
scatter-add). Pruned weights read the constant c_0 and stay exactly zero,
every fine-tuned tree has the same zero pattern and at most K distinct
non-zero values, and the compressed file keeps its position and index
streams: only the K codebook values change.

The functions follow the library's constructor style:

>>> codebook, indices, mask = codebook_from_quantized(quantized)
>>> state = create_codebook_state(codebook, indices, optax.adam(1e-4),
...                               frozen=quantized)
>>> step = compile_step(make_codebook_step(apply_fn, optax.adam(1e-4)))
>>> state, metrics = step(state, {'x': x, 'teacher_logits': t})
>>> params = state.quantized_params()

Reference: Han, Mao & Dally, "Deep Compression", ICLR 2016, section 3.3
(centroid fine-tuning by summed gradients); Ullrich, Meeds & Welling, ICLR
2017 (the quantised mixture whose means form the codebook).

Straight-through mode
---------------------

Codebook fine-tuning keeps every weight's cluster. Here the pruning mask m
stays fixed but each kept weight keeps a latent float w_i and reads the
nearest shared value,

  q_i = m_i c[a_i],   a_i = argmin_k |w_i - c_k|,

so a weight whose latent value crosses the midpoint between two shared
values changes cluster. The forward pass uses q; the backward pass treats
the assignment a as constant (the straight-through estimator):

  dL/dw_i = m_i dL/dq_i,   dL/dc_k = sum_{i : a_i = k} dL/dq_i.

Pruned weights read a constant zero and get no gradient, so the zero pattern
(and the file's position stream) is unchanged; every tree has at most K
distinct non-zero values per codebook. The codebook is either one (K,)
array shared by all coded leaves, or a tree like the params with one (K,)
array per coded leaf (each layer's values train apart).

>>> codebook, _, mask = codebook_from_quantized(quantized)
>>> latent = masked_latent(retrained, mask)
>>> state = create_straight_through_state(latent, codebook, mask,
...                                       optax.adam(1e-4), frozen=quantized)
>>> step = compile_step(make_straight_through_step(apply_fn, optax.adam(1e-4)))
>>> state, metrics = step(state, {'x': x, 'teacher_logits': t})
>>> params = state.quantized_params()

Reference: Bengio, Leonard & Courville, "Estimating or propagating
gradients through stochastic neurons", 2013 (straight-through estimator);
Courbariaux, Bengio & David, "BinaryConnect", NeurIPS 2015 (latent float
weights behind quantised ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmp_jax import losses
from gmp_jax import optim
from gmp_jax import prior as prior_lib

Batch = losses.Batch
DataLossFn = losses.DataLossFn

# A quantised tree has a handful of distinct values; more than this many
# means the tree was not quantised (e.g. the retrained weights were passed).
DEFAULT_MAX_CODEBOOK = 4096


class CodebookState(NamedTuple):
  """Everything a codebook step reads; a pytree, so it checkpoints as is.

  Attributes:
    step: number of steps taken.
    codebook: (K,) the shared non-zero values c_1..c_K (trained).
    opt_state: the optimiser state of `codebook`.
    indices: tree like the params; int32 arrays a_i in {0..K} (0 = pruned)
      for the coded leaves, None for the others (fixed).
    frozen: tree like the params; the leaves that are not coded (returned
      unchanged by `expand_codebook`), None for the coded ones.
  """
  step: jax.Array
  codebook: jax.Array
  opt_state: optax.OptState
  indices: Any
  frozen: Any

  def quantized_params(self):
    """The params tree: `expand_codebook(codebook, indices, frozen)`."""
    return expand_codebook(self.codebook, self.indices, self.frozen)


def _is_none(x) -> bool:
  return x is None


def _covered_paths(params, mixture, filter_fn=None) -> set[str]:
  if mixture is None:
    return {p for p, _ in prior_lib.select_leaves(params, filter_fn)}
  prior_lib.mixture_leaves(params, mixture)  # Validates the pairing.
  return {p for p, _, _ in mixture.signature}


def codebook_from_quantized(params, mixture=None, *, filter_fn=None,
                            max_size: int = DEFAULT_MAX_CODEBOOK,
                            per_leaf: bool | None = None):
  """Splits a quantised tree into a codebook, assignments and a mask.

  Args:
    params: a quantised tree (from `gmp_jax.quantize`, or loaded from a
      compressed file). Exact zeros are pruned weights.
    mixture: optional; the (merged) `GaussianMixture` used to quantise. If
      given, its leaves are the coded ones and (without `leaf_scales`; with
      them, the distinct values as below) the codebook is its K-1
      non-zero means in the leaves' dtype (entries no weight uses stay in
      the codebook and get zero gradient); every non-zero weight must equal
      one of them. Without it, the leaves `filter_fn` chooses are coded
      and the codebook is the sorted distinct non-zero values of those
      leaves.
    filter_fn: without a mixture, the coded leaves: the `filter_fn` the
      mixture was made with (`init_mixture`'s; default ``'no_norm'``), so
      leaves the prior did not cover stay as they are. Not with `mixture`,
      whose leaves are the coded ones.
    max_size: the largest codebook accepted (per leaf with `per_leaf`).
    per_leaf: for a tree quantised leaf by leaf (a mixture with per-leaf
      scales, `init_mixture`'s default, whose leaves hold their own values
      s_l mu_k, or per-leaf k-means): each coded leaf gets its own sorted distinct
      non-zero values as its codebook, so straight-through fine-tuning
      (`create_straight_through_state`, which takes the tree) snaps its
      weights to its own values only. A shared codebook would be the union
      of every leaf's values, and a weight could move to another leaf's.
      A coded leaf with no non-zero weight is then left uncoded (None).
      None (default): True when `mixture` has `leaf_scales`, else False.

  Returns:
    `(codebook, indices, mask)`: `codebook` a (K,) array of the shared
    non-zero values in the leaves' dtype (with `per_leaf`, a tree like
    `params` with one such array per coded leaf, None elsewhere);
    `indices` a tree like `params` with int32 arrays a_i (0 = pruned,
    k = `codebook[k - 1]`, the leaf's own codebook with `per_leaf`) for
    coded leaves and None elsewhere; `mask` the same with booleans
    `a_i != 0` (True = kept). Without `per_leaf`,
    `expand_codebook(codebook, indices, params)` gives back `params` bit
    for bit (a pruned -0.0 comes back as +0.0).

  Raises:
    ValueError: coded leaves of different dtypes, non-finite or
      unquantised values (more than `max_size` distinct), or non-zero
      weights that match no mixture mean.
    TypeError: from the mixture's leaf selection.
  """
  if not max_size >= 1:
    raise ValueError(f'max_size must be >= 1, got {max_size!r}.')
  if per_leaf is None:
    per_leaf = mixture is not None and mixture.leaf_scales is not None
  if mixture is not None and filter_fn is not None:
    raise ValueError('Pass a mixture or a filter_fn, not both: the '
                     "mixture's leaves are the coded ones.")
  covered = _covered_paths(params, mixture, filter_fn)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  coded = [(jax.tree_util.keystr(p), leaf) for p, leaf in flat
           if jax.tree_util.keystr(p) in covered]
  dtypes = {np.dtype(leaf.dtype) for _, leaf in coded}
  if len(dtypes) != 1 and not per_leaf:
    raise ValueError('The coded leaves must share one dtype to share a '
                     f'codebook; got {sorted(map(str, dtypes))}.')
  host = {p: np.asarray(jax.device_get(leaf)) for p, leaf in coded}
  for p, x in host.items():
    if not np.all(np.isfinite(x.astype(np.float32))):
      raise ValueError(f'Leaf {p} has non-finite values; expected a '
                       'quantised tree.')
  if per_leaf:
    return _leaf_codebooks(flat, treedef, host, max_size)
  dtype = dtypes.pop()
  nonzero = [x[x != 0] for x in host.values()]
  if mixture is None or mixture.leaf_scales is not None:
    # Per-leaf scales give each leaf its own values s_l mu_k: the codebook is
    # then the distinct values (the mixture still picks the leaves).
    codebook = np.unique(np.concatenate([v.ravel() for v in nonzero]))
  else:
    codebook = np.asarray(mixture.means[1:]).astype(dtype)
  if codebook.size > max_size:
    raise ValueError(
        f'{codebook.size} distinct non-zero values exceed max_size='
        f'{max_size}; pass a quantised tree (gmp_jax.quantize).')
  if codebook.size == 0:
    raise ValueError('Every coded weight is zero; nothing to fine-tune.')
  order = np.argsort(codebook, kind='stable')
  sorted_cb = codebook[order]

  def index_of(p, x):
    pos = np.minimum(np.searchsorted(sorted_cb, x), sorted_cb.size - 1)
    idx = np.where(x != 0, order[pos] + 1, 0).astype(np.int32)
    bad = (x != 0) & (sorted_cb[pos] != x)
    if np.any(bad):
      raise ValueError(
          f'Leaf {p} has {int(bad.sum())} non-zero weights equal to no '
          f'codebook value, e.g. {x[bad].ravel()[0]!r}; pass the tree '
          'quantised with this mixture.')
    return idx

  leaves = []
  for path, _ in flat:
    name = jax.tree_util.keystr(path)
    leaves.append(index_of(name, host[name]) if name in host else None)
  indices = jax.tree_util.tree_unflatten(
      treedef, [None if i is None else jnp.asarray(i) for i in leaves])
  mask = jax.tree.map(lambda i: None if i is None else i != 0, indices,
                      is_leaf=_is_none)
  return jnp.asarray(codebook), indices, mask


def _leaf_codebooks(flat, treedef, host, max_size: int):
  """`codebook_from_quantized(..., per_leaf=True)` of the checked leaves."""
  codebooks, indices = [None] * len(flat), [None] * len(flat)
  for i, (path, _) in enumerate(flat):
    x = host.get(jax.tree_util.keystr(path))
    if x is None or not np.any(x != 0):
      continue
    values = np.unique(x[x != 0])
    if values.size > max_size:
      raise ValueError(
          f'Leaf {jax.tree_util.keystr(path)} has {values.size} distinct '
          f'non-zero values, more than max_size={max_size}; pass a '
          'quantised tree (gmp_jax.quantize).')
    index = np.searchsorted(values, x) + 1
    codebooks[i] = jnp.asarray(values)
    indices[i] = jnp.asarray(np.where(x != 0, index, 0).astype(np.int32))
  if all(c is None for c in codebooks):
    raise ValueError('Every coded weight is zero; nothing to fine-tune.')
  indices = jax.tree_util.tree_unflatten(treedef, indices)
  mask = jax.tree.map(lambda i: None if i is None else i != 0, indices,
                      is_leaf=_is_none)
  return jax.tree_util.tree_unflatten(treedef, codebooks), indices, mask


def tiled_per_leaf_codebook(codebook: jax.Array, indices):
  """One copy of the codebook per coded leaf, tiled into one array.

  For codebook fine-tuning (`create_codebook_state`); the straight-through
  peer is `per_leaf_codebook_tree`. The values of the
  copies train apart.

  Leaf l (in tree order) of L coded leaves reads entries
  `l * K + 1 .. (l + 1) * K` of the returned (L K,) codebook, each starting
  at the shared value. `expand_codebook` of the result gives the same tree;
  fine-tuned, the gradient of entry l K + k sums over leaf l's weights
  assigned to k only, so each layer gets its own K values (the file then
  stores up to L K values instead of K).

  Args:
    codebook: (K,) shared values (`codebook_from_quantized`).
    indices: the tree of assignments (0 = pruned).

  Returns:
    `(codebook, indices)`: the (L K,) codebook and the re-numbered
    assignments (pruned weights stay 0).
  """
  _check_codebook(codebook)
  k = int(jnp.shape(codebook)[0])
  leaves, treedef = jax.tree.flatten(indices, is_leaf=_is_none)
  coded = [i for i, leaf in enumerate(leaves) if leaf is not None]
  out = list(leaves)
  for copy, i in enumerate(coded):
    out[i] = jnp.where(leaves[i] != 0, leaves[i] + copy * k, 0
                       ).astype(jnp.int32)
  return (jnp.tile(codebook, len(coded)),
          jax.tree.unflatten(treedef, out))


def _check_codebook(codebook) -> None:
  if jnp.ndim(codebook) != 1:
    raise ValueError(f'codebook must be 1-D, got shape {jnp.shape(codebook)}.')
  if not jnp.issubdtype(jnp.result_type(codebook), jnp.floating):
    raise TypeError(f'codebook must be floating, got {jnp.result_type(codebook)}.')


def expand_codebook(codebook: jax.Array, indices, frozen=None):
  """The parameter tree of a codebook and an assignment.

  .. math::

    w_i = (0, c_1, \\ldots, c_K)[a_i], \\qquad
    \\frac{\\partial L}{\\partial c_k} = \\sum_{i: a_i = k}
      \\frac{\\partial L}{\\partial w_i}

  Pure and differentiable in `codebook`; pruned weights (a_i = 0) read a
  constant zero, so they stay exactly zero and get no gradient.

  Args:
    codebook: (K,) shared non-zero values.
    indices: tree of int arrays in {0..K} (None for leaves not coded), as
      from `codebook_from_quantized`.
    frozen: optional tree of the same structure supplying the leaves where
      `indices` is None (e.g. the quantised params or `CodebookState.frozen`);
      without it those leaves come back as None.

  Returns:
    A tree like `indices`; coded leaves have the codebook's dtype.

  Raises:
    ValueError: the codebook is not 1-D, or (for concrete indices) an index
      is outside {0..K}.
  """
  _check_codebook(codebook)
  k = jnp.shape(codebook)[0]
  table = jnp.concatenate([jnp.zeros((1,), jnp.result_type(codebook)),
                           codebook])

  def expand(i):
    if not jnp.issubdtype(jnp.result_type(i), jnp.integer):
      raise TypeError(f'indices must be integer arrays, got {i.dtype}.')
    if not isinstance(i, jax.core.Tracer):
      lo, hi = int(jnp.min(i, initial=0)), int(jnp.max(i, initial=0))
      if lo < 0 or hi > k:
        raise ValueError(f'indices must lie in [0, {k}] for a codebook of '
                         f'{k} values; got [{lo}, {hi}].')
    return jnp.take(table, i, axis=0)

  expanded = jax.tree.map(lambda i: None if i is None else expand(i),
                          indices, is_leaf=_is_none)
  if frozen is None:
    return expanded
  return jax.tree.map(lambda e, f: f if e is None else e, expanded, frozen,
                      is_leaf=_is_none)


def frozen_leaves(params, indices):
  """`params` with the coded leaves (non-None in `indices`) set to None."""
  return jax.tree.map(lambda i, x: x if i is None else None, indices, params,
                      is_leaf=_is_none)


def create_codebook_state(codebook: jax.Array, indices,
                          optimizer: optax.GradientTransformation,
                          frozen=None) -> CodebookState:
  """Initial `CodebookState`.

  Args:
    codebook: (K,) shared values, from `codebook_from_quantized`.
    indices: the assignment tree, from `codebook_from_quantized`.
    optimizer: any optax transformation of the (K,) codebook, e.g.
      `optax.adam(1e-4)`.
    frozen: optional params tree; its leaves not coded by `indices` are kept
      (the coded ones are dropped, they live in the codebook).

  Returns:
    The state; `expand_codebook(state.codebook, state.indices,
    state.frozen)` is the current params tree.
  """
  _check_codebook(codebook)
  expand_codebook(codebook, indices)  # Validates the indices.
  if frozen is not None:
    frozen = frozen_leaves(frozen, indices)
  opt_state = optim.promotion_safe(optimizer).init(jnp.asarray(codebook))
  return CodebookState(step=jnp.zeros((), jnp.int32),
                       codebook=jnp.asarray(codebook), opt_state=opt_state,
                       indices=indices, frozen=frozen)


def make_codebook_step(apply_fn: Callable[[Any, Any], Any],
                       optimizer: optax.GradientTransformation, *,
                       loss: losses.LossOptions | None = None):
  """A pure `(state, batch) -> (state, metrics)` codebook step (un-jitted).

  Minimises the data loss of `expand_codebook(c, a, frozen)` over the
  codebook c only:

  .. math::

    c \\leftarrow c - \\eta\\,\\mathrm{opt}\\Big(\\sum_{i: a_i = k}
      \\frac{\\partial \\ell_{data}}{\\partial w_i}\\Big)_{k=1..K}

  There is no prior term: the assignment, and hence the complexity of the
  compressed file, is fixed. The batch keys choose the data loss as in
  `make_train_step` (`'teacher_logits'` for distillation, `'label'` for
  cross-entropy, or both); `data_loss_fn` replaces it.

  Args:
    apply_fn: `(params, x) -> outputs`.
    optimizer: the transformation `create_codebook_state` was given.
    loss: the data-loss options (`gmp_jax.LossOptions`), as for
      `make_train_step`.

  Returns:
    The pure step; jit it with `compile_step` (or `jax.jit`). Metrics hold
    `loss`, the data terms and `accuracy` when labels are present.

  Raises:
    ValueError: bad `distillation` or `temperature`.
  """
  data_loss_fn = (losses.LossOptions() if loss is None else loss).data_loss()

  def loss_fn(codebook, state, batch):
    params = expand_codebook(codebook, state.indices, state.frozen)
    loss, metrics = data_loss_fn(apply_fn(params, batch['x']), batch)
    return loss, {**metrics, 'loss': loss}

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def codebook_step(state: CodebookState, batch: Batch):
    (_, metrics), grad = grad_fn(state.codebook, state, batch)
    codebook, opt_state = optim.apply_optimizer(optimizer, grad,
                                                state.opt_state,
                                                state.codebook)
    return state._replace(step=state.step + 1, codebook=codebook,
                          opt_state=opt_state), metrics

  return codebook_step


# ------------------------------------------------------ straight-through ---


class StraightThroughState(NamedTuple):
  """Everything a straight-through step reads; a pytree.

  Attributes:
    step: number of steps taken.
    latent: tree like the params; float arrays for the coded leaves (pruned
      entries 0), None for the others. Trained.
    codebook: (K,) shared non-zero values, or a tree like `latent` with one
      (K,) array per coded leaf. Trained.
    opt_state: the optimiser state of `{'latent': ..., 'codebook': ...}`.
    mask: tree like `latent`; booleans (True = kept) for the coded leaves.
    frozen: tree like the params; the leaves that are not coded, None for
      the coded ones.
  """
  step: jax.Array
  latent: Any
  codebook: Any
  opt_state: optax.OptState
  mask: Any
  frozen: Any

  def quantized_params(self):
    """The quantised params tree (exact codebook values and zeros)."""
    return straight_through_params(self.latent, self.codebook, self.mask,
                                   self.frozen)


def _is_shared(codebook) -> bool:
  return isinstance(codebook, (jax.Array, np.ndarray))


def _codebook_tree(codebook, mask):
  """One codebook per coded leaf (the same array repeated when shared)."""
  if _is_shared(codebook):
    return jax.tree.map(lambda m: None if m is None else codebook, mask,
                        is_leaf=_is_none)
  return codebook


def _nearest(w: jax.Array, c: jax.Array) -> jax.Array:
  c = jnp.reshape(c, (1,) * jnp.ndim(w) + (-1,))
  return jnp.argmin(jnp.abs(w[..., None] - c), axis=-1).astype(jnp.int32)


def nearest_indices(latent, codebook, mask):
  """Each kept weight's cluster: 0 = pruned, k = the k-th value (1-based).

  .. math:: a_i = m_i \\,(1 + \\arg\\min_k |w_i - c_k|)

  Ties go to the lower index. With a per-leaf codebook tree, k counts in
  that leaf's own codebook.
  """
  return jax.tree.map(
      lambda w, m, c: None if m is None else jnp.where(m, _nearest(w, c) + 1,
                                                       0),
      latent, mask, _codebook_tree(codebook, mask), is_leaf=_is_none)


def straight_through_params(latent, codebook, mask, frozen=None):
  """The quantised params, differentiable by the straight-through rule.

  The value of a coded leaf is `where(m, c[a(w)], 0)` exactly; its gradient
  flows to w (identity on kept weights) and, summed per cluster, to c.

  Args:
    latent: tree of latent float weights (None for leaves not coded).
    codebook: (K,) shared values, or one (K,) array per coded leaf.
    mask: tree of booleans (True = kept), None where not coded.
    frozen: optional tree supplying the leaves that are not coded.

  Returns:
    A params tree; coded leaves have the latent's dtype.
  """
  def leaf(w, m, c):
    if m is None:
      return None
    value = jnp.take(c, jax.lax.stop_gradient(_nearest(w, c))).astype(w.dtype)
    return jnp.where(m, w - jax.lax.stop_gradient(w) + value,
                     jnp.zeros((), w.dtype))

  out = jax.tree.map(leaf, latent, mask, _codebook_tree(codebook, mask),
                     is_leaf=_is_none)
  if frozen is None:
    return out
  return jax.tree.map(lambda e, f: f if e is None else e, out, frozen,
                      is_leaf=_is_none)


def masked_latent(params, mask):
  """The latent tree: `params` on the coded leaves, zero where pruned."""
  def leaf(m, w):
    if m is None:
      return None
    if jnp.shape(w) != jnp.shape(m):
      raise ValueError(f'A weight of shape {jnp.shape(w)} does not match its '
                       f'mask of shape {jnp.shape(m)}.')
    return jnp.where(m, jnp.asarray(w), jnp.zeros((), jnp.result_type(w)))
  return jax.tree.map(leaf, mask, params, is_leaf=_is_none)


def _check(latent, codebook, mask) -> None:
  if jax.tree.structure(latent, is_leaf=_is_none) != jax.tree.structure(
      mask, is_leaf=_is_none):
    raise ValueError('latent and mask must have the same tree structure.')
  if not any(m is not None for m in jax.tree.leaves(mask, is_leaf=_is_none)):
    raise ValueError('The mask codes no leaf; nothing to fine-tune.')
  if not _is_shared(codebook) and jax.tree.structure(
      codebook, is_leaf=_is_none) != jax.tree.structure(mask, is_leaf=_is_none):
    raise ValueError('A per-leaf codebook must be a tree like the mask, with '
                     'a (K,) array for every coded leaf.')
  for w, m, c in zip(
      jax.tree.leaves(latent, is_leaf=_is_none),
      jax.tree.leaves(mask, is_leaf=_is_none),
      jax.tree.leaves(_codebook_tree(codebook, mask), is_leaf=_is_none)):
    if m is None:
      if w is not None:
        raise ValueError('latent has a leaf where the mask codes none.')
      continue
    if w is None or jnp.shape(w) != jnp.shape(m):
      raise ValueError(f'A latent leaf of shape {jnp.shape(w)} does not match '
                       f'its mask of shape {jnp.shape(m)}.')
    if not jnp.issubdtype(jnp.result_type(w), jnp.floating):
      raise TypeError(f'latent leaves must be floating, got '
                      f'{jnp.result_type(w)}.')
    if c is None or jnp.ndim(c) != 1 or jnp.shape(c)[0] == 0:
      raise ValueError('Every coded leaf needs a non-empty 1-D codebook, got '
                       f'shape {None if c is None else jnp.shape(c)}.')
    if not jnp.issubdtype(jnp.result_type(c), jnp.floating):
      raise TypeError(f'codebook must be floating, got {jnp.result_type(c)}.')


def create_straight_through_state(latent, codebook, mask,
                                  optimizer: optax.GradientTransformation,
                                  frozen=None) -> StraightThroughState:
  """Initial `StraightThroughState`.

  Args:
    latent: the starting latent weights (`masked_latent` of the retrained
      params, or the quantised params themselves).
    codebook: (K,) shared values, or a tree with one (K,) array per coded
      leaf (e.g. `per_leaf_codebook_tree`).
    mask: tree of booleans (True = kept), None where not coded.
    optimizer: an optax transformation of `{'latent': ..., 'codebook': ...}`.
    frozen: optional params tree; its leaves not coded are kept.

  Raises:
    ValueError, TypeError: mismatched trees, shapes or dtypes.
  """
  _check(latent, codebook, mask)
  latent = masked_latent(latent, mask)
  codebook = jax.tree.map(jnp.asarray, codebook)
  if frozen is not None:
    frozen = jax.tree.map(lambda m, x: x if m is None else None, mask, frozen,
                          is_leaf=_is_none)
  opt_state = optim.promotion_safe(optimizer).init(
      {'latent': latent, 'codebook': codebook})
  return StraightThroughState(step=jnp.zeros((), jnp.int32), latent=latent,
                              codebook=codebook, opt_state=opt_state,
                              mask=mask, frozen=frozen)


def per_leaf_codebook_tree(codebook: jax.Array, mask):
  """A tree like `mask` with a copy of the (K,) `codebook` per coded leaf.

  For straight-through fine-tuning (`create_straight_through_state`); the
  codebook fine-tuning peer is `tiled_per_leaf_codebook`.
  """
  return jax.tree.map(lambda m: None if m is None else jnp.array(codebook),
                      mask, is_leaf=_is_none)


def make_straight_through_step(apply_fn: Callable[[Any, Any], Any],
                               optimizer: optax.GradientTransformation, *,
                               loss: losses.LossOptions | None = None):
  """A pure `(state, batch) -> (state, metrics)` step (un-jitted).

  Minimises the data loss of `straight_through_params(w, c, m, frozen)`
  over the latent weights w and the codebook c, with the mask m fixed:

  .. math::

    (w, c) \\leftarrow (w, c) - \\eta\\,\\mathrm{opt}\\Big(
      m \\odot \\frac{\\partial \\ell}{\\partial q},\\;
      \\Big(\\sum_{i: a_i = k} \\frac{\\partial \\ell}{\\partial q_i}
      \\Big)_k\\Big)

  There is no prior term. The batch keys choose the data loss as in
  `make_train_step`; `data_loss_fn` replaces it. Metrics hold `loss`, the
  data terms, `accuracy` when labels are present, and `reassigned`, the
  fraction of kept weights whose cluster changed in this step.

  Args:
    apply_fn: `(params, x) -> outputs`.
    optimizer: the transformation `create_straight_through_state` was
      given.
    loss: the data-loss options (`gmp_jax.LossOptions`), as for
      `make_train_step`.

  Raises:
    ValueError: bad `distillation` or `temperature`.
  """
  data_loss_fn = (losses.LossOptions() if loss is None else loss).data_loss()

  def loss_fn(trainable, state, batch):
    params = straight_through_params(trainable['latent'],
                                     trainable['codebook'], state.mask,
                                     state.frozen)
    loss, metrics = data_loss_fn(apply_fn(params, batch['x']), batch)
    return loss, {**metrics, 'loss': loss}

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def kept(mask):
    return sum(jnp.sum(m) for m in jax.tree.leaves(mask))

  def straight_through_step(state: StraightThroughState, batch: Batch):
    trainable = {'latent': state.latent, 'codebook': state.codebook}
    (_, metrics), grad = grad_fn(trainable, state, batch)
    trainable, opt_state = optim.apply_optimizer(
        optimizer, grad, state.opt_state, trainable)
    before = nearest_indices(state.latent, state.codebook, state.mask)
    after = nearest_indices(trainable['latent'], trainable['codebook'],
                            state.mask)
    changed = sum(jnp.sum(a != b) for a, b in zip(jax.tree.leaves(before),
                                                  jax.tree.leaves(after)))
    metrics['reassigned'] = changed / jnp.maximum(kept(state.mask), 1)
    return state._replace(step=state.step + 1, latent=trainable['latent'],
                          codebook=trainable['codebook'],
                          opt_state=opt_state), metrics

  return straight_through_step


__all__ = (
    'CodebookState',
    'StraightThroughState',
    'codebook_from_quantized',
    'create_codebook_state',
    'create_straight_through_state',
    'expand_codebook',
    'frozen_leaves',
    'make_codebook_step',
    'make_straight_through_step',
    'masked_latent',
    'nearest_indices',
    'per_leaf_codebook_tree',
    'straight_through_params',
    'tiled_per_leaf_codebook',
)
