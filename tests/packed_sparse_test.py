"""Sparse packed arrays (gmp_jax.SparsePackedArray): exact, run, files.

References are independent NumPy computations: positions from np.nonzero,
byte counts from the layout, float64 matrix products.
"""

import io

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
import helpers
from gmp_jax import codec
from gmp_jax import packed as packed_lib
from gmp_jax.packed import PackedArray
from gmp_jax.packed import SparsePackedArray

_bits = helpers.bit_patterns
_assert_bitwise = helpers.assert_bitwise_equal


def _sparse(rng, shape, density, k=16, dtype=np.float32):
  """A leaf with about `density` nonzeros drawn from k - 1 values."""
  values = (rng.choice(np.arange(1, 4 * k), size=k - 1, replace=False)
            * 0.01 * rng.choice([-1, 1], size=k - 1)).astype(dtype)
  if k == 1:  # Only the zero code.
    return np.zeros(shape, dtype)
  w = values[rng.integers(0, k - 1, size=shape)]
  return np.where(rng.random(shape) < density, w, dtype(0)).astype(dtype)


@pytest.mark.parametrize('shape,density,k,bits', [
    ((7,), 0.3, 4, 4), ((50, 40), 0.03, 16, 4), ((3, 3, 25, 50), 0.04, 12, 4),
    ((64, 33), 0.02, 40, 8), ((20, 30), 0.0, 1, 4)])
def test_sparse_round_trip_is_exact(shape, density, k, bits):
  rng = np.random.default_rng(k)
  x = _sparse(rng, shape, density, k)
  s = gmp_jax.pack(x, layout='sparse')
  assert isinstance(s, SparsePackedArray) and s.bits == bits
  n, m = int(np.prod(shape[:-1])), shape[-1]
  c, r = np.nonzero(x.reshape(n, m).T)  # Column-major order.
  np.testing.assert_array_equal(s.rows, r)
  np.testing.assert_array_equal(s.cols, c)
  assert s.nnz == np.count_nonzero(x)
  _assert_bitwise(gmp_jax.unpack(s), x)
  _assert_bitwise(jax.jit(lambda q: q.dequantize())(jax.device_put(s)), x)


def test_layout_by_hand_and_smallest_index_dtypes():
  x = np.zeros((300, 3), np.float32)
  x[0, 2], x[299, 0], x[5, 0] = 0.5, -1.0, -0.0  # -0.0 is a nonzero.
  s = gmp_jax.pack(x, layout='sparse')
  assert s.rows.dtype == np.uint16 and s.cols.dtype == np.uint8
  np.testing.assert_array_equal(s.rows, [5, 299, 0])
  np.testing.assert_array_equal(s.cols, [0, 0, 2])
  # Codebook by bit pattern: +0.0, 0.5, -0.0 (0x80000000), -1.0.
  _assert_bitwise(s.codebook, np.array([0, 0.5, -0.0, -1.0], np.float32))
  np.testing.assert_array_equal(s.codes, [0x32, 0x01])  # Padding nibble 0.
  assert s.nbytes == 3 * (2 + 1) + 2 + 4 * 4
  _assert_bitwise(np.asarray(s), x)


def test_auto_layout_follows_the_measured_crossover():
  rng = np.random.default_rng(0)
  limit = packed_lib.SPARSE_MAX_DENSITY
  tree = {'sparse': _sparse(rng, (200, 100), limit / 2),
          'dense': _sparse(rng, (200, 100), min(1.0, 3 * limit))}
  auto = gmp_jax.pack(tree)
  assert isinstance(auto['sparse'], SparsePackedArray)
  assert isinstance(auto['dense'], PackedArray)
  assert isinstance(gmp_jax.pack(tree, layout='packed')['sparse'],
                    PackedArray)
  assert isinstance(gmp_jax.pack(tree, layout='sparse')['dense'],
                    SparsePackedArray)
  s = auto['sparse']
  nnz = int(np.count_nonzero(tree['sparse']))
  # rows < 200: uint8; cols < 100: uint8; 4-bit codes; 16 float32 values.
  assert s.nbytes == nnz * 2 + (nnz + 1) // 2 + 4 * s.num_values
  assert s.nbytes < auto['dense'].nbytes
  rows = {r.name: r for r in packed_lib.summary(auto)}
  assert rows['sparse'].kind == 'sparse' and rows['sparse'].nnz == nnz
  with pytest.raises(ValueError, match='layout must be one of'):
    gmp_jax.pack(tree, layout='csr')


@pytest.mark.parametrize('batch', [1, 3, 64])
@pytest.mark.parametrize('transpose', [False, True])
def test_sparse_matmul_matches_numpy(batch, transpose):
  rng = np.random.default_rng(batch)
  w = _sparse(rng, (60, 45), 0.04)
  s = jax.device_put(gmp_jax.pack(w, layout='sparse'))
  x = rng.normal(size=(batch, 45 if transpose else 60)).astype(np.float32)
  y = jax.jit(lambda a, q: packed_lib.sparse_matmul(
      a, q, transpose_w=transpose))(x, s)
  want = x.astype(np.float64) @ (w.T if transpose else w).astype(np.float64)
  assert y.shape == want.shape and y.dtype == jnp.float32
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
  # packed_apply routes the product to it: no dense W among the arguments.
  fn = jax.jit(gmp_jax.packed_apply(
      lambda p, a: a @ (p['w'].T if transpose else p['w'])))
  np.testing.assert_allclose(fn({'w': s}, x), want, rtol=1e-5, atol=1e-6)


