"""Tests for gmp_jax.prior against SciPy and finite differences."""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest
from scipy import special
from scipy import stats

import gmp_jax
from gmp_jax import prior as prior_lib
import helpers

# jax >= 0.8 has jax.enable_x64; jax 0.7 (Colab's TPU image) only
# jax.experimental.enable_x64. Both take the new value.
enable_x64 = getattr(jax, 'enable_x64', None)
if enable_x64 is None:
  enable_x64 = importlib.import_module('jax.experimental').enable_x64


_SHAPES = {'conv': {'kernel': (3, 3, 2, 4), 'bias': (4,)},
           'dense': {'kernel': (8, 5)}}


def _tree(seed=0, dtype=np.float32):
  return helpers.random_tree(_SHAPES, seed=seed, dtype=dtype)


def _scipy_log_prob(params, mixture):
  w = np.concatenate([np.asarray(x, np.float64).ravel()
                      for x in jax.tree.leaves(params)])
  return special.logsumexp(helpers.scipy_component_log_density(w, mixture),
                           axis=1).sum()


@pytest.mark.parametrize('num_components', [2, 5, 17])
@pytest.mark.parametrize('learn_zero', [False, True])
def test_log_prob_matches_scipy(num_components, learn_zero):
  params = _tree()
  mixture = helpers.shared_mixture(params, num_components,
                                 learn_zero_proportion=learn_zero)
  # Move away from the symmetric initialisation.
  rng = np.random.default_rng(1)
  mixture = mixture.replace(
      nonzero_means=mixture.nonzero_means + 0.05 * rng.normal(
          size=mixture.nonzero_means.shape),
      log_precisions=mixture.log_precisions + rng.normal(
          size=mixture.log_precisions.shape),
      mixing_logits=mixture.mixing_logits + rng.normal(
          size=mixture.mixing_logits.shape))
  got = jax.jit(gmp_jax.mixture_log_prob)(params, mixture)
  want = _scipy_log_prob(params, mixture)
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize('learn_zero', [False, True])
def test_exposed_views(learn_zero):
  params = _tree()
  mixture = helpers.shared_mixture(params, 7, zero_proportion=0.9,
                                 learn_zero_proportion=learn_zero,
                                 init_std=0.5)
  for name in ('means', 'variances', 'mixing_proportions'):
    assert getattr(mixture, name).shape == (7,)
  assert mixture.means[0] == 0.0
  np.testing.assert_allclose(mixture.variances, 0.25, rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(mixture.mixing_proportions), 1.0,
                             rtol=1e-6)
  np.testing.assert_allclose(mixture.mixing_proportions[0], 0.9, rtol=1e-6)
  w = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
  np.testing.assert_allclose(mixture.means[1:],
                             np.linspace(w.min(), w.max(), 6), rtol=1e-6)


def test_zero_mean_stays_exactly_zero_under_grad():
  params = _tree()
  mixture = helpers.shared_mixture(params, 5)
  grads = jax.grad(gmp_jax.mixture_log_prob, argnums=1)(params, mixture)
  moved = jax.tree.map(lambda a, g: a + 0.1 * g, mixture, grads)
  assert moved.means[0] == 0.0


@pytest.mark.parametrize('learn_zero', [False, True])
def test_gradients_match_finite_differences(learn_zero):
  with enable_x64(True):
    params = _tree(dtype=np.float64)
    mixture = helpers.shared_mixture(params, 4, dtype=jnp.float64,
                                   learn_zero_proportion=learn_zero,
                                   init_std=0.1)
    mixture = mixture.replace(
        mixing_logits=mixture.mixing_logits + jnp.arange(
            mixture.mixing_logits.shape[0], dtype=jnp.float64) * 0.3)
    check_grads(lambda p, m: gmp_jax.mixture_log_prob(p, m), (params, mixture),
                order=1, modes=['rev'], atol=1e-5, rtol=1e-5)
    check_grads(
        lambda p, m: gmp_jax.complexity_loss(
            p, m, hyperpriors=gmp_jax.Hyperpriors(zero_beta=(2.0, 3.0))),
        (params, mixture), order=1, modes=['rev'], atol=1e-5, rtol=1e-5)


