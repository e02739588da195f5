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


def test_sequence_logits_average_over_tokens():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(2, 5, 7)).astype(np.float32)
  y = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
  log_p = special.log_softmax(z.astype(np.float64), axis=-1)
  want = -np.mean(np.take_along_axis(log_p, y[..., None], -1))
  np.testing.assert_allclose(gmp_jax.cross_entropy_loss(z, y), want,
                             rtol=1e-6)


@pytest.mark.parametrize('labels_shape, axis', [((2, 4), 'sequence'),
                                                ((3, 5), 'batch')])
def test_sequence_shape_mismatch_names_the_axis(labels_shape, axis):
  z = jnp.zeros((2, 5, 7))
  y = jnp.zeros(labels_shape, jnp.int32)
  with pytest.raises(ValueError, match=f'the {axis} axis'):
    gmp_jax.cross_entropy_loss(z, y)
  data_loss = gmp_jax.LossOptions().data_loss()
  with pytest.raises(ValueError, match=f'the {axis} axis'):
    data_loss(z, {'label': y})
  with pytest.raises(ValueError, match='same shape'):
    gmp_jax.distillation_loss(z, jnp.zeros((2, 4, 7)), 1.0)


def _objective(tau, dataset_size):
  params = {'w': jnp.asarray([0.1, -0.2])}
  mixture = gmp_jax.init_mixture(params, 3)
  return gmp_jax.gmp_objective(jnp.float32(0.0), params, mixture, tau=tau,
                               dataset_size=dataset_size)


def test_objective_rejects_tau_and_n_of_the_wrong_sign_or_type():
  for tau in (-0.1, float('nan'), jnp.float32(-1.0)):
    with pytest.raises(ValueError, match='tau must be >= 0'):
      _objective(tau, 10)
  for tau in ('0.1', None, True, jnp.ones(3), 1j):
    with pytest.raises(TypeError, match='tau must be a real number'):
      _objective(tau, 10)
  for n in (0, -3, np.int64(-1)):
    with pytest.raises(ValueError, match='dataset_size must be > 0'):
      _objective(1.0, n)
  for n in (10.0, '10', False, None, jnp.float32(10.0)):
    with pytest.raises(TypeError, match='dataset_size must be a positive int'):
      _objective(1.0, n)


def test_objective_is_data_plus_tau_complexity_over_n():
  params = {'w': jnp.asarray([0.1, -0.2])}
  mixture = gmp_jax.init_mixture(params, 3)
  complexity = float(gmp_jax.complexity_loss(params, mixture))
  loss, aux = gmp_jax.gmp_objective(jnp.float32(0.5), params, mixture,
                                    tau=jnp.float32(2.0),
                                    dataset_size=40)
  np.testing.assert_allclose(loss, 0.5 + 2.0 * complexity / 40, rtol=1e-6)
  assert float(aux['complexity_loss']) == complexity


def test_loss_options_data_loss_against_numpy(logits):
  s, t = logits
  labels = jnp.asarray([0, 3, 9, 1, 1, 4], jnp.int32)
  options = gmp_jax.LossOptions(temperature=2.0, distillation='mse',
                                distillation_weight=3.0, label_weight=0.25)
  loss, metrics = options.data_loss()(s, {'label': labels,
                                          'teacher_logits': t})
  mse = np.mean((_np_softmax(s, 2.0) - _np_softmax(t, 2.0))**2)
  log_p = special.log_softmax(np.asarray(s, np.float64), axis=-1)
  ce = -np.mean(log_p[np.arange(6), np.asarray(labels)])
  np.testing.assert_allclose(loss, 3.0 * mse + 0.25 * ce, rtol=1e-5)
  np.testing.assert_allclose(metrics['cross_entropy'], ce, rtol=1e-5)
  with pytest.raises(ValueError, match='distillation'):
    gmp_jax.LossOptions(distillation='l2').data_loss()
  with pytest.raises(ValueError, match='temperature'):
    gmp_jax.LossOptions(temperature=-1.0).data_loss()
