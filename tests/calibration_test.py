"""The tau rule, the step's grad_ratio metric, diagnose, and the data-driven
init_mixture defaults, each against NumPy float64."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
import helpers


def _linear_problem(seed=0, n=64, d=6, k=3, scale=0.1):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  t = rng.normal(size=(n, k)).astype(np.float32)
  params = {'w': (scale * rng.normal(size=(d, k))).astype(np.float32),
            'b': (scale * rng.normal(size=k)).astype(np.float32)}
  return x, t, params


def _mse(p, batch):
  pred = batch['x'] @ p['w'] + p['b'][None]
  return jnp.mean(jnp.sum(jnp.square(pred - batch['t']), axis=-1))


def _mse_grad_numpy(p, x, t):
  """d/dp of mean_n |x W + b - t|^2, float64."""
  w, b = np.asarray(p['w'], np.float64), np.asarray(p['b'], np.float64)
  r = x.astype(np.float64) @ w + b - t
  n = len(x)
  return {'w': 2 * x.T.astype(np.float64) @ r / n, 'b': 2 * r.sum(0) / n}


def test_gradient_scales_and_calibrate_tau_against_numpy():
  x, t, params = _linear_problem()
  mixture = helpers.shared_mixture(params, 5)
  batches = [{'x': x[i:i + 16], 't': t[i:i + 16]} for i in range(0, 64, 16)]
  scales = gmp_jax.gradient_scales(_mse, params, mixture, batches)
  n = params['w'].size + params['b'].size
  data_sq = [sum(np.sum(g ** 2) for g in
                 _mse_grad_numpy(params, b['x'], b['t']).values())
             for b in batches]
  prior_sq = sum(np.sum(helpers.numpy_prior_grad(params[k], mixture) ** 2)
                 for k in params)
  np.testing.assert_allclose(scales.data_rms, np.sqrt(np.mean(data_sq) / n),
                             rtol=1e-5)
  np.testing.assert_allclose(scales.prior_rms, np.sqrt(prior_sq / n),
                             rtol=1e-4)
  assert scales.num_weights == n
  tau = gmp_jax.calibrate_tau(scales, dataset_size=640, ratio=2.5)
  np.testing.assert_allclose(
      tau, 2.5 * 640 * np.sqrt(np.mean(data_sq) / prior_sq), rtol=1e-4)
  assert scales.ratio(tau, 640) == pytest.approx(2.5)


def test_step_grad_ratio_matches_numpy_and_leaves_the_update_unchanged():
  x, t, params = _linear_problem(seed=1)
  mixture = helpers.shared_mixture(params, 5)
  tx = gmp_jax.gmp_optimizer()
  state = gmp_jax.create_train_state(params, mixture, tx)
  data_loss = lambda out, b: (jnp.mean(jnp.sum(jnp.square(out - b['t']), -1)),  # pylint: disable=unnecessary-lambda-assignment
                              {})
  apply_fn = lambda p, xb: xb @ p['w'] + p['b'][None]  # pylint: disable=unnecessary-lambda-assignment
  kwargs = dict(tau=3.0, dataset_size=64,
                loss=gmp_jax.LossOptions(data_loss_fn=data_loss))
  with_ratio = jax.jit(gmp_jax.make_train_step(apply_fn, tx, grad_ratio=True,
                                               **kwargs))
  without = jax.jit(gmp_jax.make_train_step(apply_fn, tx, **kwargs))
  batch = {'x': x, 't': t}
  s1, m1 = with_ratio(state, batch)
  s2, m2 = without(state, batch)
  jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)
  jax.tree.map(np.testing.assert_array_equal, s1.mixture, s2.mixture)
  for key in ('loss', 'data_loss', 'complexity_loss'):
    np.testing.assert_allclose(m1[key], m2[key], rtol=1e-6)
  assert 'grad_ratio' not in m2
  data = _mse_grad_numpy(params, x, t)
  prior_sq = sum(np.sum((3.0 / 64 * helpers.numpy_prior_grad(params[k],
                                                            mixture))
                        ** 2) for k in params)
  data_sq = sum(np.sum(g ** 2) for g in data.values())
  np.testing.assert_allclose(m1['grad_ratio'], np.sqrt(prior_sq / data_sq),
                             rtol=1e-3)


def test_calibrate_tau_bad_input():
  scales = gmp_jax.GradientScales(1e-3, 2.0, 10)
  for ratio in (0, -1.0, float('nan'), '1'):
    with pytest.raises(ValueError, match='ratio'):
      gmp_jax.calibrate_tau(scales, dataset_size=10, ratio=ratio)
  for n in (0, -5, 2.5, '10'):
    with pytest.raises(ValueError, match='dataset_size'):
      gmp_jax.calibrate_tau(scales, dataset_size=n)
  with pytest.raises(ValueError, match='prior gradient is zero'):
    gmp_jax.calibrate_tau(gmp_jax.GradientScales(1e-3, 0.0, 10),
                          dataset_size=10)
  with pytest.raises(ValueError, match='at least one batch'):
    x, t, params = _linear_problem()
    gmp_jax.gradient_scales(_mse, params, helpers.shared_mixture(params, 3), [])


def _numpy_kept_fraction(params, mixture):
  mu = np.asarray(mixture.means, np.float64)
  var = np.asarray(mixture.variances, np.float64)
  pi = np.asarray(mixture.mixing_proportions, np.float64)
  w = np.concatenate([np.ravel(v) for v in params.values()]).reshape(-1, 1)
  log = np.log(pi) - 0.5 * np.log(var) - (w - mu) ** 2 / (2 * var)
  return float(np.mean(np.argmax(log, axis=1) != 0))


def test_diagnose_warns_when_almost_everything_is_pruned():
  rng = np.random.default_rng(0)
  params = {'w': (0.09 * rng.normal(size=(64, 64))).astype(np.float32)}
  # The published recipe on weights of std 0.09 (the transformer).
  published = helpers.shared_mixture(params, 17, init_std=0.25,
                                   zero_proportion=0.99)
  with pytest.warns(UserWarning, match=r'prune 100\.00% of the covered'):
    found = gmp_jax.diagnose(params, published)
  # The message says why a fixed pi_0 starts there, and when it is a problem.
  assert 'as expected at the start under a fixed pi_0 = 0.99' in (
      found.warnings[0])
  assert 'too wide for these weights' in found.warnings[0]
  assert found.nonzero_fraction == _numpy_kept_fraction(params, published)
  assert found.nonzero_fraction == 0.0
  # The default mixture keeps what NumPy's assignment keeps, and warns not.
  default = helpers.shared_mixture(params, 17)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    found = gmp_jax.diagnose(params, default,
                             evaluate=lambda p: {'mean': float(
                                 jnp.mean(jnp.abs(p['w'])))})
  np.testing.assert_allclose(found.nonzero_fraction,
                             _numpy_kept_fraction(params, default),
                             atol=1 / params['w'].size)
  assert 0.5 < found.nonzero_fraction < 1.0
  assert found.quantized_metrics['mean'] > 0 and found.warnings == ()


def test_diagnose_warns_when_the_ratio_is_far_off():
  x, t, params = _linear_problem()
  mixture = helpers.shared_mixture(params, 5)
  scales = gmp_jax.gradient_scales(_mse, params, mixture,
                                   [{'x': x, 't': t}])
  tau = gmp_jax.calibrate_tau(scales, dataset_size=64, ratio=1.0)
  found = gmp_jax.diagnose(params, mixture, scales=scales, tau=1e4 * tau,
                           dataset_size=64, warn=False)
  assert found.grad_ratio == pytest.approx(1e4)
  assert any('times the data gradient' in m for m in found.warnings)
  found = gmp_jax.diagnose(params, mixture, scales=scales, tau=tau,
                           dataset_size=64, warn=False)
  assert found.warnings == ()


def test_init_mixture_defaults_from_the_weights_statistics():
  rng = np.random.default_rng(3)
  params = {'a': (0.05 * rng.normal(size=(40, 30))).astype(np.float32),
            'b': (0.05 * rng.normal(size=30)).astype(np.float32)}
  k = 9
  mixture = helpers.shared_mixture(params, k)
  w = np.concatenate([params['a'].ravel(), params['b'].ravel()])
  means = np.linspace(w.min(), w.max(), k - 1)
  np.testing.assert_allclose(mixture.nonzero_means, means, rtol=1e-6)
  spacing = (w.max() - w.min()) / (k - 2)
  np.testing.assert_allclose(np.sqrt(mixture.variances), spacing / 2,
                             rtol=1e-5)
  # Proportions: the share of weights nearest each centre, 0 included.
  centres = np.concatenate([[0.0], means])
  nearest = np.argmin(np.abs(w[:, None] - centres[None].astype(np.float64)),
                      axis=1)
  counts = np.bincount(nearest, minlength=k)
  np.testing.assert_allclose(mixture.mixing_proportions,
                             (counts + 1) / (counts.sum() + k), rtol=1e-5)
  assert mixture.zero_proportion is None  # learned
  # A given pi_0 is fixed, as published.
  fixed = helpers.shared_mixture(params, k, zero_proportion=0.99)
  assert fixed.zero_proportion == 0.99
  np.testing.assert_allclose(fixed.mixing_proportions[1:], 0.01 / (k - 1),
                             rtol=1e-5)
  learned = helpers.shared_mixture(params, k, zero_proportion=0.9,
                                 learn_zero_proportion=True)
  assert learned.zero_proportion is None
  np.testing.assert_allclose(learned.mixing_proportions[0], 0.9, rtol=1e-6)


def test_init_mixture_bad_input():
  params = {'a': np.ones((3, 3), np.float32)}
  for std in (0.0, -1.0):
    with pytest.raises(ValueError, match='init_std'):
      helpers.shared_mixture(params, 3, init_std=std)
  for pi in (0.0, 1.0, 1.5):
    with pytest.raises(ValueError, match='zero_proportion'):
      helpers.shared_mixture(params, 3, zero_proportion=pi)
  # Constant weights still give a usable mixture.
  mixture = helpers.shared_mixture(params, 3)
  assert np.all(np.isfinite(mixture.variances))
  assert mixture.nonzero_means[0] < 1.0 < mixture.nonzero_means[1]
