"""Quantisation-aware fine-tuning: latent weights read their nearest value.

Codebook fine-tuning (`gmp_jax.finetune`) keeps every weight's cluster. Here
the pruning mask m stays fixed but each kept weight keeps a latent float w_i
and reads the nearest shared value,

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

>>> codebook, _, mask = gmp_jax.codebook_from_quantized(quantized)
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
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmp_jax import losses
from gmp_jax import optim

Batch = losses.Batch
DataLossFn = losses.DataLossFn


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


def _is_none(x) -> bool:
  return x is None


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
  codebook fine-tuning peer is `finetune.tiled_per_leaf_codebook`.
  """
  return jax.tree.map(lambda m: None if m is None else jnp.array(codebook),
                      mask, is_leaf=_is_none)


def per_leaf_codebooks(codebook: jax.Array, mask):
  """Deprecated alias of `per_leaf_codebook_tree`."""
  warnings.warn('gmp_jax.per_leaf_codebooks is deprecated; use '
                'gmp_jax.per_leaf_codebook_tree.', DeprecationWarning,
                stacklevel=2)
  return per_leaf_codebook_tree(codebook, mask)


def quantized_params(state):
  """The quantised params tree of a fine-tuning state.

  `state.quantized_params()` of a `StraightThroughState` or a
  `finetune.CodebookState`.
  """
  return state.quantized_params()


def make_straight_through_step(apply_fn: Callable[[Any, Any], Any],
                               optimizer: optax.GradientTransformation, *,
                               loss: losses.LossOptions | None = None,
                               **loss_fields):
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
    **loss_fields: `LossOptions` fields as keywords (e.g.
      `temperature=4.0`); they replace those of `loss`.

  Raises:
    ValueError: bad `distillation` or `temperature`.
    TypeError: a keyword that is no `LossOptions` field.
  """
  data_loss_fn = losses.loss_options(loss, loss_fields).data_loss()

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
    'StraightThroughState',
    'create_straight_through_state',
    'make_straight_through_step',
    'masked_latent',
    'nearest_indices',
    'per_leaf_codebook_tree',
    'quantized_params',
    'straight_through_params',
)
