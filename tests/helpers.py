"""Shared test helpers: small parameter trees and independent references."""

import jax
import jax.numpy as jnp
from jax.scipy import special as jsp_special
from jax.scipy import stats as jsp_stats


def dense_log_prob(w, mixture):
  """Elementwise log sum_k pi_k N(w | mu_k, sigma_k^2), same shape as `w`.

  A plain dense reference built from `jax.scipy` (a (w.size, K) array),
  independent of the fused kernel; differentiable, so its autodiff
  gradients check the kernel's custom VJP.
  """
  dtype = jnp.result_type(w.dtype, mixture.means.dtype, jnp.float32)
  comp = jsp_stats.norm.logpdf(
      w.astype(dtype)[..., None], loc=mixture.means.astype(dtype),
      scale=jnp.sqrt(mixture.variances.astype(dtype)))
  return jsp_special.logsumexp(
      comp + mixture.log_mixing_proportions.astype(dtype), axis=-1)


def flat_weights(params):
  """Every leaf of `params`, flattened and concatenated."""
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(params)])
