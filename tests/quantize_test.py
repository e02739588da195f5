"""Tests for gmp_jax.quantize against independent NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
import helpers


_SHAPES = {'a': {'kernel': (20, 7), 'bias': (7,)}, 'b': (2, 3, 4, 5)}


def _params(seed=0, dtype=jnp.float32):
  return helpers.random_tree(_SHAPES, seed=seed, scale=0.3, dtype=dtype)


def _np_assign(w, mixture):
  return helpers.scipy_component_log_density(w, mixture).argmax(-1)


@pytest.mark.parametrize('num_components', [2, 4, 9])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_quantize_matches_numpy_argmax(num_components, dtype):
  params = _params(dtype=dtype)
  mixture = helpers.shared_mixture(params, num_components, init_std=0.1,
                                 zero_proportion=0.5)
  q = jax.jit(gmp_jax.quantize)(params, mixture)
  idx = jax.jit(gmp_jax.assign)(params, mixture)
  means = np.asarray(mixture.means)
  for w, qw, iw in zip(jax.tree.leaves(params), jax.tree.leaves(q),
                       jax.tree.leaves(idx)):
    want = _np_assign(w, mixture)
    np.testing.assert_array_equal(iw, want)
    assert qw.dtype == w.dtype and qw.shape == w.shape
    expected = np.where(want == 0, 0.0, means[want]).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(qw, np.float32),
                                  np.asarray(jnp.asarray(expected, dtype),
                                             np.float32))
    allowed = set(np.asarray(jnp.asarray(means, dtype), np.float32)) | {0.0}
    assert set(np.unique(np.asarray(qw, np.float32))) <= allowed
  assert np.sum(np.asarray(q['b']) == 0) > 0


def test_uncovered_leaves_pass_through():
  params = _params()
  mixture = helpers.shared_mixture(params, 3,
                                 filter_fn=lambda p, x: x.ndim == 2)
  q = gmp_jax.quantize(params, mixture)
  np.testing.assert_array_equal(q['b'], params['b'])
  np.testing.assert_array_equal(q['a']['bias'], params['a']['bias'])
  assert len(np.unique(q['a']['kernel'])) <= 3
  masks = gmp_jax.prune_masks(params, mixture)
  assert masks['b'] is None
  np.testing.assert_array_equal(masks['a']['kernel'], q['a']['kernel'] != 0)


def test_merge_reduces_k_when_components_coincide():
  params = _params()
  mixture = helpers.shared_mixture(params, 5, init_std=0.05)
  means = mixture.nonzero_means.at[2].set(mixture.nonzero_means[1] + 1e-4)
  mixture = mixture.replace(nonzero_means=means)
  merged = gmp_jax.merge_components(mixture, threshold=1e-3)
  assert merged.num_components == 4
  pis = np.asarray(mixture.mixing_proportions)
  np.testing.assert_allclose(jnp.sum(merged.mixing_proportions), 1.0,
                             rtol=1e-6)
  want_mean = (pis[2] * mixture.means[2] + pis[3] * mixture.means[3]) / (
      pis[2] + pis[3])
  assert np.any(np.isclose(np.asarray(merged.means), want_mean, atol=1e-6))
  assert merged.means[0] == 0.0
  # Distinct components are not merged.
  assert gmp_jax.merge_components(
      helpers.shared_mixture(params, 5, init_std=0.05),
      threshold=1e-3).num_components == 5


def test_merge_into_zero_keeps_mean_zero():
  params = _params()
  mixture = helpers.shared_mixture(params, 4, means_range=(1e-5, 1.0),
                                 init_std=0.05)
  merged = gmp_jax.merge_components(mixture, threshold=1e-2)
  assert merged.num_components == 3
  assert merged.means[0] == 0.0
  assert not np.any(np.isclose(np.asarray(merged.means[1:]), 1e-5,
                               rtol=0.5, atol=0))
  q = gmp_jax.quantize(params, merged)
  assert len(np.unique(np.asarray(q['b']))) <= 3
  # The component at 1e-5 joined the zero component: its weights and the
  # weights pruned before are pruned (NumPy assignment before merging).
  for w, qw in zip(jax.tree.leaves(params), jax.tree.leaves(q)):
    before = _np_assign(w, mixture)
    assert np.all(np.asarray(qw)[before <= 1] == 0)


def test_merge_bad_threshold():
  mixture = helpers.shared_mixture(_params(), 3)
  with pytest.raises(ValueError, match='threshold'):
    gmp_jax.merge_components(mixture, threshold=-1.0)


def test_quantize_other_tree():
  mixture = helpers.shared_mixture(_params(), 3)
  with pytest.raises(ValueError, match='another tree'):
    gmp_jax.quantize({'x': jnp.ones(2)}, mixture)