def test_packed_apply_linen_mlp_and_conv_with_sparse_leaves():
  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3), padding='VALID')(x))
      x = x.reshape(x.shape[0], -1)
      x = nn.relu(nn.Dense(40)(x))
      return nn.Dense(5)(x)

  model = Net()
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  quantized = jax.tree.map(lambda a: _sparse(rng, a.shape, 0.03), params)
  packed = gmp_jax.pack(quantized, layout='sparse')
  assert isinstance(packed['Dense_0']['kernel'], SparsePackedArray)
  assert isinstance(packed['Conv_0']['kernel'], SparsePackedArray)
  apply_fn = lambda p, xb: model.apply({'params': p}, xb)
  fn = jax.jit(gmp_jax.packed_apply(apply_fn, like=params))

  def reference(xb):  # NumPy, float64.
    q = {k: {n: np.asarray(v, np.float64) for n, v in d.items()}
         for k, d in quantized.items()}
    k = q['Conv_0']['kernel']
    h = np.zeros((xb.shape[0], 6, 6, 4))
    for i in range(6):
      for j in range(6):
        h[:, i, j] = np.einsum('bhwc,hwco->bo', xb[:, i:i + 3, j:j + 3], k)
    h = np.maximum(h + q['Conv_0']['bias'], 0).reshape(xb.shape[0], -1)
    h = np.maximum(h @ q['Dense_0']['kernel'] + q['Dense_0']['bias'], 0)
    return h @ q['Dense_1']['kernel'] + q['Dense_1']['bias']

  for batch in (1, 16):
    xb = rng.normal(size=(batch, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(fn(packed, xb), reference(xb.astype(
        np.float64)), rtol=1e-4, atol=1e-5)


def test_sparse_file_round_trip_and_load(tmp_path):
  rng = np.random.default_rng(2)
  tree = {'dense1': {'kernel': _sparse(rng, (120, 50), 0.02),
                     'bias': np.zeros(50, np.float32)},
          'conv': {'kernel': _sparse(rng, (3, 3, 4, 8), 0.6)},
          'norm': {'scale': rng.normal(size=30).astype(np.float32)}}
  dense_bytes = codec.to_bytes(tree)
  packed = gmp_jax.pack(tree)
  assert isinstance(packed['dense1']['kernel'], SparsePackedArray)
  buf = io.BytesIO()
  gmp_jax.save_compressed(buf, packed)
  assert buf.getvalue() == dense_bytes
  path = tmp_path / 'm.gmpz'
  path.write_bytes(dense_bytes)
  loaded = gmp_jax.load_compressed(path, packed=True)
  kinds = {r.name: r.kind for r in packed_lib.summary(loaded)}
  assert kinds == {r.name: r.kind for r in packed_lib.summary(packed)}
  assert kinds['dense1/kernel'] == 'sparse' and kinds['conv/kernel'] == (
      'packed') and kinds['norm/scale'] == 'dense'
  s, want = loaded['dense1']['kernel'], packed['dense1']['kernel']
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(want)):
    _assert_bitwise(a, b)
  assert codec.to_bytes(loaded) == dense_bytes
  plain = gmp_jax.load_compressed(path, packed=True, layout='packed')
  assert isinstance(plain['dense1']['kernel'], PackedArray)
  with pytest.raises(ValueError, match='layout must be one of'):
    gmp_jax.load_compressed(path, packed=True, layout='bcsr')


def _valid():
  return (np.array([1, 0], np.uint8), np.array([0, 1], np.uint8),
          np.array([0x21], np.uint8), np.array([0, 1, 2], np.float32))


def test_bad_sparse_parts_raise_value_errors():
  rows, cols, codes, cb = _valid()
  SparsePackedArray(rows, cols, codes, cb, (2, 2))  # Valid.
  with pytest.raises(ValueError, match='code 3 is out of range.*K=3'):
    SparsePackedArray(rows, cols, np.array([0x31], np.uint8), cb, (2, 2))
  with pytest.raises(ValueError, match=r'entry 0 must be exactly \+0.0'):
    SparsePackedArray(rows, cols, codes, np.array([1, 1, 2], np.float32),
                      (2, 2))
  with pytest.raises(ValueError, match='K=257.*at most 256'):
    SparsePackedArray(rows, cols, np.array([1, 2], np.uint8),
                      np.zeros(257, np.float32), (2, 2), bits=8)
  with pytest.raises(ValueError, match='position is out of range'):
    SparsePackedArray(np.array([1, 2], np.uint8), cols, codes, cb, (2, 2))
  with pytest.raises(ValueError, match='sorted by column'):
    SparsePackedArray(rows, cols[::-1].copy(), codes, cb, (2, 2))
  with pytest.raises(ValueError, match='differ in length'):
    SparsePackedArray(rows, cols[:1], codes, cb, (2, 2))
  with pytest.raises(ValueError, match='at least one dimension'):
    SparsePackedArray(rows, cols, codes, cb, ())
  with pytest.raises(ValueError, match='unsigned integer'):
    SparsePackedArray(rows.astype(np.int32), cols, codes, cb, (2, 2))
  with pytest.raises(ValueError, match='padding nibble'):
    SparsePackedArray(rows[:1], cols[:1], np.array([0x21], np.uint8), cb,
                      (2, 2))
  params = {'w': gmp_jax.pack(_sparse(np.random.default_rng(0), (30, 20),
                                      0.02))}
  assert isinstance(params['w'], SparsePackedArray)
  fn = gmp_jax.packed_apply(lambda p, x: x @ p['w'],
                            like={'w': jax.ShapeDtypeStruct((20, 30),
                                                            jnp.float32)})
  with pytest.raises(ValueError, match=r"'w'.*shape \(30, 20\).*\(20, 30\)"):
    fn(params, np.ones((1, 30), np.float32))
