"""Tests of straight-through fine-tuning (gmp_jax.finetune) against independent NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gmp_jax
from gmp_jax import finetune as st
import helpers

CODEBOOK = np.array([-0.9, -0.5, -0.2, 0.15, 0.4, 0.8], np.float32)


def _mask(params, seed=5, keep=0.6):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda w: jnp.asarray(rng.random(w.shape) < keep),
                      params)


def _np_quantise(w, m, c):
  w = np.asarray(w, np.float64)
  idx = np.argmin(np.abs(w[..., None] - np.asarray(c, np.float64)), -1)
  return np.where(np.asarray(m), np.asarray(c)[idx], 0).astype(np.float32), idx


def _batch(seed=1, n=32):
  rng = np.random.default_rng(seed)
  x = rng.normal(0, 1, (n, helpers.MLP_DIMS[0])).astype(np.float32)
  return x, rng.integers(0, helpers.MLP_DIMS[2], n)


def test_values_are_the_nearest_codebook_values_and_zeros():
  latent, mask = helpers.mlp_params(), _mask(helpers.mlp_params())
  out = st.straight_through_params(latent, jnp.asarray(CODEBOOK), mask)
  indices = st.nearest_indices(latent, jnp.asarray(CODEBOOK), mask)
  for w, m, q, i in zip(*(jax.tree.leaves(t) for t in
                          (latent, mask, out, indices))):
    want, idx = _np_quantise(w, m, CODEBOOK)
    np.testing.assert_array_equal(np.asarray(q).view(np.uint32),
                                  np.where(np.asarray(m), want, 0).view(np.uint32))
    np.testing.assert_array_equal(i, np.where(np.asarray(m), idx + 1, 0))


def test_gradients_pass_straight_through_and_sum_per_cluster():
  params = helpers.mlp_params()
  mask = _mask(params)
  x, labels = _batch()

  def loss(latent, codebook):
    q = st.straight_through_params(latent, codebook, mask)
    return gmp_jax.cross_entropy_loss(helpers.mlp_apply(q, x), labels)

  g_latent, g_codebook = jax.grad(loss, argnums=(0, 1))(
      params, jnp.asarray(CODEBOOK))
  # Independent: float64 NumPy backprop through the quantised net.
  quantised, clusters = {}, {}
  for layer in params:
    quantised[layer], clusters[layer] = {}, {}
    for name, w in params[layer].items():
      quantised[layer][name], clusters[layer][name] = _np_quantise(
          w, mask[layer][name], CODEBOOK)
  _, grads = helpers.np_mlp_forward_backward(quantised, x.astype(np.float64),
                                             labels)
  want_codebook = np.zeros(CODEBOOK.size)
  for layer in params:
    for name in params[layer]:
      m = np.asarray(mask[layer][name])
      g = grads[layer][name]
      np.testing.assert_allclose(g_latent[layer][name], np.where(m, g, 0),
                                 rtol=2e-4, atol=1e-6)
      want_codebook += np.bincount(clusters[layer][name][m],
                                   weights=g[m], minlength=CODEBOOK.size)
  np.testing.assert_allclose(g_codebook, want_codebook, rtol=2e-4, atol=1e-6)


def test_per_leaf_codebooks_get_their_own_leaf_sums():
  params = helpers.mlp_params(seed=2)
  mask = _mask(params, seed=3)
  codebooks = st.per_leaf_codebook_tree(jnp.asarray(CODEBOOK), mask)
  # A linear loss: dL/dq is the fixed tree g.
  g = helpers.random_tree({'l1': {'kernel': (12, 9), 'bias': (9,)},
                           'l2': {'kernel': (9, 4), 'bias': (4,)}}, seed=4)

  def loss(c):
    q = st.straight_through_params(params, c, mask)
    return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(q),
                                              jax.tree.leaves(g)))

  got = jax.grad(loss)(codebooks)
  for w, m, gl, cg in zip(*(jax.tree.leaves(t) for t in
                            (params, mask, g, got))):
    _, idx = _np_quantise(w, m, CODEBOOK)
    m = np.asarray(m)
    np.testing.assert_allclose(
        cg, np.bincount(idx[m], weights=np.asarray(gl)[m],
                        minlength=CODEBOOK.size), rtol=1e-5, atol=1e-7)


def test_one_sgd_step_moves_latents_across_midpoints():
  # Latent weights just below the midpoints between neighbouring values; a
  # linear loss sum(q * g) with g < 0 pushes them over by lr * |g|.
  mids = (CODEBOOK[:-1] + CODEBOOK[1:]) / 2
  latent = {'w': jnp.asarray(np.concatenate([mids - 0.01, mids - 0.05]))}
  g = np.concatenate([np.full(mids.size, -1.0), np.full(mids.size, -1.0)])
  mask = {'w': jnp.asarray(np.arange(latent['w'].size) != 3)}
  lr = 0.02
  tx = optax.sgd(lr)
  state = st.create_straight_through_state(latent, jnp.asarray(CODEBOOK),
                                           mask, tx)

  def data_loss(outputs, batch):
    del batch
    loss = jnp.sum(outputs['w'] * jnp.asarray(g, jnp.float32))
    return loss, {}

  step = jax.jit(st.make_straight_through_step(
      lambda params, x: params, tx,
      loss=gmp_jax.LossOptions(data_loss_fn=data_loss)))
  new, metrics = step(state, {'x': jnp.zeros(())})
  m = np.asarray(mask['w'])
  want_latent = np.where(m, np.asarray(latent['w']) - lr * g, 0)
  np.testing.assert_allclose(new.latent['w'], want_latent, rtol=1e-6)
  _, before = _np_quantise(latent['w'], m, CODEBOOK)
  _, after = _np_quantise(want_latent, m, CODEBOOK)
  want_codebook = CODEBOOK - lr * np.bincount(before[m], weights=g[m],
                                              minlength=CODEBOOK.size)
  np.testing.assert_allclose(new.codebook, want_codebook, rtol=1e-6)
  # With the codebook held still, the first half crosses its midpoint and
  # changes cluster; the second does not.
  frozen_codebook = optax.multi_transform(
      {'sgd': tx, 'hold': optax.set_to_zero()},
      lambda p: {'latent': jax.tree.map(lambda _: 'sgd', p['latent']),
                 'codebook': 'hold'})
  held = st.create_straight_through_state(latent, jnp.asarray(CODEBOOK), mask,
                                          frozen_codebook)
  held, metrics = jax.jit(st.make_straight_through_step(
      lambda params, x: params, frozen_codebook,
      loss=gmp_jax.LossOptions(data_loss_fn=data_loss)))(
          held, {'x': jnp.zeros(())})
  np.testing.assert_array_equal(held.codebook, CODEBOOK)
  np.testing.assert_allclose(held.latent['w'], want_latent, rtol=1e-6)
  now = np.asarray(st.nearest_indices(held.latent, held.codebook, mask)['w'])
  np.testing.assert_array_equal(now, np.where(m, after + 1, 0))
  changed = np.sum(after[m] != before[m])
  assert changed == mids.size - 1  # Position 3, below a midpoint, is pruned.
  np.testing.assert_allclose(metrics['reassigned'], changed / m.sum(),
                             rtol=1e-6)
  assert float(new.latent['w'][3]) == 0.0


def test_training_keeps_zeros_and_values_and_lowers_the_distillation_loss():
  teacher = helpers.mlp_params(seed=6)
  mask = _mask(teacher, seed=7, keep=0.7)
  rng = np.random.default_rng(8)
  x = rng.normal(0, 1, (256, helpers.MLP_DIMS[0])).astype(np.float32)
  data = {'x': x, 'teacher_logits': np.asarray(helpers.mlp_apply(teacher, x))}
  tx = optax.adam(1e-2)
  state = st.create_straight_through_state(
      st.masked_latent(teacher, mask), jnp.asarray(CODEBOOK), mask, tx)
  step = jax.jit(st.make_straight_through_step(
      helpers.mlp_apply, tx, loss=gmp_jax.LossOptions(temperature=2.0)))

  def distill(p):
    return float(gmp_jax.distillation_loss(helpers.mlp_apply(p, x),
                                           data['teacher_logits'], 2.0))

  before = distill(state.quantized_params())
  for _ in range(80):
    sel = rng.choice(len(x), 64, replace=False)
    state, metrics = step(state, jax.tree.map(lambda a: a[sel], data))
    assert np.isfinite(float(metrics['loss']))
  assert int(state.step) == 80
  tuned = state.quantized_params()
  assert distill(tuned) < 0.9 * before
  codebook = np.asarray(state.codebook)
  for q, m in zip(jax.tree.leaves(tuned), jax.tree.leaves(mask)):
    q, m = np.asarray(q), np.asarray(m)
    assert np.all(q[~m] == 0)
    assert set(np.unique(q[m]).tolist()) <= set(codebook.tolist())


def test_quantised_latents_give_back_the_quantised_tree_bit_for_bit():
  params = helpers.mlp_params()
  mixture = gmp_jax.merge_components(
      gmp_jax.init_mixture(params, 5, init_std=0.08, zero_proportion=0.6),
      threshold=0.0)
  quantized = gmp_jax.quantize(params, mixture)
  codebook, _, mask = gmp_jax.codebook_from_quantized(quantized)
  out = st.straight_through_params(st.masked_latent(quantized, mask),
                                   codebook, mask)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(quantized)):
    np.testing.assert_array_equal(np.asarray(a).view(np.uint32),
                                  np.asarray(b).view(np.uint32))


def test_leaves_not_coded_come_from_frozen():
  params = helpers.mlp_params()
  mask = _mask(params)
  mask['l1']['bias'] = mask['l2']['bias'] = None
  latent = st.masked_latent(params, mask)
  state = st.create_straight_through_state(latent, jnp.asarray(CODEBOOK),
                                           mask, optax.adam(1e-3),
                                           frozen=params)
  assert state.frozen['l1']['kernel'] is None
  out = state.quantized_params()
  np.testing.assert_array_equal(out['l1']['bias'], params['l1']['bias'])
  np.testing.assert_array_equal(out['l2']['bias'], params['l2']['bias'])


@pytest.mark.parametrize('case, error, match', [
    ('shape', ValueError, 'does not match'),
    ('codebook_2d', ValueError, '1-D codebook'),
    ('codebook_empty', ValueError, '1-D codebook'),
    ('codebook_int', TypeError, 'floating'),
    ('latent_int', TypeError, 'floating'),
    ('no_mask', ValueError, 'codes no leaf'),
    ('tree_mismatch', ValueError, 'per-leaf codebook'),
    ('extra_latent', ValueError, 'mask codes none'),
])
def test_bad_input_is_rejected(case, error, match):
  latent = {'a': jnp.ones((3, 2)), 'b': jnp.ones(4)}
  mask = {'a': jnp.ones((3, 2), bool), 'b': jnp.ones(4, bool)}
  codebook = jnp.asarray(CODEBOOK)
  if case == 'shape':
    mask['b'] = jnp.ones(5, bool)
  elif case == 'codebook_2d':
    codebook = jnp.ones((2, 3))
  elif case == 'codebook_empty':
    codebook = jnp.zeros((0,))
  elif case == 'codebook_int':
    codebook = jnp.arange(3)
  elif case == 'latent_int':
    latent['a'] = jnp.ones((3, 2), jnp.int32)
  elif case == 'no_mask':
    mask = {'a': None, 'b': None}
    latent = {'a': None, 'b': None}
  elif case == 'tree_mismatch':
    codebook = {'a': codebook}
  elif case == 'extra_latent':
    mask['b'] = None
  with pytest.raises(error, match=match):
    st.create_straight_through_state(latent, codebook, mask, optax.adam(1e-3))


def test_bad_distillation_is_rejected():
  with pytest.raises(ValueError, match='distillation'):
    st.make_straight_through_step(
        helpers.mlp_apply, optax.adam(1e-3),
        loss=gmp_jax.LossOptions(distillation='l1'))
