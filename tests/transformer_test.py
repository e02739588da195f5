"""Tests for experiments.language.transformer, on the shipped text sample."""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.language import data as lm_data
from experiments.language import transformer as tr

SAMPLE_PATH = os.path.join(os.path.dirname(__file__), 'data',
                           'shakespeare_sample.txt')
SMALL = tr.TransformerConfig(num_layers=2, d_model=32, num_heads=4,
                             mlp_dim=64, context=32)


def _sample_bytes():
  with open(SAMPLE_PATH, 'rb') as f:
    return np.frombuffer(f.read(), np.uint8)


def _expected_count(layers, d, mlp, context, vocab):
  """Parameters from the dimensions, layer by layer."""
  linear = lambda n_in, n_out: n_in * n_out + n_out
  layer_norm = 2 * d
  block = (layer_norm + linear(d, 3 * d) + linear(d, d) + layer_norm +
           linear(d, mlp) + linear(mlp, d))
  return vocab * d + context * d + layers * block + layer_norm + linear(
      d, vocab)


def test_default_parameter_count():
  _, params = tr.init_params()
  # 32,768 + 16,384 + 4 * 198,272 + 256 + 33,024.
  assert _expected_count(4, 128, 512, 128, 256) == 875_520
  assert tr.param_count(params) == 875_520


def test_small_parameter_count():
  _, params = tr.init_params(SMALL)
  assert tr.param_count(params) == _expected_count(2, 32, 64, 32, 256)


def test_blocks_are_indexed_in_the_state():
  _, params = tr.init_params(SMALL)
  pure = nnx.to_pure_dict(params)
  assert sorted(pure['blocks']) == [0, 1]
  assert pure['blocks'][1]['attn']['qkv']['kernel'].shape == (32, 96)
  assert pure['head']['kernel'].shape == (32, 256)


@pytest.mark.parametrize('batch,length', [(3, 17), (2, 32), (1, 1)])
def test_output_shape(batch, length):
  graphdef, params = tr.init_params(SMALL)
  tokens = jnp.zeros((batch, length), jnp.int32)
  logits = jax.jit(tr.make_apply(graphdef))(params, tokens)
  assert logits.shape == (batch, length, 256)
  assert logits.dtype == jnp.float32


def test_rejects_bad_token_shapes():
  graphdef, params = tr.init_params(SMALL)
  apply = tr.make_apply(graphdef)
  with pytest.raises(ValueError, match='outside'):
    apply(params, jnp.zeros((1, 33), jnp.int32))
  with pytest.raises(ValueError, match='batch, time'):
    apply(params, jnp.zeros((33,), jnp.int32))


def test_config_is_checked():
  with pytest.raises(ValueError, match='does not divide'):
    tr.TransformerConfig(d_model=30, num_heads=4)
  with pytest.raises(ValueError, match='num_layers'):
    tr.TransformerConfig(num_layers=0)


def test_causal():
  graphdef, params = tr.init_params(SMALL, seed=1)
  apply = jax.jit(tr.make_apply(graphdef))
  tokens = jnp.asarray(_sample_bytes()[:64].reshape(2, 32), jnp.int32)
  changed = tokens.at[:, 20].set((tokens[:, 20] + 7) % 256)
  a, b = np.asarray(apply(params, tokens)), np.asarray(apply(params, changed))
  np.testing.assert_allclose(a[:, :20], b[:, :20], rtol=0, atol=1e-6)
  # Position 20 and later see the change.
  assert np.abs(a[:, 20:] - b[:, 20:]).max(axis=-1).min() > 1e-4


def test_pure_dict_params_give_the_same_logits():
  graphdef, params = tr.init_params(SMALL, seed=2)
  apply = jax.jit(tr.make_apply(graphdef))
  tokens = jnp.asarray(_sample_bytes()[:32][None], jnp.int32)
  np.testing.assert_array_equal(apply(params, tokens),
                                apply(nnx.to_pure_dict(params), tokens))


def _log_softmax_np(x):
  x = np.asarray(x, np.float64)
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def test_bits_per_byte_and_accuracy_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(4, 9, 256)).astype(np.float32)
  targets = rng.integers(0, 256, size=(4, 9))
  targets[0, :5] = logits[0, :5].argmax(-1)  # some hits
  log_p = _log_softmax_np(logits)
  picked = np.take_along_axis(log_p, targets[..., None], axis=-1)
  expected_bits = -picked.mean() / np.log(2.0)
  expected_acc = (logits.argmax(-1) == targets).mean()
  bits = tr.bits_per_byte(jnp.asarray(logits), jnp.asarray(targets))
  acc = tr.accuracy(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(float(bits), expected_bits, rtol=1e-5)
  np.testing.assert_allclose(float(acc), expected_acc, rtol=1e-6)
  assert expected_acc >= 5 / 36


def test_uniform_logits_cost_eight_bits():
  bits = tr.bits_per_byte(jnp.zeros((2, 3, 256)), jnp.ones((2, 3), jnp.int32))
  np.testing.assert_allclose(float(bits), 8.0, rtol=1e-6)


def test_metric_shapes_are_checked():
  with pytest.raises(ValueError, match='disagree'):
    tr.bits_per_byte(jnp.zeros((2, 3, 256)), jnp.zeros((2, 4), jnp.int32))


def test_adam_steps_lower_the_loss():
  data = jnp.asarray(_sample_bytes())
  graphdef, params = tr.init_params(SMALL, seed=0)
  apply = tr.make_apply(graphdef)
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  def loss_fn(p, x, y):
    return tr.bits_per_byte(apply(p, x), y)

  @jax.jit
  def step(p, o, key):
    x, y = lm_data.sample_windows(key, data, 16, 32)
    grads = jax.grad(loss_fn)(p, x, y)
    with jax.numpy_dtype_promotion('standard'):  # optax's Adam mixes dtypes.
      updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o

  fixed_x, fixed_y = lm_data.eval_windows(np.asarray(data[-4097:]), 32)
  before = float(loss_fn(params, fixed_x, fixed_y))
  for i in range(40):
    params, opt_state = step(params, opt_state, jax.random.key(i))
  after = float(loss_fn(params, fixed_x, fixed_y))
  assert before > 7.0  # near the 8 bits of a uniform guess
  assert after < before - 2.0, (before, after)
