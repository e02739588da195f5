"""Exact round trips at 10M weights, in bounded time and memory."""

import io

import numpy as np

from gmp_jax import codec


def _quantized(rng, shape, *, values, density):
  x = rng.choice(np.asarray(values, np.float32), size=shape)
  x[rng.random(shape) >= density] = 0
  return x


def test_10m_sparse_kernel_round_trips_exactly():
  rng = np.random.default_rng(0)
  values = rng.uniform(-0.3, 0.3, 16)
  x = _quantized(rng, (4096, 2442), values=values, density=0.05)
  buf = io.BytesIO()
  size = codec.save_compressed(buf, {'w': x})
  assert size == len(buf.getvalue()) < x.nbytes // 10
  buf.seek(0)
  f = codec.load_compressed_with_info(buf)
  assert f.params['w'].dtype == x.dtype and f.params['w'].shape == x.shape
  assert f.params['w'].tobytes() == x.tobytes()
  assert f.leaves[0].nonzeros == np.count_nonzero(x)
  assert f.leaves[0].distinct == np.unique(x[x != 0]).size


def test_10m_dense_vector_and_a_raw_leaf_round_trip_exactly():
  rng = np.random.default_rng(1)
  dense = _quantized(rng, (10_000_000,), values=(-1.5, 0.25, 2.0),
                     density=1.0)
  raw = rng.standard_normal(100_000).astype(np.float32)
  data = codec.to_bytes({'dense': dense, 'raw': raw})
  out = codec.from_bytes(data)
  assert out.params['dense'].tobytes() == dense.tobytes()
  assert out.params['raw'].tobytes() == raw.tobytes()
  assert [i.kind for i in out.leaves] == ['coded', 'raw']