def test_custom_vjp_matches_autodiff_of_naive_formula():
  params = _tree(3)
  mixture = helpers.shared_mixture(params, 6)

  def naive(p, m):
    return jnp.sum(helpers.dense_log_prob(helpers.flat_weights(p), m))

  got = jax.jit(jax.grad(gmp_jax.mixture_log_prob, argnums=(0, 1)))(
      params, mixture)
  want = jax.grad(naive, argnums=(0, 1))(params, mixture)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-4)


@pytest.mark.parametrize('value', [1e3, -1e3, 0.0])
@pytest.mark.parametrize('log_precision', [prior_lib._LOG_PRECISION_MAX - 1e-3,
                                           prior_lib._LOG_PRECISION_MAX + 5.0,
                                           prior_lib._LOG_PRECISION_MIN])
def test_finite_at_extremes(value, log_precision):
  params = {'w': jnp.array([value, -value, 0.5, 1e-3], jnp.float32)}
  mixture = helpers.shared_mixture({'w': jnp.array([-1.0, 1.0, 0.0, 0.5])}, 4)
  mixture = mixture.replace(
      log_precisions=jnp.full((4,), log_precision, jnp.float32))
  fn = jax.jit(jax.value_and_grad(
      lambda p, m: gmp_jax.complexity_loss(p, m), argnums=(0, 1)))
  loss, grads = fn(params, mixture)
  assert np.isfinite(loss)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))
  var = np.asarray(mixture.variances)
  assert np.all(var >= prior_lib.VARIANCE_FLOOR * (1 - 1e-5))


def test_hyperprior_matches_scipy_gamma_and_beta():
  params = _tree()
  mixture = helpers.shared_mixture(params, 4, learn_zero_proportion=True)
  mixture = mixture.replace(log_precisions=jnp.array([7.0, 5.0, 6.0, 4.0]))
  hp = gmp_jax.Hyperpriors(zero_gamma=(50.0, 2.0), gamma=(25.0, 0.1),
                           zero_beta=(3.0, 2.0))
  lam = np.exp(np.asarray(mixture.log_precisions, np.float64))
  pi0 = float(mixture.mixing_proportions[0])
  # Log-density over precisions, up to a constant independent of them.
  want = (stats.gamma.logpdf(lam[0], 50.0, scale=1 / 2.0)
          + stats.gamma.logpdf(lam[1:], 25.0, scale=1 / 0.1).sum()
          + stats.beta.logpdf(pi0, 3.0, 2.0))
  const = (special.gammaln(50.0) - 50.0 * np.log(2.0)
           + 3 * (special.gammaln(25.0) - 25.0 * np.log(0.1))
           + special.betaln(3.0, 2.0))
  got = jax.jit(gmp_jax.hyperprior_log_prob)(mixture, hp)
  np.testing.assert_allclose(got, want + const, rtol=1e-5)


def test_mixture_is_a_pytree_through_jit():
  params = _tree()
  mixture = helpers.shared_mixture(params, 3)
  out = jax.jit(lambda m: jax.tree.map(lambda x: x * 2, m))(mixture)
  assert isinstance(out, gmp_jax.GaussianMixture)
  assert out.signature == mixture.signature
  np.testing.assert_allclose(out.nonzero_means, 2 * mixture.nonzero_means)


def test_mixture_is_a_frozen_dataclass_with_static_fields():
  params = _tree()
  mixture = helpers.shared_mixture(params, 3, zero_proportion=0.99)
  with pytest.raises(dataclasses.FrozenInstanceError):
    mixture.zero_proportion = 0.5
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(mixture)[0]]
  assert paths == ['.nonzero_means', '.log_precisions', '.mixing_logits']
  # The static fields live in the tree structure: they select the jit cache.
  other = mixture.replace(zero_proportion=0.5)
  assert other.zero_proportion == 0.5 and mixture.zero_proportion == 0.99
  assert other.signature == mixture.signature
  assert (jax.tree.structure(other) != jax.tree.structure(mixture))
  assert other.nonzero_means is mixture.nonzero_means
  np.testing.assert_allclose(other.mixing_proportions[0], 0.5, rtol=1e-6)
  assert 'covered_leaves=3' in repr(mixture)


