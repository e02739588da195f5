"""Equinox models through the pure functions: partition, retrain, quantise,
save, rebuild with `eqx.combine`."""

import io

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gmp_jax


class SmallCNN(eqx.Module):
  """A conv layer and an MLP head, plus leaves that are not parameters."""
  conv: eqx.nn.Conv2d
  mlp: eqx.nn.MLP
  num_classes: int  # A Python int leaf (not marked static).
  pool_size: jax.Array  # An integer array leaf.
  scale: float  # A Python float leaf.

  def __init__(self, key, num_classes=10):
    k1, k2 = jax.random.split(key)
    self.conv = eqx.nn.Conv2d(1, 4, kernel_size=3, stride=2, key=k1)
    self.mlp = eqx.nn.MLP(4 * 13 * 13, num_classes, 32, depth=1,
                          activation=jax.nn.relu, key=k2)
    self.num_classes = num_classes
    self.pool_size = jnp.asarray(2, jnp.int32)
    self.scale = 1.0

  def __call__(self, x):  # One (28, 28) image.
    h = jax.nn.relu(self.conv(x[None]))
    return self.scale * self.mlp(h.reshape(-1))


def _float_array_paths(model):
  """Independent enumeration of the floating-point array leaves."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(model)[0]:
    if isinstance(leaf, jax.Array) and np.issubdtype(np.dtype(leaf.dtype),
                                                     np.floating):
      out.append(jax.tree_util.keystr(path))
  return out


def _data(n=512, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 28, 28)).astype(np.float32)
  # Labels from a random linear rule on a coarse view: learnable.
  w = rng.normal(size=(14 * 14, 10))
  y = np.argmax(x[:, ::2, ::2].reshape(n, -1) @ w, axis=1).astype(np.int32)
  return x, y


def test_default_filter_skips_non_array_leaves():
  model = SmallCNN(jax.random.key(0))
  leaves = jax.tree.leaves(model)
  # The model really has the awkward leaves this test is about.
  assert any(callable(l) for l in leaves)  # Activations.
  assert any(isinstance(l, int) for l in leaves)
  assert any(isinstance(l, float) for l in leaves)
  assert any(getattr(l, 'dtype', None) == jnp.int32 for l in leaves)

  expected = _float_array_paths(model)
  assert len(expected) == 6  # conv w/b, two MLP layers' w/b.
  # The whole model and its eqx.partition give the same covered leaves.
  full = gmp_jax.init_mixture(model, 5)
  params, _ = eqx.partition(model, eqx.is_inexact_array)
  part = gmp_jax.init_mixture(params, 5)
  assert [p for p, _, _ in full.signature] == expected
  assert [p for p, _, _ in part.signature] == expected
  # Quantising the whole model leaves the non-array leaves alone.
  q = gmp_jax.quantize(model, full)
  assert q.mlp.activation is model.mlp.activation
  assert q.num_classes == 10 and q.scale == 1.0
  assert int(q.pool_size) == 2 and q.pool_size.dtype == jnp.int32


def test_filter_choosing_an_int_leaf_is_rejected():
  model = SmallCNN(jax.random.key(0))
  with pytest.raises(TypeError, match='pool_size'):
    gmp_jax.init_mixture(
        model, 3, filter_fn=lambda p, l: 'pool_size' in jax.tree_util.keystr(p))


def _numpy_quantize(w, means, variances, pis):
  """Independent NumPy version of the argmax assignment."""
  w = np.asarray(w, np.float64)[..., None]
  score = (np.log(pis) - 0.5 * np.log(variances)
           - 0.5 * (w - means) ** 2 / variances)
  idx = np.argmax(score, axis=-1)
  return np.where(idx == 0, 0.0, means[idx])


def test_retrain_quantise_save_rebuild():
  x, y = _data()
  model = SmallCNN(jax.random.key(1))
  params, static = eqx.partition(model, eqx.is_inexact_array)

  def logits_fn(p, xb):
    return jax.vmap(eqx.combine(p, static))(xb)

  # 1. Pretrain (prior off) with plain optax.
  tx0 = optax.adam(3e-3)

  @jax.jit
  def pre_step(p, opt, xb, yb):
    loss, g = jax.value_and_grad(
        lambda p: gmp_jax.cross_entropy_loss(logits_fn(p, xb), yb))(p)
    with jax.numpy_dtype_promotion('standard'):  # optax's Adam mixes dtypes.
      upd, opt = tx0.update(g, opt, p)
    return optax.apply_updates(p, upd), opt, loss

  opt = tx0.init(params)
  rng = np.random.default_rng(0)
  for _ in range(150):
    i = rng.choice(len(x), 64, replace=False)
    params, opt, _ = pre_step(params, opt, x[i], y[i])

  def accuracy(p):
    return float(np.mean(np.argmax(logits_fn(p, x), -1) == y))

  acc_pre = accuracy(params)
  assert acc_pre > 0.5  # Chance is 0.1.

  # 2. Retrain with the prior: gmp_objective + gmp_optimizer, pure pieces.
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale=None, init_std=0.02,
                                 zero_proportion=0.9)
  tx = gmp_jax.gmp_optimizer(weights=1e-3, means=1e-3)
  teacher = logits_fn(params, x)

  def loss_fn(p, mix, xb, tb, yb):
    logits = logits_fn(p, xb)
    data = (gmp_jax.distillation_loss(logits, tb, 2.0)
            + gmp_jax.cross_entropy_loss(logits, yb))
    return gmp_jax.gmp_objective(data, p, mix, tau=5e-2,
                                 dataset_size=len(x))

  @jax.jit
  def step(p, mix, opt, xb, tb, yb):
    (loss, aux), grads = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(p, mix, xb, tb, yb)
    upd, opt = tx.update(grads, opt, (p, mix))
    p, mix = optax.apply_updates((p, mix), upd)
    return p, mix, opt, aux

  opt = tx.init((params, mixture))
  first = None
  for _ in range(300):
    i = rng.choice(len(x), 64, replace=False)
    params, mixture, opt, aux = step(params, mixture, opt, x[i], teacher[i],
                                     y[i])
    first = float(aux['complexity_loss']) if first is None else first
  assert float(aux['complexity_loss']) < first

  # 3. Quantise; check against an independent NumPy assignment.
  merged = gmp_jax.merge_components(mixture)
  qparams = gmp_jax.quantize(params, merged)
  means = np.asarray(merged.means, np.float64)
  variances = np.asarray(merged.variances, np.float64)
  pis = np.asarray(merged.mixing_proportions, np.float64)
  for w, qw in zip(jax.tree.leaves(params), jax.tree.leaves(qparams)):
    expected = _numpy_quantize(w, means, variances, pis)
    np.testing.assert_allclose(np.asarray(qw), expected, rtol=1e-6,
                               atol=1e-7)
  qmodel = eqx.combine(qparams, static)
  values = np.concatenate([np.ravel(l) for l in jax.tree.leaves(qparams)])
  assert len(np.unique(values[values != 0])) <= merged.num_components - 1
  assert np.mean(values == 0) > 0.5
  assert accuracy(qparams) > 0.8

  # 4. Save under path names (the file takes dicts), rebuild, compare.
  flat = {jax.tree_util.keystr(p): leaf for p, leaf in
          jax.tree_util.tree_flatten_with_path(qparams)[0]}
  buf = io.BytesIO()
  gmp_jax.save_compressed(buf, flat)
  buf.seek(0)
  loaded = gmp_jax.load_compressed(buf)
  assert list(loaded) == list(flat)

  fresh = SmallCNN(jax.random.key(99))  # Different init: nothing reused.
  fresh_params, fresh_static = eqx.partition(fresh, eqx.is_inexact_array)
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(fresh_params)[0]]
  rebuilt = eqx.combine(
      jax.tree.unflatten(jax.tree.structure(fresh_params),
                         [jnp.asarray(loaded[p]) for p in paths]),
      fresh_static)
  for a, b in zip(jax.tree.leaves(qparams), jax.tree.leaves(
      eqx.filter(rebuilt, eqx.is_inexact_array))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(
      np.asarray(jax.vmap(rebuilt)(x)), np.asarray(jax.vmap(qmodel)(x)))
  assert rebuilt.num_classes == 10 and int(rebuilt.pool_size) == 2
