"""Tests for gmp_jax.finetune against independent NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gmp_jax
from gmp_jax import finetune
import helpers

D_IN, D_HID, D_OUT = helpers.MLP_DIMS
BATCH = 32
_apply = helpers.mlp_apply
_params = helpers.mlp_params
_np_forward_backward = helpers.np_mlp_forward_backward


def _quantized(seed=0, num_components=5):
  params = _params(seed)
  mixture = helpers.shared_mixture(params, num_components, init_std=0.08,
                                 zero_proportion=0.6)
  mixture = gmp_jax.merge_components(mixture, threshold=0.0)
  return params, mixture, gmp_jax.quantize(params, mixture)


def _batch(seed=1):
  rng = np.random.default_rng(seed)
  x = rng.normal(0, 1, (BATCH, D_IN)).astype(np.float32)
  return x, rng.integers(0, D_OUT, BATCH)


def _np_loss_of_codebook(codebook, indices, x, labels):
  table = np.concatenate([[0.0], np.asarray(codebook, np.float64)])
  p = jax.tree.map(lambda i: table[np.asarray(i)], indices)
  return _np_forward_backward(p, x.astype(np.float64), labels)[0]


def _ce_loss(codebook, indices, x, labels):
  logits = _apply(finetune.expand_codebook(codebook, indices), x)
  return gmp_jax.cross_entropy_loss(logits, labels)


@pytest.mark.parametrize('use_mixture', [False, True])
def test_expand_reproduces_the_quantized_tree_bit_for_bit(use_mixture):
  _, mixture, q = _quantized()
  codebook, indices, mask = finetune.codebook_from_quantized(
      q, mixture if use_mixture else None)
  out = finetune.expand_codebook(codebook, indices)
  for leaf_q, leaf_out, leaf_m, leaf_i in zip(
      jax.tree.leaves(q), jax.tree.leaves(out), jax.tree.leaves(mask),
      jax.tree.leaves(indices)):
    assert leaf_out.dtype == leaf_q.dtype and leaf_out.shape == leaf_q.shape
    np.testing.assert_array_equal(
        np.asarray(leaf_out).view(np.uint32), np.asarray(leaf_q).view(np.uint32))
    np.testing.assert_array_equal(leaf_m, np.asarray(leaf_q) != 0)
    assert leaf_i.dtype == jnp.int32
  if use_mixture:
    np.testing.assert_array_equal(codebook, np.asarray(mixture.means[1:]))
  else:
    values = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(q)])
    np.testing.assert_array_equal(codebook, np.unique(values[values != 0]))


def test_filter_fn_codes_only_the_leaves_the_mixture_covered():
  """Kernels-only: the float biases stay uncoded, whatever their values."""
  params = _params(0)
  mixture = helpers.shared_mixture(params, 5, filter_fn='kernels',
                                 init_std=0.08, zero_proportion=0.6)
  q = gmp_jax.quantize(params, gmp_jax.merge_components(mixture,
                                                        threshold=0.0))
  codebook, indices, mask = finetune.codebook_from_quantized(
      q, filter_fn='kernels')
  flat_q = jax.tree_util.tree_flatten_with_path(q)[0]
  flat_i = jax.tree.leaves(indices, is_leaf=lambda x: x is None)
  flat_m = jax.tree.leaves(mask, is_leaf=lambda x: x is None)
  kernels = []
  for (path, leaf), i, m in zip(flat_q, flat_i, flat_m):
    if 'kernel' in jax.tree_util.keystr(path):
      kernels.append(np.asarray(leaf))
      np.testing.assert_array_equal(m, np.asarray(leaf) != 0)
    else:  # A bias: not coded, though its values are floats.
      assert i is None and m is None
  values = np.concatenate([k.ravel() for k in kernels])
  np.testing.assert_array_equal(codebook, np.unique(values[values != 0]))
  # Without the filter the biases' distinct values join the codebook.
  everything, _, _ = finetune.codebook_from_quantized(q, max_size=10**6)
  assert everything.size > codebook.size
  with pytest.raises(ValueError, match='not both'):
    finetune.codebook_from_quantized(q, mixture, filter_fn='kernels')


def test_codebook_gradient_is_the_sum_of_per_weight_gradients():
  _, _, q = _quantized()
  x, labels = _batch()
  codebook, indices, _ = finetune.codebook_from_quantized(q)
  got = np.asarray(jax.grad(_ce_loss)(codebook, indices, x, labels))
  # Independent: float64 NumPy backprop per weight, summed per cluster.
  loss, grads = _np_forward_backward(q, x.astype(np.float64), labels)
  want = np.zeros(codebook.shape[0] + 1)
  for g, i in zip(jax.tree.leaves(grads), jax.tree.leaves(indices)):
    want += np.bincount(np.asarray(i).ravel(), weights=g.ravel(),
                        minlength=want.size)
  assert np.all(want[1:] != 0)  # Every cluster has weights and a gradient.
  np.testing.assert_allclose(got, want[1:], rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(_ce_loss(codebook, indices, x, labels), loss,
                             rtol=1e-5)


def test_per_leaf_codebook_gradient_is_the_per_leaf_sum():
  _, _, q = _quantized()
  x, labels = _batch()
  shared, shared_indices, _ = finetune.codebook_from_quantized(q)
  codebook, indices = finetune.tiled_per_leaf_codebook(shared, shared_indices)
  k, leaves = shared.shape[0], len(jax.tree.leaves(q))
  assert codebook.shape == (leaves * k,)
  # The same tree, bit for bit, before any training.
  for a, b in zip(jax.tree.leaves(finetune.expand_codebook(codebook, indices)),
                  jax.tree.leaves(q)):
    np.testing.assert_array_equal(np.asarray(a).view(np.uint32),
                                  np.asarray(b).view(np.uint32))
  got = np.asarray(jax.grad(_ce_loss)(codebook, indices, x, labels))
  # Independent: NumPy per-weight gradients, summed per leaf and cluster.
  _, grads = _np_forward_backward(q, x.astype(np.float64), labels)
  want = []
  for g, i in zip(jax.tree.leaves(grads), jax.tree.leaves(shared_indices)):
    want.append(np.bincount(np.asarray(i).ravel(), weights=g.ravel(),
                            minlength=k + 1)[1:])
  np.testing.assert_allclose(got, np.concatenate(want), rtol=2e-4, atol=1e-6)
  # Pruned weights keep index 0 in every leaf.
  for a, b in zip(jax.tree.leaves(indices), jax.tree.leaves(shared_indices)):
    np.testing.assert_array_equal(np.asarray(a) == 0, np.asarray(b) == 0)


def test_per_leaf_codebook_rejects_a_matrix():
  with pytest.raises(ValueError, match='1-D'):
    finetune.tiled_per_leaf_codebook(jnp.ones((2, 2)),
                                     {'w': jnp.zeros(3, jnp.int32)})


def test_codebook_gradient_matches_finite_differences():
  _, _, q = _quantized(seed=3)
  x, labels = _batch(seed=4)
  codebook, indices, _ = finetune.codebook_from_quantized(q)
  got = np.asarray(jax.grad(_ce_loss)(codebook, indices, x, labels))
  c = np.asarray(codebook, np.float64)
  h = 1e-6
  fd = []
  for k in range(c.size):
    e = np.zeros_like(c)
    e[k] = h
    fd.append((_np_loss_of_codebook(c + e, indices, x, labels)
               - _np_loss_of_codebook(c - e, indices, x, labels)) / (2 * h))
  np.testing.assert_allclose(got, fd, rtol=1e-3, atol=1e-6)


def test_unused_mixture_components_get_zero_gradient():
  params = _params()
  mixture = helpers.shared_mixture(params, 5, init_std=0.08,
                                 zero_proportion=0.6)
  # A far-away component that no weight is assigned to.
  mixture = mixture.replace(
      nonzero_means=mixture.nonzero_means.at[-1].set(50.0))
  q = gmp_jax.quantize(params, mixture)
  codebook, indices, _ = finetune.codebook_from_quantized(q, mixture)
  assert codebook.shape == (4,)
  x, labels = _batch()
  grad = jax.grad(_ce_loss)(codebook, indices, x, labels)
  assert grad[-1] == 0.0 and np.all(np.asarray(grad[:-1]) != 0)


def test_finetuning_keeps_zeros_and_distinct_values_and_lowers_the_loss():
  params, _, q = _quantized()
  rng = np.random.default_rng(7)
  x = rng.normal(0, 1, (256, D_IN)).astype(np.float32)
  data = {'x': x, 'teacher_logits': np.asarray(_apply(params, x))}
  tx = optax.adam(1e-2)
  codebook, indices, mask = finetune.codebook_from_quantized(q)
  state = finetune.create_codebook_state(codebook, indices, tx, frozen=q)
  step = jax.jit(finetune.make_codebook_step(
      _apply, tx, loss=gmp_jax.LossOptions(temperature=2.0)))

  def distill(p):
    return float(gmp_jax.distillation_loss(_apply(p, x),
                                           data['teacher_logits'], 2.0))

  before = distill(q)
  for t in range(60):
    sel = rng.choice(len(x), 64, replace=False)
    state, metrics = step(state, jax.tree.map(lambda a: a[sel], data))
    assert np.isfinite(float(metrics['loss']))
  assert int(state.step) == 60
  tuned = finetune.expand_codebook(state.codebook, state.indices,
                                   state.frozen)
  assert distill(tuned) < 0.95 * before
  assert not np.array_equal(state.codebook, codebook)
  for leaf_q, leaf_t, leaf_m in zip(jax.tree.leaves(q), jax.tree.leaves(tuned),
                                    jax.tree.leaves(mask)):
    leaf_q, leaf_t = np.asarray(leaf_q), np.asarray(leaf_t)
    np.testing.assert_array_equal(leaf_t != 0, leaf_m)
    np.testing.assert_array_equal(leaf_t[~np.asarray(leaf_m)].view(np.uint32),
                                  0)
    assert (np.unique(leaf_t[leaf_t != 0]).size
            == np.unique(leaf_q[leaf_q != 0]).size)
  all_q = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(q)])
  all_t = np.concatenate([np.asarray(v).ravel()
                          for v in jax.tree.leaves(tuned)])
  assert np.unique(all_t[all_t != 0]).size == np.unique(all_q[all_q != 0]).size
  # The same cluster partition: equal before <=> equal after.
  _, inv_q = np.unique(all_q, return_inverse=True)
  _, inv_t = np.unique(all_t, return_inverse=True)
  pairs = set(zip(inv_q.tolist(), inv_t.tolist()))
  assert len(pairs) == len(set(inv_q.tolist())) == len(set(inv_t.tolist()))


def test_frozen_leaves_pass_through_and_stay_fixed():
  params = _params()
  mixture = helpers.shared_mixture(params, 4, init_std=0.08,
                                 filter_fn=lambda p, x: x.ndim == 2)
  q = gmp_jax.quantize(params, mixture)
  codebook, indices, mask = finetune.codebook_from_quantized(q, mixture)
  assert indices['l1']['bias'] is None and mask['l2']['bias'] is None
  tx = optax.sgd(0.1)
  state = finetune.create_codebook_state(codebook, indices, tx, frozen=q)
  assert state.frozen['l1']['kernel'] is None
  x, labels = _batch()
  step = jax.jit(finetune.make_codebook_step(_apply, tx))
  state, _ = step(state, {'x': x, 'label': labels})
  out = finetune.expand_codebook(state.codebook, state.indices, state.frozen)
  np.testing.assert_array_equal(out['l1']['bias'], params['l1']['bias'])
  np.testing.assert_array_equal(out['l2']['bias'], params['l2']['bias'])
  # Plain SGD: the update is -lr times the summed gradient, per cluster.
  loss_fn = lambda c: gmp_jax.cross_entropy_loss(
      _apply(finetune.expand_codebook(c, indices, q), x), labels)
  grad = jax.grad(loss_fn)(codebook)
  np.testing.assert_allclose(state.codebook, codebook - 0.1 * grad,
                             rtol=1e-6, atol=1e-7)


def test_works_with_the_multi_step_driver():
  params, _, q = _quantized()
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (128, D_IN)).astype(np.float32)
  data = {'x': x, 'label': rng.integers(0, D_OUT, 128)}
  tx = optax.adam(1e-3)
  codebook, indices, _ = finetune.codebook_from_quantized(q)
  state = finetune.create_codebook_state(codebook, indices, tx, frozen=q)
  step = finetune.make_codebook_step(_apply, tx)
  multi = gmp_jax.compile_step(gmp_jax.make_multi_step(step))
  order = jnp.asarray(rng.permutation(128)[:96].reshape(3, 32))
  state_m, metrics = multi(state, data, order)
  state_s = state
  for t in range(3):
    state_s, _ = jax.jit(step)(state_s, jax.tree.map(lambda a: a[order[t]],
                                                      data))
  assert metrics['loss'].shape == (3,)
  np.testing.assert_allclose(state_m.codebook, state_s.codebook, rtol=1e-5)
  del params


def test_bad_inputs_raise():
  params, mixture, q = _quantized()
  with pytest.raises(ValueError, match='max_size'):
    finetune.codebook_from_quantized(params, max_size=100)
  with pytest.raises(ValueError, match='max_size must be'):
    finetune.codebook_from_quantized(q, max_size=0)
  with pytest.raises(ValueError, match='equal to no codebook value'):
    finetune.codebook_from_quantized(params, mixture)
  nan = jax.tree.map(lambda a: a, q)
  nan['l1']['kernel'] = nan['l1']['kernel'].at[0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match='non-finite'):
    finetune.codebook_from_quantized(nan)
  mixed = dict(q, l2={'kernel': q['l2']['kernel'].astype(jnp.bfloat16),
                      'bias': q['l2']['bias']})
  with pytest.raises(ValueError, match='one dtype'):
    finetune.codebook_from_quantized(mixed)
  with pytest.raises(ValueError, match='zero'):
    finetune.codebook_from_quantized(jax.tree.map(jnp.zeros_like, q))
  with pytest.raises(ValueError, match='another tree'):
    finetune.codebook_from_quantized({'l1': q['l1']}, mixture)
  codebook, indices, _ = finetune.codebook_from_quantized(q)
  with pytest.raises(ValueError, match='1-D'):
    finetune.expand_codebook(codebook[None], indices)
  with pytest.raises(ValueError, match='must lie in'):
    finetune.expand_codebook(codebook[:-1], indices)
  with pytest.raises(ValueError, match='must lie in'):
    finetune.expand_codebook(codebook, {'a': jnp.array([-1, 0])})
  with pytest.raises(TypeError, match='integer'):
    finetune.expand_codebook(codebook, {'a': jnp.array([0.0])})
  with pytest.raises(TypeError, match='floating'):
    finetune.expand_codebook(jnp.arange(3), indices)
  with pytest.raises(ValueError, match='distillation'):
    finetune.make_codebook_step(_apply, optax.sgd(1.0),
                                loss=gmp_jax.LossOptions(distillation='l1'))
  with pytest.raises(ValueError, match='temperature'):
    finetune.make_codebook_step(_apply, optax.sgd(1.0),
                                loss=gmp_jax.LossOptions(temperature=0.0))
