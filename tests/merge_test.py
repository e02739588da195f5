"""merge_components keeps the pruned weights and leaves no duplicate values.

Every check assigns weights with an independent NumPy float64 argmax of
pi_k N(w | mu_k, sigma_k^2) (SciPy's normal log-density) under the mixture
before and after merging.
"""

import re

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
import helpers

_SIGNATURE = (("['w']", (1000,), 'float32'),)
_DUPLICATE_RTOL = 1e-3


def _mixture(means, stds, pis):
  """A free-pi_0 float32 mixture with these components (means[0] = 0)."""
  means, stds, pis = (np.asarray(x, np.float64) for x in (means, stds, pis))
  assert means[0] == 0
  return gmp_jax.GaussianMixture(
      jnp.asarray(means[1:], jnp.float32),
      jnp.asarray(-2 * np.log(stds), jnp.float32),
      jnp.asarray(np.log(pis / pis.sum()), jnp.float32),
      zero_proportion=None, signature=_SIGNATURE)


def _log_density(w, mixture):
  return helpers.scipy_component_log_density(np.asarray(w, np.float64),
                                             mixture)


def _assign(w, mixture):
  return np.argmax(_log_density(w, mixture), axis=-1)


def _clear(w, mixture, margin=5e-2):
  """Weights whose two most responsible components are not within 5%.

  Merging moves the borders between components' regions by float32
  rounding, and those of a joined component by up to its mean (at most
  2e-5 here); the weights next to a border are left out of the comparison.
  """
  q = np.sort(_log_density(w, mixture), axis=-1)
  return q[:, -1] - q[:, -2] > margin


def _check_pruning(mixture, merged, weights, expect_joined=()):
  """Pruned before stays pruned; newly pruned weights are whole components."""
  before, after = _assign(weights, mixture), _assign(weights, merged)
  pruned_before, pruned_after = before == 0, after == 0
  clear = _clear(weights, mixture) & _clear(weights, merged)
  assert not np.any(pruned_before & ~pruned_after & clear)
  # Weights newly pruned come from components that joined the zero
  # component whole: every weight of theirs is pruned.
  joined = set(before[pruned_after & ~pruned_before & clear].tolist())
  for k in joined:
    assert np.all(pruned_after[(before == k) & clear]), k
  for k in expect_joined:
    assert np.all(pruned_after[before == k]), k
  assert merged.means[0] == 0.0
  np.testing.assert_allclose(np.sum(merged.mixing_proportions), 1.0,
                             rtol=1e-6)


def _check_values(merged):
  """No near-duplicate non-zero means."""
  means = np.asarray(merged.means, np.float64)[1:]
  gaps = np.abs(means[:, None] - means[None])
  scale = np.maximum(np.abs(means[:, None]), np.abs(means[None]))
  np.fill_diagonal(gaps, np.inf)
  assert np.all(gaps > _DUPLICATE_RTOL * scale), means


def _in_reach(mixture):
  """Components with |mu_k| <= 0.1 sigma_0 (merge_components' zero_reach)."""
  means = np.asarray(mixture.means, np.float64)
  zero_std = np.sqrt(np.asarray(mixture.variances, np.float64)[0])
  return [k for k in range(1, means.size) if abs(means[k]) <= 0.1 * zero_std]


def _check(mixture, weights, *, threshold=0.1, expect_joined=()):
  merged = gmp_jax.merge_components(mixture, threshold=threshold)
  expect_joined = tuple(expect_joined) + tuple(_in_reach(mixture))
  _check_pruning(mixture, merged, weights, expect_joined)
  _check_values(merged)
  return merged


def _weights(mixture, n=20_000, seed=0):
  """Draws from the mixture itself, plus its means."""
  rng = np.random.default_rng(seed)
  pis = np.asarray(mixture.mixing_proportions, np.float64)
  k = rng.choice(pis.size, n, p=pis / pis.sum())
  w = rng.normal(np.asarray(mixture.means, np.float64)[k],
                 np.sqrt(np.asarray(mixture.variances, np.float64))[k])
  return np.concatenate([w, np.asarray(mixture.means, np.float64)])


def test_drifted_mean_joins_zero_and_duplicates_merge():
  # A learned mean drifted to 1.59e-5; two means agree to 5e-6.
  means = [0.0, 1.59e-5, -0.11089642, -0.11089176, 0.1, 0.2, -0.2, 0.3,
           0.101]
  stds = [0.01, 0.03, 0.02, 0.03, 0.02, 0.02, 0.02, 0.03, 0.02]
  pis = [0.7, 0.05, 0.03, 0.03, 0.05, 0.05, 0.04, 0.03, 0.02]
  mixture = _mixture(means, stds, pis)
  w = _weights(mixture)
  before = _assign(w, mixture)
  assert 0.01 < np.mean(before == 1)  # The drifted component holds weights.
  merged = _check(mixture, w, expect_joined=(1,))
  values = np.asarray(merged.means)
  assert not np.any(np.isclose(values, 1.59e-5, rtol=0.5, atol=0))
  assert np.sum(np.isclose(values, -0.1108941, atol=1e-5)) == 1
  assert np.sum(np.isclose(values, 0.1, atol=2e-3)) == 1
  # Quantising prunes the same weights as the NumPy assignment says.
  q = np.asarray(gmp_jax.quantize({'w': jnp.asarray(w[:1000], jnp.float32)},
                                  merged)['w'])
  np.testing.assert_array_equal(q == 0, _assign(
      np.asarray(w[:1000], np.float32), merged) == 0)


