"""Tests for gmp_jax.optim: partition labels and per-group learning rates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gmp_jax
from gmp_jax import optim


def _setup():
  params = {'w': jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), 'b': jnp.ones(4)}
  mixture = gmp_jax.init_mixture(params, 4, learn_zero_proportion=True)
  return params, mixture


def test_labels():
  params, mixture = _setup()
  labels = optim.partition_labels((params, mixture))
  assert jax.tree.leaves(labels[0]) == ['weights', 'weights']
  assert labels[1].nonzero_means == 'means'
  assert labels[1].log_precisions == 'log_precisions'
  assert labels[1].mixing_logits == 'mixing'


@pytest.mark.parametrize('frozen', ['weights', 'means', 'log_precisions',
                                    'mixing'])
def test_zero_learning_rate_freezes_only_its_group(frozen):
  params, mixture = _setup()
  tx = gmp_jax.gmp_optimizer(**{frozen: 0.0})
  state = tx.init((params, mixture))
  loss = lambda t: -gmp_jax.mixture_log_prob(*t) + jnp.sum(t[0]['w']**2)

  @jax.jit
  def step(tree, state):
    g = jax.grad(loss)(tree)
    updates, state = tx.update(g, state, tree)
    return optax.apply_updates(tree, updates), state

  tree = (params, mixture)
  for _ in range(3):
    tree = step(tree, state)[0]
  new_params, new_mixture = tree
  groups = {'weights': (params, new_params),
            'means': (mixture.nonzero_means, new_mixture.nonzero_means),
            'log_precisions': (mixture.log_precisions,
                               new_mixture.log_precisions),
            'mixing': (mixture.mixing_logits, new_mixture.mixing_logits)}
  for name, (old, new) in groups.items():
    same = all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(old), jax.tree.leaves(new)))
    assert same == (name == frozen), name


def test_schedules_accepted():
  params, mixture = _setup()
  tx = gmp_jax.gmp_optimizer(weights=optax.linear_schedule(1e-3, 0.0, 10))
  state = tx.init((params, mixture))
  g = jax.tree.map(jnp.ones_like, (params, mixture))
  updates, _ = tx.update(g, state, (params, mixture))
  assert jnp.all(updates[0]['w'] < 0)


def test_bad_learning_rate():
  with pytest.raises(ValueError, match='means'):
    gmp_jax.gmp_optimizer(means=-1.0)


def test_apply_optimizer_runs_adam_under_strict_promotion():
  """One Adam step, by hand: w - lr * g / (|g| + eps) at step 1."""
  params = {'w': jnp.asarray([1.0, -2.0], jnp.float32)}
  grads = {'w': jnp.asarray([0.5, -0.25], jnp.float32)}
  tx = optax.adam(0.1)
  with jax.numpy_dtype_promotion('strict'):
    opt_state = optim.promotion_safe(tx).init(params)
    new, _ = jax.jit(lambda g, s, p: optim.apply_optimizer(tx, g, s, p))(
        grads, opt_state, params)
  g = np.asarray(grads['w'], np.float64)
  want = np.asarray(params['w'], np.float64) - 0.1 * g / (np.abs(g) + 1e-8)
  np.testing.assert_allclose(new['w'], want, rtol=1e-6)
