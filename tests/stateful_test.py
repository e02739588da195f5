"""Stateful models (BatchNorm + Dropout) through the train and eval steps.

Flax Linen and Flax NNX models, via the adapters in gmp_jax/flax.py:
the batch statistics ride in `TrainState.model_state`, the dropout key is
derived from the step, and a quantised model saved to a file and reloaded
into a fresh model predicts exactly what the in-memory quantised model does.
"""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import gmp_jax
from gmp_jax import flax as gmp_flax

NUM_TRAIN = 512


def _data(n=NUM_TRAIN, seed=0):
  """MNIST-sized random images, labels from a linear rule (learnable)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 28, 28, 1)).astype(np.float32)
  w = rng.normal(size=(14 * 14, 10))
  y = np.argmax(x[:, ::2, ::2, 0].reshape(n, -1) @ w, axis=1).astype(np.int32)
  return x, y


class LinenNet(nn.Module):
  """Conv -> BatchNorm -> ReLU -> Dropout -> Dense."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), strides=(2, 2), padding='VALID')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x).reshape((x.shape[0], -1))
    x = nn.Dropout(0.2, deterministic=not train)(x)
    return nn.Dense(10)(x)


class NNXNet(nnx.Module):
  """The same network in NNX."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), strides=(2, 2), padding='VALID',
                         rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.dropout = nnx.Dropout(0.2, rngs=rngs)
    self.dense = nnx.Linear(13 * 13 * 4, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x))).reshape((x.shape[0], -1))
    return self.dense(self.dropout(x))


def _train(apply_fn, params, model_state, x, y, *, seed=0):
  """Pretrains without the prior, then retrains with it; stateful steps."""
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale=None, init_std=0.02,
                                 zero_proportion=0.9)
  rng = np.random.default_rng(seed)
  state = None
  for use_prior, steps, lr in ((False, 150, 3e-3), (True, 250, 1e-3)):
    tx = gmp_jax.gmp_optimizer(weights=lr, means=1e-3)
    if use_prior:
      mixture = gmp_jax.init_mixture(state.params, 17, leaf_scale=None,
                                     init_std=0.02,
                                     zero_proportion=0.9)
      params, model_state = state.params, state.model_state
    state = gmp_jax.create_train_state(params, mixture, tx,
                                       model_state=model_state)
    step = gmp_jax.compile_step(gmp_jax.make_multi_step(
        gmp_jax.make_train_step(apply_fn, tx, tau=5e-2,
                                dataset_size=len(x), use_prior=use_prior,
                                stateful=True, seed=seed), kind='scan'))
    data = {'x': x, 'label': y}
    for _ in range(steps // 5):
      idx = rng.integers(0, len(x), size=(5, 32))
      state, metrics = step(state, data, idx)
    assert np.all(np.isfinite(metrics['loss']))
  return state


def _accuracy(eval_step, params, model_state, x, y):
  return gmp_jax.evaluate(eval_step, params, x, y, batch_size=256,
                          model_state=model_state)['accuracy']


# ---------------------------------------------------------------- Linen ---


def _linen_setup():
  model = LinenNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                         train=False)
  params = variables['params']
  model_state = {'batch_stats': variables['batch_stats']}
  return model, params, model_state


def test_linen_one_step_matches_manual_computation():
  """Batch statistics and the dropout key against an independent forward."""
  model, params, model_state = _linen_setup()
  x, y = _data(64)
  mixture = gmp_jax.init_mixture(params, 5)
  tx = gmp_jax.gmp_optimizer()
  state = gmp_jax.create_train_state(params, mixture, tx,
                                     model_state=model_state)
  step = gmp_jax.compile_step(gmp_jax.make_train_step(
      gmp_flax.linen_apply(model), tx, tau=0.0, dataset_size=64,
      use_prior=False, stateful=True, seed=7))
  state = state._replace(step=jnp.asarray(3, jnp.int32))
  new, metrics = step(state, {'x': x, 'label': y})

  # Running mean: 0.9 * old + 0.1 * batch mean of the conv outputs,
  # computed here with NumPy from the conv kernel.
  k = np.asarray(params['Conv_0']['kernel'], np.float64)
  b = np.asarray(params['Conv_0']['bias'], np.float64)
  patches = np.stack([x[:, i:i + 25:2, j:j + 25:2, 0]
                      for i in range(3) for j in range(3)], -1)
  conv = patches @ k.reshape(9, 4) + b
  np.testing.assert_allclose(
      new.model_state['batch_stats']['BatchNorm_0']['mean'],
      0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      new.model_state['batch_stats']['BatchNorm_0']['var'],
      0.9 + 0.1 * conv.var(axis=(0, 1, 2)), rtol=1e-4)

  # The dropout key is fold_in(key(seed), step) (then fold_in(., 0) for
  # the first stream): the same forward pass by hand gives the same loss.
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(7), 3), 0)
  logits, _ = model.apply({'params': params, **model_state}, x, train=True,
                          mutable=['batch_stats'], rngs={'dropout': key})
  np.testing.assert_allclose(
      metrics['cross_entropy'], gmp_jax.cross_entropy_loss(logits, y),
      rtol=1e-5)
  other = jax.random.fold_in(jax.random.fold_in(jax.random.key(7), 4), 0)
  logits4, _ = model.apply({'params': params, **model_state}, x, train=True,
                           mutable=['batch_stats'], rngs={'dropout': other})
  assert not np.allclose(logits, logits4)  # Each step its own mask.
  # Parameters and mixture are trained; the stats are not in the optimiser.
  assert int(new.step) == 4
  assert 'batch_stats' not in str(jax.tree_util.tree_structure(
      new.opt_state))


def test_linen_train_quantise_save_reload():
  model, params, model_state = _linen_setup()
  x, y = _data()
  apply_fn = gmp_flax.linen_apply(model)
  state = _train(apply_fn, params, model_state, x, y)
  stats = state.model_state['batch_stats']['BatchNorm_0']
  assert not np.allclose(stats['mean'], 0.0)  # The statistics moved.
  assert all('batch_stats' not in p for p, _, _ in state.mixture.signature)

  eval_step = gmp_jax.compile_step(
      gmp_jax.make_eval_step(apply_fn, stateful=True))
  qparams = gmp_jax.quantize(state.params,
                             gmp_jax.merge_components(state.mixture))
  acc = _accuracy(eval_step, qparams, state.model_state, x, y)
  assert acc > 0.7, acc  # Chance: 0.1.
  values = np.concatenate([np.ravel(v) for v in jax.tree.leaves(qparams)])
  assert np.mean(values == 0) > 0.5

  # Params compressed; the statistics stored exactly, only because asked.
  buf = io.BytesIO()
  gmp_jax.save_compressed(buf, qparams,
                          metadata={'model_state': state.model_state})
  buf.seek(0)
  info = gmp_jax.load_compressed_with_info(buf)
  lparams, meta = info.params, info.metadata
  for a, b in zip(jax.tree.leaves(state.model_state),
                  jax.tree.leaves(meta['model_state'])):
    np.testing.assert_array_equal(np.asarray(a), b)  # Never quantised.

  fresh = LinenNet()  # A new module object; nothing reused but the file.
  variables = {'params': lparams, **meta['model_state']}
  reloaded = fresh.apply(variables, x, train=False)
  in_memory = model.apply({'params': qparams, **state.model_state}, x,
                          train=False)
  np.testing.assert_array_equal(np.asarray(reloaded), np.asarray(in_memory))
  assert float(np.mean(np.argmax(reloaded, -1) == y)) == acc

  # Without the metadata the file holds the parameters only.
  buf2 = io.BytesIO()
  gmp_jax.save_compressed(buf2, qparams)
  buf2.seek(0)
  meta2 = gmp_jax.load_compressed_with_info(buf2).metadata
  assert meta2 is None


# ------------------------------------------------------------------ NNX ---


def test_nnx_train_quantise_save_reload():
  x, y = _data()
  model = NNXNet(nnx.Rngs(params=0, dropout=1))
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  apply_fn = gmp_flax.nnx_apply(graphdef)
  state = _train(apply_fn, params, model_state, x, y)
  mean = state.model_state['bn']['mean'][...]
  assert not np.allclose(mean, 0.0)
  assert all("['bn']['mean']" not in p and 'rngs' not in p
             for p, _, _ in state.mixture.signature)

  eval_step = gmp_jax.compile_step(
      gmp_jax.make_eval_step(apply_fn, stateful=True))
  qparams = gmp_jax.quantize(state.params,
                             gmp_jax.merge_components(state.mixture))
  acc = _accuracy(eval_step, qparams, state.model_state, x, y)
  assert acc > 0.7, acc

  # Save the parameters and (on request) the BatchNorm statistics.
  stats = nnx.split_state(state.model_state, nnx.BatchStat, ...)[0]
  buf = io.BytesIO()
  gmp_jax.save_compressed(buf, nnx.to_pure_dict(qparams),
                          metadata={'batch_stats': nnx.to_pure_dict(stats)})
  buf.seek(0)
  info = gmp_jax.load_compressed_with_info(buf)
  lparams, meta = info.params, info.metadata

  # Reload into a freshly built model (other seeds), compare in eval mode.
  fresh = NNXNet(nnx.Rngs(params=42, dropout=43))
  p_state = nnx.state(fresh, nnx.Param)
  nnx.replace_by_pure_dict(p_state, lparams)
  s_state = nnx.state(fresh, nnx.BatchStat)
  nnx.replace_by_pure_dict(s_state, meta['batch_stats'])
  nnx.update(fresh, p_state, s_state)
  fresh.eval()
  in_memory = nnx.merge(graphdef, qparams, state.model_state)
  in_memory.eval()
  np.testing.assert_array_equal(np.asarray(fresh(x)),
                                np.asarray(in_memory(x)))
  assert float(np.mean(np.argmax(fresh(x), -1) == y)) == acc
  np.testing.assert_array_equal(fresh.bn.var[...],
                                state.model_state['bn']['var'][...])


def test_nnx_dropout_key_follows_the_step():
  x, y = _data(64)
  model = NNXNet(nnx.Rngs(params=0, dropout=1))
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  mixture = gmp_jax.init_mixture(params, 5)
  tx = gmp_jax.gmp_optimizer()
  state = gmp_jax.create_train_state(params, mixture, tx,
                                     model_state=model_state)
  step = gmp_jax.compile_step(gmp_jax.make_train_step(
      gmp_flax.nnx_apply(graphdef), tx, tau=0.0, dataset_size=64,
      use_prior=False, stateful=True, seed=5))
  _, m3 = step(state._replace(step=jnp.asarray(3, jnp.int32)),
               {'x': x, 'label': y})
  # By hand: reseed the dropout stream with fold_in(fold_in(key(5), 3), 0).
  manual = nnx.merge(graphdef, params, model_state)
  manual.train()
  nnx.reseed(manual, dropout=jax.random.fold_in(
      jax.random.fold_in(jax.random.key(5), 3), 0))
  np.testing.assert_allclose(
      m3['cross_entropy'], gmp_jax.cross_entropy_loss(manual(x), y),
      rtol=1e-5)
  _, m4 = step(state._replace(step=jnp.asarray(4, jnp.int32)),
               {'x': x, 'label': y})
  assert float(m4['cross_entropy']) != float(m3['cross_entropy'])


# ------------------------------------------------------------ bad input ---


def _linen_step(model, params, model_state, apply_fn):
  mixture = gmp_jax.init_mixture(params, 5)
  tx = gmp_jax.gmp_optimizer()
  state = gmp_jax.create_train_state(params, mixture, tx,
                                     model_state=model_state)
  step = gmp_jax.make_train_step(apply_fn, tx, tau=1.0, dataset_size=8,
                                 stateful=True)
  x, y = _data(8)
  return lambda: step(state, {'x': x, 'label': y})


def test_missing_collection_is_named():
  model, params, _ = _linen_setup()
  # Not passed at all: Flax cannot update the statistics.
  run = _linen_step(model, params, {}, gmp_flax.linen_apply(model))
  with pytest.raises(ValueError, match="collection 'batch_stats'"):
    run()
  # Mutable but not passed: the step would grow new state.
  run = _linen_step(model, params, {},
                    gmp_flax.linen_apply(model, mutable=['batch_stats']))
  with pytest.raises(ValueError,
                     match=r"not passed in: \['batch_stats'\]\['BatchNorm_0'\]"):
    run()


def test_missing_rng_stream_is_named():
  model, params, model_state = _linen_setup()
  run = _linen_step(model, params, model_state,
                    gmp_flax.linen_apply(model, rngs=()))
  with pytest.raises(ValueError, match="RNG stream 'dropout'"):
    run()
  x = jnp.zeros((2, 28, 28, 1))
  net = NNXNet(nnx.Rngs(0))  # One 'default' stream, no 'dropout' stream.
  graphdef, p, s = nnx.split(net, nnx.Param, ...)
  with pytest.raises(ValueError, match=r"RNG streams \['default'\]"):
    gmp_flax.nnx_apply(graphdef)(p, s, x, train=True, rng=jax.random.key(0))


def test_apply_fn_must_return_state():
  model, params, model_state = _linen_setup()
  run = _linen_step(model, params, model_state,
                    lambda p, s, x, *, train, rng: model.apply(
                        {'params': p, **s}, x, train=False))
  with pytest.raises(TypeError, match=r'\(outputs, new_model_state\)'):
    run()


def test_filter_choosing_model_state_is_rejected():
  model = LinenNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                         train=False)
  # Every float leaf of the whole variables dict includes the statistics
  # (the default 'no_norm' filter leaves BatchNorm out altogether).
  with pytest.raises(ValueError,
                     match=r"\['batch_stats'\]\['BatchNorm_0'\]\['mean'\]"):
    gmp_jax.init_mixture(variables, 5, filter_fn='all_floating')
  # A filter that leaves them out, but params that still hold them.
  mixture = gmp_jax.init_mixture(
      variables, 5,
      filter_fn=lambda p, l: jax.tree_util.keystr(p).startswith("['params']"))
  with pytest.raises(ValueError, match=r"params holds model state, not "
                     r"parameters: \['batch_stats'\]"):
    gmp_jax.create_train_state(variables, mixture, gmp_jax.gmp_optimizer())

  net = NNXNet(nnx.Rngs(params=0, dropout=1))
  with pytest.raises(ValueError, match=r"\['bn'\]\['mean'\].*BatchStat"):
    gmp_jax.init_mixture(nnx.state(net), 5, filter_fn='all_floating')
  with pytest.raises(ValueError, match=r"\['dropout'\]\['rngs'\]\['key'\]"
                     r".*RngKey"):
    gmp_jax.init_mixture(
        nnx.state(net), 5,
        filter_fn=lambda p, l: "['key']" in jax.tree_util.keystr(p))
  # A raw PRNG key leaf in a plain dict.
  with pytest.raises(ValueError, match=r"\['seed'\].*PRNG key"):
    gmp_jax.create_train_state(
        {'w': jnp.ones(3), 'seed': jax.random.key(0)},
        gmp_jax.init_mixture({'w': jnp.ones(3), 'seed': jax.random.key(0)},
                             3),
        gmp_jax.gmp_optimizer())
