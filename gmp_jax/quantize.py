"""Post-processing: merge components, assign weights, prune and quantise.

After retraining, each weight is assigned to its most responsible component,

  k*(w) = argmax_k pi_k N(w | mu_k, sigma_k^2),

weights of the zero component become exactly 0 (pruned) and all others take
their component's mean. Everything runs as jax ops on the device holding the
params. NumPy handles only the K-entry mixture arrays in `merge_components`.
`gmp_jax.sparsity_table` counts what is left (the poster's Table 1).

Reference: Ullrich, Meeds & Welling, ICLR 2017, section 6 (post-processing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gmp_jax import prior as prior_lib

GaussianMixture = prior_lib.GaussianMixture


def _assign_values(w: jax.Array, mixture: GaussianMixture) -> jax.Array:
  score = prior_lib.component_log_density(w, mixture, dtype=jnp.float32)
  return jnp.argmax(score, axis=-1).astype(jnp.int32)


def _quantize_values(w: jax.Array, mixture: GaussianMixture) -> jax.Array:
  idx = _assign_values(w, mixture)
  values = jnp.take(mixture.means, idx).astype(w.dtype)
  return jnp.where(idx == 0, jnp.zeros((), w.dtype), values)


def assign(params, mixture: GaussianMixture):
  """Component index (int32) of every covered weight; None elsewhere.

  Returns a tree like `params` whose covered leaves hold
  argmax_k pi_k N(w | mu_k, sigma_k^2) and whose other leaves are None.
  """
  covered = {p for p, _, _ in mixture.signature}
  prior_lib.mixture_leaves(params, mixture)  # Validates the tree.
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (_assign_values(x, mixture)
                    if jax.tree_util.keystr(p) in covered else None), params)


def _quantize(params, mixture: GaussianMixture):
  return prior_lib.map_mixture_leaves(
      lambda w: _quantize_values(w, mixture), params, mixture)


_quantize_jit = jax.jit(_quantize)


def quantize(params, mixture: GaussianMixture):
  """Prunes and quantises the covered weights; returns the same tree.

  Each covered weight becomes the mean of its most responsible component,
  argmax_k pi_k N(w | mu_k, sigma_k^2); weights of the zero component become
  exactly 0. Leaves the mixture does not cover are returned unchanged and
  every leaf keeps its dtype. Compiled with `jax.jit` (once per tree and K);
  it runs on the device that holds the params.

  Args:
    params: the tree the mixture was built for.
    mixture: the (possibly merged) mixture.

  Returns:
    The quantised tree.
  """
  prior_lib.mixture_leaves(params, mixture)  # Clear errors before tracing.
  return _quantize_jit(params, mixture)


def prune_masks(params, mixture: GaussianMixture):
  """Boolean masks (True = kept) for covered leaves, None elsewhere."""
  return jax.tree.map(lambda a: None if a is None else a != 0,
                      assign(params, mixture),
                      is_leaf=lambda a: a is None)


def gaussian_kl(mu0, var0, mu1, var1):
  """KL(N(mu0, var0) || N(mu1, var1)), elementwise (NumPy or jax arrays)."""
  return 0.5 * (np.log(var1 / var0) + (var0 + (mu0 - mu1)**2) / var1 - 1.0)


def merge_components(mixture: GaussianMixture, *,
                     threshold: float = 0.1) -> GaussianMixture:
  """Greedily merges components whose symmetric KL is below `threshold`.

  The closest pair (symmetrised KL, (KL(p||q) + KL(q||p)) / 2) is merged
  while it is below `threshold`. A merged component takes the summed
  mixing proportion and the pi-weighted means of the pair's mean and
  variance; a pair that includes the zero component keeps mean 0 and
  index 0. The result has fewer components and a free pi_0.

  Runs on the host (the number of components changes; the arrays have
  only K entries).

  Args:
    mixture: the retrained mixture.
    threshold: merge while the closest pair's symmetric KL is below this.

  Returns:
    A new `GaussianMixture` with K' <= K components, bound to the same tree.
  """
  if not threshold >= 0:
    raise ValueError(f'threshold must be >= 0, got {threshold!r}.')
  # K is small: the greedy loop runs on the host in float64, so shrinking K
  # costs no recompilation.
  means = np.asarray(mixture.means, np.float64)
  variances = np.asarray(mixture.variances, np.float64)
  pis = np.asarray(mixture.mixing_proportions, np.float64)
  while means.shape[0] > 2:
    k = means.shape[0]
    m0, v0 = means[:, None], variances[:, None]
    m1, v1 = means[None, :], variances[None, :]
    sym = 0.5 * (gaussian_kl(m0, v0, m1, v1) + gaussian_kl(m1, v1, m0, v0))
    np.fill_diagonal(sym, np.inf)
    i, j = np.unravel_index(np.argmin(sym), sym.shape)
    if not sym[i, j] < threshold:
      break
    i, j = min(i, j), max(i, j)
    w = pis[i] + pis[j]
    means[i] = 0.0 if i == 0 else (pis[i] * means[i] + pis[j] * means[j]) / w
    variances[i] = (pis[i] * variances[i] + pis[j] * variances[j]) / w
    pis[i] = w
    means, variances, pis = (np.delete(a, j) for a in (means, variances, pis))
  dtype = mixture.log_precisions.dtype
  return GaussianMixture(
      jnp.asarray(means[1:], dtype), jnp.asarray(-np.log(variances), dtype),
      jnp.asarray(np.log(pis), dtype), zero_proportion=None,
      signature=mixture.signature)
