"""Tests for gmp_jax.train: pure steps, compile-once, sharding, pytrees."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import gmp_jax
import helpers


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(4)(x)


def _data(n=32, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 8)).astype(np.float32)
  y = (x[:, :4].argmax(-1)).astype(np.int32)
  return x, y


def _setup(*, distillation='kl', label_weight=1.0, **step_kwargs):
  model = MLP()
  params = model.init(jax.random.key(0), jnp.zeros((1, 8)))['params']
  apply_fn = lambda p, x: model.apply({'params': p}, x)
  tx, state = helpers.train_state(params, 5)
  loss = gmp_jax.LossOptions(temperature=2.0, distillation=distillation,
                             label_weight=label_weight)
  kwargs = dict(tau=1.0, dataset_size=32, loss=loss)
  kwargs.update(step_kwargs)
  return model, apply_fn, tx, state, kwargs


@pytest.mark.parametrize('keys', [('label',), ('teacher_logits',),
                                  ('label', 'teacher_logits')])
@pytest.mark.parametrize('distillation', ['mse', 'kl'])
def test_three_cases_compile_once(keys, distillation):
  chex.clear_trace_counter()
  _, apply_fn, tx, state, kwargs = _setup(distillation=distillation)
  traced = chex.assert_max_traces(apply_fn, n=1)
  step = gmp_jax.compile_step(gmp_jax.make_train_step(traced, tx, **kwargs))
  x, y = _data()
  teacher = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
  losses = []
  for i in range(4):
    xb = x + 0.01 * i  # New values, same shapes: no retrace.
    batch = {'x': xb, 'label': y, 'teacher_logits': teacher}
    batch = {k: batch[k] for k in ('x',) + keys}
    state, metrics = step(state, batch)
    losses.append(float(metrics['data_loss']))
  assert step._cache_size() == 1
  assert int(state.step) == 4
  for k in ('loss', 'data_loss', 'complexity_loss', 'means', 'variances',
            'mixing_proportions'):
    assert k in metrics
  assert metrics['means'].shape == (5,)
  assert ('accuracy' in metrics) == ('label' in keys)
  assert ('distillation_loss' in metrics) == ('teacher_logits' in keys)
  assert all(np.isfinite(losses))
  assert losses[-1] < losses[0]


def test_loss_decomposition():
  _, apply_fn, tx, state, kwargs = _setup(tau=3.0, label_weight=0.5)
  step = gmp_jax.compile_step(gmp_jax.make_train_step(apply_fn, tx, **kwargs))
  x, y = _data()
  t = np.ones((32, 4), np.float32)
  _, m = step(state, {'x': x, 'label': y, 'teacher_logits': t})
  logits = apply_fn(state.params, x)
  # The default distillation is Hinton's KL.
  data = (gmp_jax.kl_distillation_loss(logits, t, 2.0)
          + 0.5 * gmp_jax.cross_entropy_loss(logits, y))
  np.testing.assert_allclose(m['data_loss'], data, rtol=1e-5)
  complexity = gmp_jax.complexity_loss(state.params, state.mixture)
  np.testing.assert_allclose(m['complexity_loss'], complexity, rtol=1e-5)
  np.testing.assert_allclose(m['loss'], data + 3.0 / 32 * complexity,
                             rtol=1e-5)


def test_tau_schedule_is_read_at_the_state_step():
  """A schedule's tau at `state.step` weighs the complexity term."""
  _, apply_fn, tx, state, kwargs = _setup()
  kwargs['tau'] = lambda step: 0.5 * step.astype(jnp.float32)
  step = gmp_jax.compile_step(gmp_jax.make_train_step(apply_fn, tx, **kwargs))
  x, y = _data()
  for i in range(3):
    before = state
    state, m = step(state, {'x': x, 'label': y})
    complexity = gmp_jax.complexity_loss(before.params, before.mixture)
    np.testing.assert_allclose(m['complexity_loss'], complexity, rtol=1e-5)
    np.testing.assert_allclose(
        m['loss'], m['data_loss'] + 0.5 * i / 32 * complexity, rtol=1e-5,
        atol=1e-6)


