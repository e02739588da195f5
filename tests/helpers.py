"""Shared test helpers: small parameter trees and independent references."""

import jax
import jax.numpy as jnp
from jax.scipy import special as jsp_special
from jax.scipy import stats as jsp_stats
import numpy as np
from scipy import stats

import gmp_jax


def random_tree(shapes, *, seed=0, scale=0.1, dtype=jnp.float32):
  """A tree of N(0, scale^2) arrays shaped like the nested dict `shapes`.

  Leaves are drawn in the dict's order from one `default_rng(seed)`.
  """
  rng = np.random.default_rng(seed)

  def build(node):
    if isinstance(node, dict):
      return {k: build(v) for k, v in node.items()}
    return jnp.asarray(rng.normal(0, scale, node), dtype)

  return build(shapes)


def train_state(params, num_components, *, weights=1e-2):
  """`(optimizer, TrainState)` for `params` with a fresh K-component prior."""
  tx = gmp_jax.gmp_optimizer(weights=weights)
  mixture = gmp_jax.init_mixture(params, num_components)
  return tx, gmp_jax.create_train_state(params, mixture, tx)


def flat_weights(params):
  """Every leaf of `params`, flattened and concatenated."""
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(params)])


def scipy_component_log_density(w, mixture):
  """(..., K) log pi_k + log N(w | mu_k, sigma_k^2) in float64, from SciPy."""
  return (np.log(np.asarray(mixture.mixing_proportions, np.float64))
          + stats.norm.logpdf(np.asarray(w, np.float64)[..., None],
                              np.asarray(mixture.means, np.float64),
                              np.sqrt(np.asarray(mixture.variances,
                                                 np.float64))))


def dense_log_prob(w, mixture):
  """Elementwise log sum_k pi_k N(w | mu_k, sigma_k^2), same shape as `w`.

  A plain dense reference built from `jax.scipy` (a (w.size, K) array),
  independent of the fused kernel; differentiable, so its autodiff
  gradients check the kernel's custom VJP.
  """
  dtype = jnp.float64 if jnp.float64 in (w.dtype, mixture.means.dtype) else (
      jnp.float32)
  k_shape = (1,) * w.ndim + (-1,)
  comp = jsp_stats.norm.logpdf(
      w.astype(dtype)[..., None],
      loc=mixture.means.astype(dtype).reshape(k_shape),
      scale=jnp.sqrt(mixture.variances.astype(dtype)).reshape(k_shape))
  log_pi = mixture.log_mixing_proportions.astype(dtype).reshape(k_shape)
  return jsp_special.logsumexp(comp + log_pi, axis=-1)


def assert_trees_close(got, want, *, rtol=1e-5, atol=0.0):
  """Same leaves (in tree order) up to the tolerances."""
  got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(got_leaves) == len(want_leaves)
  for a, b in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def assert_steps_agree(got, want, *, rtol=1e-5, atol=0.0):
  """Two `(state, metrics)` results of a train step: same loss and state."""
  np.testing.assert_allclose(got[1]['loss'], want[1]['loss'], rtol=rtol)
  assert_trees_close(got[0], want[0], rtol=rtol, atol=atol)


def override(config, **overrides):
  """`config` with dotted-path fields set: `override(c, **{'a.b': 1})`."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


# A two-layer ReLU net small enough for float64 NumPy references.
MLP_DIMS = (12, 9, 4)  # inputs, hidden units, outputs


def mlp_apply(params, x):
  h = jax.nn.relu(x @ params['l1']['kernel'] + params['l1']['bias'][None])
  return h @ params['l2']['kernel'] + params['l2']['bias'][None]


def mlp_params(seed=0):
  d_in, d_hid, d_out = MLP_DIMS
  rng = np.random.default_rng(seed)
  return {'l1': {'kernel': jnp.asarray(rng.normal(0, .4, (d_in, d_hid)),
                                       jnp.float32),
                 'bias': jnp.asarray(rng.normal(0, .1, (d_hid,)),
                                     jnp.float32)},
          'l2': {'kernel': jnp.asarray(rng.normal(0, .4, (d_hid, d_out)),
                                       jnp.float32),
                 'bias': jnp.asarray(rng.normal(0, .1, (d_out,)),
                                     jnp.float32)}}


def np_mlp_forward_backward(p, x, labels):
  """Float64 NumPy cross-entropy of `mlp_apply` and per-weight gradients."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  z1 = x @ p['l1']['kernel'] + p['l1']['bias']
  h = np.maximum(z1, 0)
  z2 = h @ p['l2']['kernel'] + p['l2']['bias']
  z2 = z2 - z2.max(-1, keepdims=True)
  prob = np.exp(z2) / np.exp(z2).sum(-1, keepdims=True)
  n = len(x)
  loss = -np.mean(np.log(prob[np.arange(n), labels]))
  dz2 = prob.copy()
  dz2[np.arange(n), labels] -= 1
  dz2 /= n
  dh = dz2 @ p['l2']['kernel'].T
  dz1 = dh * (z1 > 0)
  grads = {'l1': {'kernel': x.T @ dz1, 'bias': dz1.sum(0)},
           'l2': {'kernel': h.T @ dz2, 'bias': dz2.sum(0)}}
  return loss, grads
