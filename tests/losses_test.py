"""Tests for gmp_jax.losses against NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import gmp_jax


def _np_softmax(z, t):
  return special.softmax(np.asarray(z, np.float64) / t, axis=-1)


@pytest.fixture
def logits():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(6, 10)) * 3, jnp.float32),
          jnp.asarray(rng.normal(size=(6, 10)) * 3, jnp.float32))


@pytest.mark.parametrize('temperature', [0.5, 1.0, 4.0, 20.0])
def test_distillation_mse(logits, temperature):
  s, t = logits
  got = jax.jit(gmp_jax.distillation_loss)(s, t, temperature)
  want = np.mean((_np_softmax(s, temperature) - _np_softmax(t, temperature))**2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize('temperature', [1.0, 3.0])
def test_kl_distillation(logits, temperature):
  s, t = logits
  got = jax.jit(gmp_jax.kl_distillation_loss)(s, t, temperature)
  ps, pt = _np_softmax(s, temperature), _np_softmax(t, temperature)
  want = temperature**2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_distillation_is_zero_for_equal_logits(logits):
  s, _ = logits
  assert float(gmp_jax.distillation_loss(s, s, 2.0)) == 0.0
  np.testing.assert_allclose(gmp_jax.kl_distillation_loss(s, s, 2.0), 0.0,
                             atol=1e-6)


def test_no_gradient_into_teacher(logits):
  s, t = logits
  g = jax.grad(gmp_jax.distillation_loss, argnums=1)(s, t, 2.0)
  assert not np.any(g)


def test_cross_entropy(logits):
  s, _ = logits
  labels = jnp.array([0, 3, 9, 1, 1, 5])
  got = jax.jit(gmp_jax.cross_entropy_loss)(s, labels)
  p = _np_softmax(s, 1.0)
  want = -np.mean(np.log(p[np.arange(6), np.asarray(labels)]))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_objective_normalisation():
  params = {'w': jnp.linspace(-1, 1, 11)}
  mixture = gmp_jax.init_mixture(params, 3)
  loss, aux = jax.jit(lambda p, m: gmp_jax.gmp_objective(
      jnp.float32(0.7), p, m, tau=2.0, dataset_size=50))(params, mixture)
  complexity = -(gmp_jax.mixture_log_prob(params, mixture)
                 + gmp_jax.hyperprior_log_prob(mixture))
  np.testing.assert_allclose(aux['complexity_loss'], complexity, rtol=1e-6)
  np.testing.assert_allclose(loss, 0.7 + 2.0 / 50 * complexity, rtol=1e-6)


@pytest.mark.parametrize('fn', [gmp_jax.distillation_loss,
                                gmp_jax.kl_distillation_loss])
@pytest.mark.parametrize('temperature', [0.0, -1.0, jnp.float32(0.0)])
def test_bad_temperature(logits, fn, temperature):
  with pytest.raises(ValueError, match='temperature'):
    fn(*logits, temperature)


@pytest.mark.parametrize('fn', [gmp_jax.distillation_loss,
                                gmp_jax.kl_distillation_loss])
def test_shape_mismatch(fn):
  with pytest.raises(ValueError, match='same shape'):
    fn(jnp.zeros((4, 10)), jnp.zeros((4, 9)), 1.0)


def test_bad_objective_args():
  params = {'w': jnp.ones(3)}
  mixture = gmp_jax.init_mixture(params, 2)
  with pytest.raises(ValueError, match='tau'):
    gmp_jax.gmp_objective(0.0, params, mixture, tau=-1.0, dataset_size=3)
  with pytest.raises(ValueError, match='dataset_size'):
    gmp_jax.gmp_objective(0.0, params, mixture, tau=1.0, dataset_size=0)