def test_prior_off_keeps_mixture():
  _, apply_fn, tx, state, kwargs = _setup(use_prior=False)
  step = gmp_jax.compile_step(gmp_jax.make_train_step(apply_fn, tx, **kwargs))
  x, y = _data()
  new, m = step(state, {'x': x, 'label': y})
  np.testing.assert_array_equal(new.mixture.nonzero_means,
                                state.mixture.nonzero_means)
  assert 'complexity_loss' not in m


def test_prior_clusters_weights():
  """With a strong prior, the weights collapse onto at most K values."""
  _, apply_fn, tx, state, kwargs = _setup(tau=50.0)
  tx = gmp_jax.gmp_optimizer(weights=3e-3, means=3e-3)
  state = gmp_jax.create_train_state(state.params, state.mixture, tx)
  step = gmp_jax.compile_step(gmp_jax.make_train_step(apply_fn, tx, **kwargs))
  x, y = _data()
  before = gmp_jax.mixture_log_prob(state.params, state.mixture)
  for _ in range(300):
    state, _ = step(state, {'x': x, 'label': y})
  assert gmp_jax.mixture_log_prob(state.params, state.mixture) > before
  q = gmp_jax.quantize(state.params, state.mixture)
  total = gmp_jax.sparsity_table(q)[-1]
  assert total['distinct_values'] <= 4
  assert total['sparsity'] > 0.5
  # Quantisation moves the clustered weights only slightly.
  err = max(float(jnp.max(jnp.abs(a - b))) for a, b in
            zip(jax.tree.leaves(q), jax.tree.leaves(state.params)))
  assert err < 0.2


@pytest.mark.parametrize('indexed', [True, False])
@pytest.mark.parametrize('kind', ['unroll', 'scan'])
def test_multi_step_equals_sequential_steps(kind, indexed):
  _, apply_fn, tx, state, kwargs = _setup()
  raw = gmp_jax.make_train_step(apply_fn, tx, **kwargs)
  step = jax.jit(raw)
  multi = gmp_jax.compile_step(gmp_jax.make_multi_step(raw, kind=kind,
                                                       indexed=indexed))
  x, y = _data()
  idx = np.random.default_rng(0).permutation(32).reshape(4, 8)
  seq, seq_losses = state, []
  for row in idx:
    seq, m = step(seq, {'x': x[row], 'label': y[row]})
    seq_losses.append(float(m['loss']))
  if indexed:
    out, metrics = multi(state, {'x': jnp.asarray(x), 'label': jnp.asarray(y)},
                         jnp.asarray(idx))
  else:
    out, metrics = multi(state, {'x': jnp.asarray(x[idx]),
                                 'label': jnp.asarray(y[idx])})
  assert metrics['loss'].shape == (4,)
  np.testing.assert_allclose(metrics['loss'], seq_losses, rtol=2e-5)
  helpers.assert_trees_close(out, seq, rtol=2e-5, atol=1e-6)


def test_multi_step_rejects_an_unknown_kind():
  _, apply_fn, tx, _, kwargs = _setup()
  with pytest.raises(ValueError, match="kind must be one of"):
    gmp_jax.make_multi_step(gmp_jax.make_train_step(apply_fn, tx, **kwargs),
                            kind='while')


def test_sharded_batch_runs_unchanged():
  devices = jax.devices()
  if len(devices) < 2:
    pytest.skip('needs 2 devices (XLA_FLAGS is set in conftest.py)')
  mesh = Mesh(np.array(devices[:2]), ('data',))
  _, apply_fn, tx, state, kwargs = _setup()
  step = gmp_jax.compile_step(gmp_jax.make_train_step(apply_fn, tx, **kwargs))
  x, y = _data()
  want = step(state, {'x': x, 'label': y})
  shard = NamedSharding(mesh, P('data'))
  replicated = NamedSharding(mesh, P())
  batch = {'x': jax.device_put(x, shard), 'label': jax.device_put(y, shard)}
  got = step(jax.device_put(state, replicated), batch)
  helpers.assert_steps_agree(got, want, rtol=1e-4, atol=1e-6)


