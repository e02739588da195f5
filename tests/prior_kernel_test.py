"""The fused likelihood kernel (gmp_jax._prior_kernel) against references.

`mixture_log_prob` views a leaf as rows of its last axis (grouped 16 at a
time plus the remaining rows) or, when the last axis is short, as one row
split into a (16, n / 16) view plus a tail; it takes an unrolled or a reduced
max depending on K, and casts per leaf. These tests cover each path against
a dense `jax.scipy` formula and float64 NumPy.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
from gmp_jax import _prior_kernel
import helpers

# jax >= 0.8 has jax.enable_x64; jax 0.7 (Colab's TPU image) only
# jax.experimental.enable_x64. Both take the new value.
enable_x64 = getattr(jax, 'enable_x64', None)
if enable_x64 is None:
  enable_x64 = importlib.import_module('jax.experimental').enable_x64


def _params(sizes, seed=0, dtype=jnp.float32):
  return helpers.random_tree(
      {f'w{i}': (n,) if isinstance(n, int) else n
       for i, n in enumerate(sizes)}, seed=seed, dtype=dtype)


def _mixture(params, k, seed=1, dtype=jnp.float32):
  mixture = helpers.shared_mixture(params, k, dtype=dtype)
  rng = np.random.default_rng(seed)
  return mixture.replace(
      nonzero_means=mixture.nonzero_means + jnp.asarray(
          0.02 * rng.normal(size=k - 1), dtype),
      log_precisions=mixture.log_precisions + jnp.asarray(
          2.0 * rng.normal(size=k), dtype))


def _dense(params, mixture):
  return jnp.sum(helpers.dense_log_prob(helpers.flat_weights(params), mixture))


def _numpy_grads(params, mixture):
  """Value and gradients in float64 from the textbook formulas."""
  w = np.concatenate([np.asarray(x, np.float64).ravel()
                      for x in jax.tree.leaves(params)])
  mu = np.asarray(mixture.means, np.float64)
  lam = np.asarray(mixture.precisions, np.float64)
  log_pi = np.asarray(mixture.log_mixing_proportions, np.float64)
  d = w[:, None] - mu
  logp = log_pi + 0.5 * np.log(lam / (2 * np.pi)) - 0.5 * lam * d * d
  top = logp.max(1, keepdims=True)
  lse = top[:, 0] + np.log(np.exp(logp - top).sum(1))
  r = np.exp(logp - lse[:, None])
  return {'value': lse.sum(), 'w': -(r * lam * d).sum(1),
          'means': lam * (r * d).sum(0),
          'precisions': 0.5 * r.sum(0) / lam - 0.5 * (r * d * d).sum(0),
          'log_pi': r.sum(0)}


@pytest.mark.parametrize('sizes', [
    (1,), (15,), (16,), (17,), (1000,), (5003, 7, 64),
    # Rows of the last axis: 16-row groups and leftover rows, fewer than 16
    # rows, a 4-d leaf, and a last axis too short (flattened).
    ((40, 16), (7, 33), (3, 3, 5, 20)), ((35, 50), (50, 10), (1, 64))])
@pytest.mark.parametrize('k', [2, 17, 40])
def test_value_and_gradients_match_float64(sizes, k):
  params = _params(sizes)
  mixture = _mixture(params, k)
  means = mixture.means
  precisions = mixture.precisions
  log_pi = mixture.log_mixing_proportions

  def f(leaves, m, p, lp):
    return _prior_kernel.leaves_log_prob(leaves, m, p, lp)

  leaves = tuple(jax.tree.leaves(params))
  value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(
      leaves, means, precisions, log_pi)
  want = _numpy_grads(params, mixture)
  np.testing.assert_allclose(value, want['value'], rtol=1e-5)
  got_w = np.concatenate([np.ravel(g) for g in grads[0]])
  scale = np.abs(want['w']).max()
  np.testing.assert_allclose(got_w, want['w'], rtol=1e-4, atol=1e-5 * scale)
  for got, name in zip(grads[1:], ('means', 'precisions', 'log_pi')):
    scale = np.abs(want[name]).max()
    np.testing.assert_allclose(got, want[name], rtol=1e-4,
                               atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize('sizes', [
    (1,), (17,), (5003, 7, 64), ((40, 16), (7, 33), (3, 3, 5, 20)),
    ((35, 50), (50, 10), (1, 64))])
@pytest.mark.parametrize('k', [2, 17, 40])
def test_value_alone_matches_float64(sizes, k):
  # The value without gradients has its own primal (not the forward pass).
  params = _params(sizes, seed=3)
  mixture = _mixture(params, k, seed=4)
  value = jax.jit(_prior_kernel.leaves_log_prob)(
      tuple(jax.tree.leaves(params)), mixture.means, mixture.precisions,
      mixture.log_mixing_proportions)
  np.testing.assert_allclose(value, _numpy_grads(params, mixture)['value'],
                             rtol=1e-5)


def test_matches_dense_formula_under_jit_and_grad():
  params = _params((12_345, 300, 3))
  mixture = _mixture(params, 17)
  got = jax.jit(jax.value_and_grad(gmp_jax.mixture_log_prob, argnums=(0, 1)))(
      params, mixture)
  want = jax.value_and_grad(_dense, argnums=(0, 1))(params, mixture)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4 * np.abs(w).max())


def test_float64():
  with enable_x64(True):
    params = _params((1000, 33), dtype=jnp.float64)
    mixture = _mixture(params, 9, dtype=jnp.float64)
    value, grads = jax.value_and_grad(gmp_jax.mixture_log_prob)(params,
                                                                mixture)
    want = _numpy_grads(params, mixture)
    assert value.dtype == jnp.float64
    np.testing.assert_allclose(value, want['value'], rtol=1e-12)
    got_w = np.concatenate([np.ravel(grads[k]) for k in sorted(grads)])
    np.testing.assert_allclose(got_w, want['w'], rtol=1e-9, atol=1e-9)


def test_mixed_leaf_dtypes_keep_their_dtypes():
  params = {'a': jnp.linspace(-0.2, 0.2, 100, dtype=jnp.bfloat16),
            'b': jnp.linspace(-0.3, 0.1, 37, dtype=jnp.float16),
            'c': jnp.linspace(-0.1, 0.3, 50, dtype=jnp.float32)}
  mixture = _mixture(params, 5)
  grads = jax.grad(gmp_jax.mixture_log_prob)(params, mixture)
  for name in params:
    assert grads[name].dtype == params[name].dtype
  want = _numpy_grads(params, mixture)
  np.testing.assert_allclose(gmp_jax.mixture_log_prob(params, mixture),
                             want['value'], rtol=1e-5)


def test_empty_leaf_is_skipped():
  params = {'w': jnp.linspace(-0.1, 0.1, 20), 'e': jnp.zeros((0, 3))}
  mixture = _mixture(params, 3)
  grads = jax.grad(gmp_jax.mixture_log_prob)(params, mixture)
  assert grads['e'].shape == (0, 3)
  np.testing.assert_allclose(
      gmp_jax.mixture_log_prob(params, mixture),
      _numpy_grads(params, mixture)['value'], rtol=1e-5)


@pytest.mark.parametrize('sigma', [0.25, 0.033, 1e-2, 1e-4])
@pytest.mark.parametrize('k', [2, 17])
def test_far_weights_stay_finite_and_exact(sigma, k):
  """|w| up to 1e6, sigma down to 1e-4: finite, and equal to float64 NumPy.

  Far from every mean the log densities reach -1e19; the maximum and the
  exponentials are computed in two passes, which must not round apart into
  an exp of a positive number (once inf, and a NaN gradient).
  """
  rng = np.random.default_rng(k)
  w = np.concatenate([
      rng.normal(size=200) * 0.1,
      np.sign(rng.normal(size=60)) * 10.0 ** rng.uniform(0, 6, size=60),
      [1e3, -1e3, 1e4, -1e4, 1e6, -1e6]]).astype(np.float32)
  params = {'w': jnp.asarray(w)}
  mixture = helpers.shared_mixture(params, k, init_std=sigma)
  mixture = mixture.replace(nonzero_means=jnp.linspace(
      -0.3, 0.3, k - 1, dtype=jnp.float32))

  def f(leaves, m, p, lp):
    return _prior_kernel.leaves_log_prob(leaves, m, p, lp)

  value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(
      (params['w'],), mixture.means, mixture.precisions,
      mixture.log_mixing_proportions)
  want = _numpy_grads(params, mixture)
  assert np.isfinite(value)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))
  np.testing.assert_allclose(value, want['value'], rtol=1e-5)
  np.testing.assert_allclose(grads[0][0], want['w'], rtol=1e-4,
                             atol=1e-4 * np.abs(want['w'][:200]).max())
  # The public entry point and the value alone (another fusion) agree.
  np.testing.assert_allclose(
      jax.jit(gmp_jax.mixture_log_prob)(params, mixture), want['value'],
      rtol=1e-5)
  # The mixture's gradients: in float32, log densities of -1e19 do not
  # resolve which component a far weight belongs to (one ulp is 4e12), so
  # they are checked through the same kernel in float64 at every weight.
  with enable_x64(True):
    args = [jnp.asarray(np.asarray(a), jnp.float64) for a in (
        mixture.means, mixture.precisions, mixture.log_mixing_proportions)]
    _, grads64 = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(
        (jnp.asarray(w, jnp.float64),), *args)
    grads64 = jax.tree.map(np.asarray, grads64)
  np.testing.assert_allclose(grads64[0][0], want['w'], rtol=1e-9,
                             atol=1e-12 * np.abs(want['w']).max())
  for got, name in zip(grads64[1:], ('means', 'precisions', 'log_pi')):
    np.testing.assert_allclose(got, want[name], rtol=1e-7,
                               atol=1e-10 * np.abs(want[name]).max(),
                               err_msg=name)
