"""The public API: its names, the optional Flax module, one spelling each."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gmp_jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_gmp_jax_imports_no_flax():
  code = ('import sys, gmp_jax; '
          "print(sorted(m for m in sys.modules if m == 'flax' "
          "or m.startswith('flax.')))")
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == '[]'


def test_all_lists_each_name_once_and_every_name_exists():
  assert len(gmp_jax.__all__) == len(set(gmp_jax.__all__)) == 52
  for name in gmp_jax.__all__:
    assert hasattr(gmp_jax, name), name
  # Removed spellings (issue 28) stay removed.
  for name in ('per_leaf_codebook', 'per_leaf_codebooks', 'quantized_params',
               'default_data_loss'):
    assert not hasattr(gmp_jax, name), name


def test_the_old_stateful_module_reexports_the_flax_adapters():
  import gmp_jax.flax  # pylint: disable=g-import-not-at-top
  from experiments import stateful  # pylint: disable=g-import-not-at-top
  assert stateful.linen_apply is gmp_jax.flax.linen_apply
  assert stateful.nnx_apply is gmp_jax.flax.nnx_apply


def test_both_fine_tuning_states_give_their_quantized_params():
  """`state.quantized_params()` against a NumPy codebook lookup."""
  codebook = np.asarray([-0.5, 0.25, 0.75], np.float32)
  weights = np.asarray([[0.7, 0.0], [-0.45, 0.3]], np.float32)
  indices = {'w': jnp.asarray([[3, 0], [1, 2]], jnp.int32), 'b': None}
  frozen = {'w': None, 'b': jnp.ones((2,), jnp.float32)}
  tx = optax.sgd(0.1)
  cb_state = gmp_jax.create_codebook_state(jnp.asarray(codebook), indices,
                                           tx, frozen=frozen)
  mask = {'w': jnp.asarray(weights != 0), 'b': None}
  st_state = gmp_jax.create_straight_through_state(
      {'w': jnp.asarray(weights), 'b': None}, jnp.asarray(codebook), mask,
      tx, frozen=frozen)
  table = np.concatenate([[0.0], codebook])
  want_w = table[np.asarray(indices['w'])]
  nearest = codebook[np.argmin(np.abs(weights[..., None] - codebook), -1)]
  want_st = np.where(weights != 0, nearest, 0.0)
  np.testing.assert_array_equal(want_w, want_st)  # The same quantisation.
  for state in (cb_state, st_state):
    got = state.quantized_params()
    np.testing.assert_array_equal(got['w'], want_w)
    np.testing.assert_array_equal(got['b'], [1.0, 1.0])


def test_fine_tuning_steps_take_the_shared_loss_options():
  """Both fine-tuning steps' loss is the NumPy cross-entropy of their params.

  `loss=LossOptions(...)` works in every step; the option fields are no
  keywords of the steps (rejected by name).
  """
  x = np.eye(2, dtype=np.float32)
  y = np.asarray([1, 0], np.int32)
  apply_fn = lambda p, xb: xb @ p['w']
  codebook = jnp.asarray([-0.5, 0.5], jnp.float32)
  indices = {'w': jnp.asarray([[1, 2], [2, 0]], jnp.int32)}
  tx = optax.sgd(0.0)
  options = gmp_jax.LossOptions(label_weight=0.3)
  cb = gmp_jax.make_codebook_step(apply_fn, tx, loss=options)
  st = gmp_jax.make_straight_through_step(apply_fn, tx, loss=options)
  w = np.asarray([[-0.5, 0.5], [0.5, 0.0]])
  logp = w - np.log(np.sum(np.exp(w), -1, keepdims=True))
  want = -np.mean(logp[np.arange(2), y])  # Labels alone: weight 1.
  _, m = jax.jit(cb)(gmp_jax.create_codebook_state(codebook, indices, tx),
                     {'x': x, 'label': y})
  np.testing.assert_allclose(m['loss'], want, rtol=1e-6)
  mask = {'w': jnp.asarray(w != 0)}
  state = gmp_jax.create_straight_through_state(
      {'w': jnp.asarray(w, jnp.float32)}, codebook, mask, tx)
  _, m = jax.jit(st)(state, {'x': x, 'label': y})
  np.testing.assert_allclose(m['loss'], want, rtol=1e-6)
  for make in (gmp_jax.make_codebook_step,
               gmp_jax.make_straight_through_step):
    with pytest.raises(TypeError, match='label_weight'):
      make(apply_fn, tx, label_weight=0.3)