def test_merge_that_would_move_the_pruned_region_is_not_made():
  # Two components near each other, one wide: the old moment-matched merge
  # widened the one next to zero and took a fifth of the pruned weights.
  means = [0.0, 0.06, 0.075, 0.4]
  stds = [0.02, 0.01, 0.04, 0.02]
  pis = [0.8, 0.05, 0.1, 0.05]
  mixture = _mixture(means, stds, pis)
  _check(mixture, _weights(mixture), threshold=1.0)


def test_components_near_zero_but_beyond_its_reach_are_kept():
  # Means at 1.4 sigma_0: the zero component wins at them, yet they hold
  # most of the kept weights; they must not be pruned.
  means = [0.0, -0.2273, -0.0777, 0.0686, 0.2182]
  stds = [0.0488, 0.0512, 0.0512, 0.0488, 0.0512]
  pis = [0.5, 0.119, 0.131, 0.131, 0.119]
  mixture = _mixture(means, stds, pis)
  w = _weights(mixture)
  merged = _check(mixture, w)
  np.testing.assert_array_equal(_assign(w, merged) == 0,
                                _assign(w, mixture) == 0)


@st.composite
def _mixtures(draw, realistic):
  """Random mixtures; some means drift next to zero, some nearly repeat.

  `realistic`: the zero component is the heaviest and no wider than the
  others, and at most one mean drifts next to zero, as after retraining.
  Otherwise anything goes (a heavier twin of the zero component, several
  components at zero).
  """
  floats = lambda lo, hi: st.floats(lo, hi, allow_nan=False)
  k = draw(st.integers(3, 10))
  zero_std = draw(floats(0.005, 0.03 if realistic else 0.05))
  stds = [zero_std] + [draw(floats(zero_std if realistic else 0.005, 0.08))
                       for _ in range(k - 1)]
  free = floats(-0.5, 0.5)
  if realistic:  # Beyond the zero component, but for one drifted mean.
    free = free.filter(lambda m: abs(m) > 3 * zero_std)
  means = [0.0] + [draw(free) for _ in range(k - 1)]
  near_zero = 0
  for i in range(1, k):
    kind = draw(st.sampled_from(['free', 'free', 'near_zero', 'duplicate']))
    if kind == 'near_zero' and not (realistic and near_zero):
      # Normal float32 values only: XLA on CPU flushes subnormals (a mean of
      # 1.65e-43 is 0 to jax 0.7.2 but not to the float64 reference).
      means[i] = draw(floats(-2e-5, 2e-5).filter(lambda m: abs(m) > 1e-30))
      near_zero += 1
    elif kind == 'duplicate' and i > 1:
      j = draw(st.integers(1, i - 1))
      if realistic and abs(means[j]) < 1e-2:
        continue
      means[i] = means[j] * (1 + draw(floats(-1e-4, 1e-4)))
      if means[i] == 0:
        means[i] = 1e-6
  means = [m if i == 0 or m != 0 else 1e-6 for i, m in enumerate(means)]
  if realistic:  # Components on both sides, beyond the zero component.
    means[1:3] = [-draw(floats(0.1, 0.5)), draw(floats(0.1, 0.5))]
    stds[1:3] = [max(stds)] * 2  # They hold the tails of the line.
  pi0 = draw(floats(0.5, 0.99) if realistic else floats(0.05, 0.99))
  rest = [draw(floats(0.01, 1.0)) for _ in range(k - 1)]
  pis = [pi0] + [(1 - pi0) * p / sum(rest) for p in rest]
  if realistic:
    pis[0] = max(pis)
  return _mixture(means, stds, pis)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(_mixtures(realistic=False), st.sampled_from([0.0, 0.1, 1.0]))
def test_pruned_weights_are_kept_on_any_mixture(mixture, threshold):
  merged = gmp_jax.merge_components(mixture, threshold=threshold)
  _check_pruning(mixture, merged, _weights(mixture, n=5000))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(_mixtures(realistic=True), st.sampled_from([0.0, 0.1, 1.0]))
def test_realistic_mixtures_merge_fully(mixture, threshold):
  _check(mixture, _weights(mixture, n=5000), threshold=threshold)


