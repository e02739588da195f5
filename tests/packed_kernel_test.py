"""The Pallas lookup-table matmul (gmp_jax.packed_kernel), in interpret mode.

Checked against NumPy (float64) and the portable XLA path
(`x @ unpack(packed)`) on small shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
from gmp_jax import packed_kernel
from gmp_jax import packed as packed_lib


def _packed_matrix(rng, shape, k):
  values = (rng.choice(np.arange(1, 100), size=k, replace=False) * 0.01
            * rng.choice([-1, 1], size=k)).astype(np.float32)
  values[0] = 0
  w = values[rng.integers(0, k, size=shape)]
  return w, packed_lib.pack_array(w)


@pytest.mark.parametrize('batch', [1, 8])
def test_kernel_matches_numpy_and_the_xla_path(batch):
  rng = np.random.default_rng(batch)
  w, p = _packed_matrix(rng, (64, 128), 16)
  x = rng.normal(size=(batch, 64)).astype(np.float32)
  p = jax.device_put(p)
  got = packed_kernel.lut_matmul(jnp.asarray(x), p, interpret=True,
                                  block_b=8, block_n=64, block_k=32)
  assert got.shape == (batch, 128) and got.dtype == jnp.float32
  want = x.astype(np.float64) @ w.astype(np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  xla = jnp.asarray(x) @ gmp_jax.unpack(p)
  np.testing.assert_allclose(got, xla, rtol=1e-5, atol=1e-5)


def test_kernel_with_a_short_codebook_and_default_blocks():
  """K < 16 (the select reads padding it never needs); interpret by
  default on the CPU backend."""
  rng = np.random.default_rng(0)
  w, p = _packed_matrix(rng, (32, 16), 3)
  x = rng.normal(size=(3, 32)).astype(np.float32)
  assert jax.default_backend() == 'cpu'
  got = packed_kernel.lut_matmul(x, jax.device_put(p))
  np.testing.assert_allclose(got, x.astype(np.float64) @ w, rtol=1e-5,
                             atol=1e-6)


def test_kernel_rejects_what_it_cannot_run():
  rng = np.random.default_rng(0)
  _, p8 = _packed_matrix(rng, (16, 16), 40)
  with pytest.raises(ValueError, match='4-bit'):
    packed_kernel.lut_matmul(np.ones((1, 16), np.float32), p8)
  _, p = _packed_matrix(rng, (16, 16), 4)
  with pytest.raises(ValueError, match='does not contract'):
    packed_kernel.lut_matmul(np.ones((1, 8), np.float32), p)
  _, odd = _packed_matrix(rng, (16, 10), 4)
  with pytest.raises(ValueError, match='multiple of the blocks'):
    packed_kernel.lut_matmul(np.ones((1, 16), np.float32), odd, block_n=4)