def test_component_log_density_matches_scipy():
  params = _tree()
  mixture = helpers.shared_mixture(params, 5, learn_zero_proportion=True)
  w = params['dense']['kernel']
  got = prior_lib.component_log_density(w, mixture)
  assert got.shape == w.shape + (5,) and got.dtype == jnp.float32
  np.testing.assert_allclose(
      got, helpers.scipy_component_log_density(w, mixture), rtol=1e-5,
      atol=1e-5)


def test_filter_selects_leaves():
  params = _tree()
  mixture = helpers.shared_mixture(
      params, 3, filter_fn=lambda path, leaf: leaf.ndim > 1)
  assert len(mixture.signature) == 2
  w = np.concatenate([np.ravel(params['conv']['kernel']),
                      np.ravel(params['dense']['kernel'])])
  want = _scipy_log_prob([w], mixture)
  np.testing.assert_allclose(gmp_jax.mixture_log_prob(params, mixture), want,
                             rtol=1e-5)


def test_bfloat16_leaves():
  params = _tree(dtype=jnp.bfloat16)
  mixture = helpers.shared_mixture(params, 5)
  want = _scipy_log_prob(params, mixture)
  np.testing.assert_allclose(gmp_jax.mixture_log_prob(params, mixture), want,
                             rtol=1e-5)
  g = jax.grad(gmp_jax.mixture_log_prob)(params, mixture)
  assert g['conv']['kernel'].dtype == jnp.bfloat16


# --- Bad input -------------------------------------------------------------


@pytest.mark.parametrize('k', [0, 1, -3, 2.5, True])
def test_bad_num_components(k):
  with pytest.raises(ValueError, match='num_components'):
    helpers.shared_mixture(_tree(), k)


def test_no_compressible_leaves():
  with pytest.raises(ValueError, match='no compressible leaves'):
    helpers.shared_mixture({'step': jnp.int32(0)}, 3)
  with pytest.raises(ValueError, match='no compressible leaves'):
    helpers.shared_mixture({}, 3)


def test_integer_leaf_from_custom_filter():
  params = {'w': jnp.ones(3), 'count': jnp.arange(3)}
  with pytest.raises(TypeError, match=r"\['count'\].*int"):
    helpers.shared_mixture(params, 3, filter_fn=lambda p, x: True)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_params(bad):
  params = _tree()
  params['dense']['kernel'] = params['dense']['kernel'].at[0, 0].set(bad)
  with pytest.raises(ValueError, match=r"\['dense'\]\['kernel'\].*NaN or inf"):
    helpers.shared_mixture(params, 3)


@pytest.mark.parametrize('kwargs', [{'zero_proportion': 1.0},
                                    {'zero_proportion': 0.0},
                                    {'init_std': 0.0}])
def test_bad_options(kwargs):
  with pytest.raises(ValueError):
    helpers.shared_mixture(_tree(), 3, **kwargs)


def test_mixture_for_another_tree():
  mixture = helpers.shared_mixture(_tree(), 3)
  other = {'layer': {'kernel': jnp.ones((3, 3))}}
  with pytest.raises(ValueError, match='built for another tree'):
    gmp_jax.mixture_log_prob(other, mixture)
  reshaped = _tree()
  reshaped['dense']['kernel'] = jnp.ones((5, 8))
  with pytest.raises(ValueError, match='built for another tree.*shape'):
    gmp_jax.mixture_log_prob(reshaped, mixture)


def test_filter_that_chooses_nothing():
  with pytest.raises(ValueError, match=r'filter chose none of its 3 leaves'):
    helpers.shared_mixture(_tree(), 3, filter_fn=lambda path, leaf: False)
  with pytest.raises(ValueError, match=r"'no_norm' default filter chose none "
                     r'of its 1 leaves \(0 floating-point\)'):
    helpers.shared_mixture({'step': jnp.int32(0)}, 3)


@pytest.mark.parametrize('field,shape', [('nonzero_means', (5,)),
                                         ('log_precisions', (3,)),
                                         ('mixing_logits', (4,)),
                                         ('nonzero_means', (2, 2))])
def test_mixture_of_the_wrong_shape(field, shape):
  params = _tree()
  mixture = helpers.shared_mixture(params, 4, zero_proportion=0.99)  # (3,)
  bad = mixture.replace(**{field: jnp.zeros(shape, jnp.float32)})
  for fn in (gmp_jax.mixture_log_prob, gmp_jax.quantize):
    with pytest.raises(ValueError, match=field):
      fn(params, bad)