def test_bad_mixture_shapes():
  mixture = gmp_jax.init_mixture({'w': jnp.linspace(-1, 1, 10)}, 4)
  with pytest.raises(ValueError, match='do not fit together'):
    gmp_jax.merge_components(mixture.replace(
        log_precisions=jnp.zeros(5, jnp.float32)))
  with pytest.raises(ValueError, match='duplicate_rtol'):
    gmp_jax.merge_components(mixture, duplicate_rtol=-1.0)


def test_max_components_caps_the_values_and_keeps_the_pruned_set():
  # 17 well-separated components: no pair is below the KL threshold.
  means = np.concatenate([[0.0], np.linspace(-0.8, -0.1, 8),
                          np.linspace(0.1, 0.8, 8)])
  mixture = _mixture(means, np.full(17, 0.01), np.full(17, 1 / 17))
  # No cap: the KL rules alone keep all 17 (the default now caps at 16).
  assert gmp_jax.merge_components(
      mixture, max_components=None).num_components == 17
  capped = gmp_jax.merge_components(mixture, max_components=16)
  assert capped.num_components == 16
  weights = np.random.default_rng(0).uniform(-0.9, 0.9, 20_000)
  # The same weights pruned, by the NumPy argmax, away from the borders.
  before, after = _assign(weights, mixture) == 0, _assign(weights, capped) == 0
  clear = _clear(weights, mixture) & _clear(weights, capped)
  np.testing.assert_array_equal(before[clear], after[clear])
  # quantize gives at most 16 values, zero included: 4-bit indices.
  q = gmp_jax.quantize({'w': jnp.asarray(weights[:1000], jnp.float32)},
                       capped)
  assert len(np.unique(np.asarray(q['w']))) <= 16
  assert gmp_jax.merge_components(mixture, max_components=4).num_components == 4


@pytest.mark.parametrize('bad', [1, 0, -3, 2.5, True, '16'])
def test_max_components_bad_input(bad):
  mixture = _mixture([0.0, 0.3, 0.6], [0.01] * 3, [1 / 3] * 3)
  with pytest.raises(ValueError, match=(
      r'max_components must be None or an int >= 2 \(the zero component '
      r'and one value\), got ' + re.escape(repr(bad)))):
    gmp_jax.merge_components(mixture, max_components=bad)


def _far_apart_17(params, means, std, leaf_scale=None):
  """17 components, equal proportions, every pair's symmetric KL > 10."""
  like = gmp_jax.init_mixture(params, 17, leaf_scale=leaf_scale)
  means = np.asarray(means, np.float64)
  # An independent float64 check that the KL rules alone would merge none.
  d2 = (means[:, None] - means[None]) ** 2
  np.fill_diagonal(d2, np.inf)
  assert np.min(d2 / (2 * std**2)) > 10  # Sym. KL of equal-width pairs.
  return gmp_jax.GaussianMixture(
      jnp.asarray(means[1:], jnp.float32),
      jnp.full(17, -2 * np.log(std), jnp.float32),
      jnp.full(17, -np.log(17), jnp.float32), zero_proportion=None,
      signature=like.signature, leaf_scales=like.leaf_scales)


def _distinct_per_leaf(quantized):
  return [np.unique(np.asarray(x)).size for x in jax.tree.leaves(quantized)]


@pytest.mark.parametrize('leaf_scale', [None, 'rms'])
def test_default_caps_17_far_apart_components_at_16_values(leaf_scale):
  """The defaults: at most 16 values per leaf, zero included (4 bits)."""
  rng = np.random.default_rng(3)
  params = {'a': jnp.asarray(rng.uniform(-0.9, 0.9, (40, 50)), jnp.float32),
            'b': {'c': jnp.asarray(rng.uniform(-0.3, 0.3, 3000),
                                   jnp.float32)}}
  half = np.linspace(0.1, 0.8, 8)
  mixture = _far_apart_17(params, np.concatenate([[0.0], -half[::-1], half]),
                          0.01, leaf_scale)
  uncapped = gmp_jax.merge_components(mixture, max_components=None)
  assert uncapped.num_components == 17
  merged = gmp_jax.merge_components(mixture)
  assert merged.num_components == 16
  assert merged.leaf_scales == mixture.leaf_scales
  zero = np.asarray(merged.means)[0]
  assert zero == 0.0 and not np.signbit(zero)
  # Every merged mean is one of the given ones or lies between two of them.
  assert np.all(np.abs(np.asarray(merged.means)) <= 0.8 + 1e-6)
  # quantize: at most 16 distinct values in each leaf, counted by NumPy;
  # without the cap some leaf holds 17.
  assert max(_distinct_per_leaf(gmp_jax.quantize(params, merged))) <= 16
  assert max(_distinct_per_leaf(gmp_jax.quantize(params, uncapped))) == 17
  # The cap keeps the pruned set: NumPy float64 argmax (unit scales only).
  if leaf_scale is None:
    w = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
    clear = _clear(w, mixture) & _clear(w, merged)
    np.testing.assert_array_equal((_assign(w, mixture) == 0)[clear],
                                  (_assign(w, merged) == 0)[clear])