def test_eval_and_evaluate():
  _, apply_fn, _, state, _ = _setup()
  x, y = _data(50)
  ev = gmp_jax.make_eval_step(apply_fn)
  logits = np.asarray(apply_fn(state.params, x), np.float64)
  log_p = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  for step in (ev, gmp_jax.compile_step(ev)):  # Pure or compiled.
    got = gmp_jax.evaluate(step, state.params, x, y, batch_size=16)
    assert got['accuracy'] == pytest.approx(np.mean(logits.argmax(-1) == y))
    assert got['cross_entropy'] == pytest.approx(
        -np.mean(log_p[np.arange(50), y]), rel=1e-5)
  with pytest.raises(ValueError, match='examples'):
    gmp_jax.evaluate(ev, state.params, x, y[:3])
  with pytest.raises(ValueError, match='empty'):
    gmp_jax.evaluate(ev, state.params, x[:0], y[:0])
  with pytest.raises(ValueError, match='batch_size'):
    gmp_jax.evaluate(ev, state.params, x, y, batch_size=0)
  with pytest.raises(ValueError, match='kind'):
    gmp_jax.evaluate(ev, state.params, x, y, kind='vmap')


@pytest.mark.parametrize('kind', ['unroll', 'scan'])
def test_evaluate_sequences_counts_tokens(kind):
  """(B, T, V) logits, (B, T) labels: accuracy and CE per token (NumPy)."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(10, 3, 5)).astype(np.float32)
  y = rng.integers(0, 5, size=(10, 3)).astype(np.int32)
  w = rng.normal(size=(5, 5)).astype(np.float32)
  ev = gmp_jax.make_eval_step(lambda p, xb: xb @ p)
  got = gmp_jax.evaluate(ev, w, x, y, batch_size=4, kind=kind)
  logits = x.astype(np.float64) @ w
  log_p = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  picked = np.take_along_axis(log_p, y[..., None], -1)
  assert got['accuracy'] == pytest.approx(np.mean(logits.argmax(-1) == y))
  assert got['cross_entropy'] == pytest.approx(-np.mean(picked), rel=1e-5)
  with pytest.raises(ValueError, match='sequence axis'):
    gmp_jax.evaluate(ev, w, x, y[:, :2], batch_size=4, kind=kind)


def test_make_functions_are_pure_and_compile_step_jits():
  _, apply_fn, tx, state, kwargs = _setup()
  step = gmp_jax.make_train_step(apply_fn, tx, **kwargs)
  multi = gmp_jax.make_multi_step(step)
  ev = gmp_jax.make_eval_step(apply_fn)
  for fn in (step, multi, ev):
    assert not hasattr(fn, 'lower')  # Not a jax.jit wrapper.
  x, y = _data()
  eager = step(state, {'x': x, 'label': y})  # Runs op by op, without jit.
  compiled = gmp_jax.compile_step(step)
  assert hasattr(compiled, 'lower')
  helpers.assert_steps_agree(compiled(state, {'x': x, 'label': y}), eager,
                             rtol=1e-4, atol=1e-6)


def test_compile_step_donates_state():
  _, apply_fn, tx, state, kwargs = _setup()
  step = gmp_jax.make_train_step(apply_fn, tx, **kwargs)
  x, y = _data()
  want, _ = gmp_jax.compile_step(step)(state, {'x': x, 'label': y})
  state = jax.tree.map(jnp.copy, state)
  donated = gmp_jax.compile_step(step, donate_state=True)
  got, _ = donated(state, {'x': x, 'label': y})
  helpers.assert_trees_close(got, want, rtol=1e-6)
  # The donated input buffers are gone (CPU supports donation).
  assert state.params['Dense_0']['kernel'].is_deleted()


def test_batch_without_targets():
  _, apply_fn, tx, state, kwargs = _setup()
  step = gmp_jax.compile_step(gmp_jax.make_train_step(apply_fn, tx, **kwargs))
  with pytest.raises(ValueError, match="'label', 'teacher_logits'"):
    step(state, {'x': _data()[0]})


def test_bad_step_args():
  _, apply_fn, tx, _, _ = _setup()
  with pytest.raises(ValueError, match='temperature'):
    gmp_jax.make_train_step(apply_fn, tx, tau=1.0, dataset_size=3,
                            loss=gmp_jax.LossOptions(temperature=0.0))
  with pytest.raises(ValueError, match='distillation'):
    gmp_jax.make_train_step(apply_fn, tx, tau=1.0, dataset_size=3,
                            loss=gmp_jax.LossOptions(distillation='l1'))
  with pytest.raises(ValueError, match='dataset_size'):
    gmp_jax.make_train_step(apply_fn, tx, tau=1.0, dataset_size=0)
  with pytest.raises(ValueError, match='tau'):
    gmp_jax.make_train_step(apply_fn, tx, tau=-1.0, dataset_size=3)
  with pytest.raises(ValueError, match='tau'):
    gmp_jax.make_train_step(apply_fn, tx, tau=float('nan'), dataset_size=3)
  for bad_tau in ('0.1', None, True):
    with pytest.raises(TypeError, match='tau must be a real number'):
      gmp_jax.make_train_step(apply_fn, tx, tau=bad_tau, dataset_size=3)
  with pytest.raises(ValueError, match='dataset_size must be > 0'):
    gmp_jax.make_train_step(apply_fn, tx, tau=1.0, dataset_size=-5)
  for bad_n in (60000.0, '60000', True, None):
    with pytest.raises(TypeError, match='dataset_size must be a positive int'):
      gmp_jax.make_train_step(apply_fn, tx, tau=1.0, dataset_size=bad_n)
  with pytest.raises(TypeError, match='temprature'):
    gmp_jax.make_train_step(apply_fn, tx, tau=1.0, dataset_size=3,
                            temprature=2.0)


def test_loss_options_build_the_objective():
  """`loss=LossOptions(...)` gives eq. 1 with the NumPy terms."""
  _, apply_fn, tx, state, _ = _setup()
  x, y = _data()
  teacher = np.random.default_rng(2).normal(size=(32, 4)).astype(np.float32)
  batch = {'x': x, 'label': y, 'teacher_logits': teacher}
  options = gmp_jax.LossOptions(temperature=3.0, distillation='kl',
                                distillation_weight=0.7, label_weight=0.2)
  step = gmp_jax.make_train_step(apply_fn, tx, tau=0.0, dataset_size=32,
                                 loss=options)
  z = np.asarray(apply_fn(state.params, x), np.float64)
  ls = z / 3.0 - np.log(np.sum(np.exp(z / 3.0), -1, keepdims=True))
  lt = teacher / 3.0 - np.log(np.sum(np.exp(teacher / 3.0), -1,
                                     keepdims=True))
  kl = 9.0 * np.mean(np.sum(np.exp(lt) * (lt - ls), -1))
  lp = z - np.log(np.sum(np.exp(z), -1, keepdims=True))
  ce = -np.mean(lp[np.arange(32), y])
  _, m = jax.jit(step)(state, batch)
  np.testing.assert_allclose(m['loss'], 0.7 * kl + 0.2 * ce, rtol=1e-5)


def test_flax_nnx_state():
  class Net(nnx.Module):

    def __init__(self, rngs):
      self.l1 = nnx.Linear(8, 16, rngs=rngs)
      self.l2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.l1(x)))

  graphdef, state = nnx.split(Net(nnx.Rngs(0)))
  apply_fn = lambda s, x: nnx.merge(graphdef, s)(x)
  mixture = gmp_jax.init_mixture(state, 5)
  assert len(mixture.signature) == 4
  tx = gmp_jax.gmp_optimizer(weights=1e-2)
  ts = gmp_jax.create_train_state(state, mixture, tx)
  step = gmp_jax.compile_step(
      gmp_jax.make_train_step(apply_fn, tx, tau=1.0, dataset_size=32))
  x, y = _data()
  for _ in range(3):
    ts, m = step(ts, {'x': x, 'label': y})
  assert np.isfinite(m['loss'])
  q = gmp_jax.quantize(ts.params, ts.mixture)
  assert type(q) is type(state)
  # Each covered leaf holds only its own values s_l mu_k (per-leaf scales,
  # the default).
  flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
          jax.tree_util.tree_flatten_with_path(q)[0]}
  means = np.asarray(ts.mixture.means)
  for (path, _, _), scale in zip(ts.mixture.signature,
                                 ts.mixture.leaf_scales):
    allowed = (np.float32(scale) * means.astype(np.float32))
    assert np.all(np.isin(flat[path], allowed)), path
  logits = nnx.merge(graphdef, q)(x)
  assert logits.shape == (32, 4)
