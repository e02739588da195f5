"""Packed arrays (gmp_jax.packed): exact packing, files, running packed.

References are independent NumPy computations: hand-written nibble layouts,
bit-pattern comparisons, float64 matrix products.
"""

import io

import equinox as eqx
from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import gmp_jax
import helpers
from gmp_jax import codec
from gmp_jax import packed as packed_lib
from gmp_jax.packed import PackedArray

_bits = helpers.bit_patterns
_assert_bitwise = helpers.assert_bitwise_equal


def _quantized(rng, shape, k, dtype=np.float32, zero=True):
  """A leaf of `k` distinct values (one of them +0.0 when `zero`)."""
  values = rng.choice(np.arange(1, 4 * k + 1), size=k, replace=False)
  values = (values * 0.01 * rng.choice([-1, 1], size=k)).astype(dtype)
  if zero:
    values[0] = 0
  flat = values[np.arange(int(np.prod(shape))) % k]  # Every value present.
  return rng.permutation(flat).reshape(shape)


def _matrix(rng, shape, k=16):
  return _quantized(rng, shape, k)


# ------------------------------------------------------------------ pack ---


@pytest.mark.parametrize('k,bits,shape', [
    (2, 4, (7,)), (2, 4, (3, 5)), (16, 4, (2, 3, 9)), (16, 4, (64, 40)),
    (17, 8, (3, 7)), (17, 8, (2, 3, 9)), (256, 8, (5, 3, 21)),
    (256, 8, (64, 40))])
def test_round_trip_is_exact_for_4_and_8_bit_codebooks(k, bits, shape):
  rng = np.random.default_rng(k)
  x = _quantized(rng, shape, k)
  p = packed_lib.pack_array(x)
  assert (p.bits, p.num_values, p.shape, p.dtype) == (bits, k, shape,
                                                       np.float32)
  assert p.indices.dtype == np.uint8
  last = shape[-1] if bits == 8 else (shape[-1] + 1) // 2
  assert p.indices.shape == shape[:-1] + (last,)
  assert _bits(p.codebook)[0] == 0
  _assert_bitwise(gmp_jax.unpack(p), x)
  _assert_bitwise(jax.jit(lambda q: q.dequantize())(jax.device_put(p)), x)


def test_nibble_layout_by_hand():
  """Entry j of a row: byte j // 2, low nibble for even j; odd rows padded."""
  c = np.float32
  x = np.array([[0.5, 0, -1.0], [-1.0, 0.5, 0.5]], c)
  p = packed_lib.pack_array(x)
  # Codebook by bit pattern: +0.0 (0), 0.5 (0x3f000000), -1.0 (0xbf800000).
  np.testing.assert_array_equal(p.codebook, np.array([0, 0.5, -1.0], c))
  np.testing.assert_array_equal(
      p.indices, np.array([[0x01, 0x02], [0x12, 0x01]], np.uint8))
  assert p.nbytes == 4 + 3 * 4


def test_signed_zero_and_nan_payloads_keep_their_bits():
  neg0, nan = np.float32(-0.0), np.array([0x7fc00001], np.uint32).view(
      np.float32)[0]
  x = np.array([0.0, neg0, 1.5, nan, neg0], np.float32)
  p = packed_lib.pack_array(x)
  assert p.num_values == 4
  idx = np.asarray(p.indices)
  lo_hi = np.stack([idx & 15, idx >> 4], -1).reshape(-1)[:5]
  assert lo_hi[0] == 0 and lo_hi[1] != 0  # -0.0 is not index 0.
  _assert_bitwise(gmp_jax.unpack(p), x)
  _assert_bitwise(jax.jit(lambda q: q.dequantize())(jax.device_put(p)), x)


def test_a_leaf_without_zero_gets_a_zero_entry():
  x = np.array([[1.0, 2.0], [2.0, 1.0]], np.float32)
  p = packed_lib.pack_array(x)
  np.testing.assert_array_equal(p.codebook, [0.0, 1.0, 2.0])
  _assert_bitwise(gmp_jax.unpack(p), x)


@pytest.mark.parametrize('dtype', [np.float64, np.float16,
                                   ml_dtypes.bfloat16])
def test_other_float_dtypes_round_trip(dtype):
  x = _quantized(np.random.default_rng(1), (5, 6), 5, dtype)
  p = packed_lib.pack_array(x)
  assert p.dtype == np.dtype(dtype) and p.codebook.dtype == np.dtype(dtype)
  _assert_bitwise(gmp_jax.unpack(p), x)
  on_device = jax.device_put(p)  # float64 becomes float32 without x64.
  assert on_device.dtype == on_device.codebook.dtype
  _assert_bitwise(jax.jit(lambda q: q.dequantize())(on_device),
                  x.astype(on_device.dtype))


@pytest.mark.parametrize('shape', [(), (0,), (3, 0), (0, 5), (1,), (1, 1)])
def test_scalars_and_empty_leaves(shape):
  x = np.full(shape, 0.25, np.float32)
  p = packed_lib.pack_array(x)
  assert p.shape == shape and p.size == x.size
  _assert_bitwise(np.asarray(p), x)
  _assert_bitwise(jax.jit(lambda q: q.dequantize())(jax.device_put(p)), x)
  if not x.size:
    assert p.bits_per_weight == float('inf')


def test_pack_tree_packs_quantized_leaves_and_reports_the_dense_ones():
  rng = np.random.default_rng(0)
  tree = {'kernel': _matrix(rng, (32, 48)),
          'wide': _quantized(rng, (30, 20), 300),  # > 256 values.
          'bias': rng.normal(size=8).astype(np.float32),  # Not smaller.
          'count': np.arange(4, dtype=np.int32),
          'none': None,
          'kernel8': _quantized(rng, (16, 16), 40)}
  p = gmp_jax.pack(tree)
  assert isinstance(p['kernel'], PackedArray) and p['kernel'].bits == 4
  assert isinstance(p['kernel8'], PackedArray) and p['kernel8'].bits == 8
  for name in ('wide', 'bias', 'count'):
    assert p[name] is tree[name]
  assert p['none'] is None
  rows = {r.name: r for r in packed_lib.summary(p)}
  assert {n: r.kind for n, r in rows.items()} == {
      'bias': 'dense', 'count': 'dense', 'kernel': 'packed',
      'kernel8': 'packed', 'wide': 'dense'}
  assert rows['kernel'].nbytes == 32 * 24 + 16 * 4
  assert rows['bias'].bits_per_weight == 32.0
  assert packed_lib.resident_bytes(p) == sum(r.nbytes for r in rows.values())
  back = gmp_jax.unpack(p)
  for name in ('kernel', 'kernel8'):
    _assert_bitwise(back[name], tree[name])
  # Forced: 8-bit indices for K <= 16; everything with smaller_only=False.
  assert gmp_jax.pack(tree, bits=8)['kernel'].bits == 8
  assert isinstance(gmp_jax.pack(tree, smaller_only=False)['bias'],
                    PackedArray)


def test_realistic_leaves_are_resident_at_4_bits_per_weight():
  x = _matrix(np.random.default_rng(0), (256, 256))
  p = gmp_jax.pack({'w': x})['w']
  assert p.nbytes == 256 * 128 + 16 * 4
  assert p.bits_per_weight == 8 * p.nbytes / x.size <= 4.5
  assert x.nbytes / p.nbytes >= 7


def test_pack_leaf_under_jit_matches_host_packing():
  rng = np.random.default_rng(0)
  x = _matrix(rng, (9, 7))
  host = packed_lib.pack_array(x)
  order = rng.permutation(np.arange(1, 16))  # Entry 0 stays first.
  codebook = np.concatenate([host.codebook[:1], host.codebook[order]])
  p = jax.jit(packed_lib.pack_leaf)(x, codebook)
  assert isinstance(p, PackedArray) and p.bits == 4
  _assert_bitwise(gmp_jax.unpack(jax.device_get(p)), x)
  _assert_bitwise(p.codebook, codebook)
  with pytest.raises(ValueError, match='not in the codebook'):
    packed_lib.pack_leaf(x, codebook[:-1])


# ---------------------------------------------------------------- errors ---


def _valid_parts():
  return np.array([[0x21]], np.uint8), np.array([0, 1, 2], np.float32)


def test_bad_parts_raise_value_errors_naming_the_problem():
  idx, cb = _valid_parts()
  PackedArray(idx, cb, (1, 2))  # Valid.
  with pytest.raises(ValueError, match='index 3 is out of range.*K=3'):
    PackedArray(np.array([[0x31]], np.uint8), cb, (1, 2))
  with pytest.raises(ValueError, match='index 200 is out of range'):
    PackedArray(np.array([[200, 1]], np.uint8), cb, (1, 2), bits=8)
  with pytest.raises(ValueError, match=r'entry 0 must be exactly \+0.0'):
    PackedArray(idx, np.array([0.5, 1, 2], np.float32), (1, 2))
  with pytest.raises(ValueError, match=r'entry 0 must be exactly \+0.0'):
    PackedArray(idx, np.array([-0.0, 1, 2], np.float32), (1, 2))
  with pytest.raises(ValueError, match='K=257.*at most 256'):
    PackedArray(np.zeros((1, 2), np.uint8), np.zeros(257, np.float32),
                (1, 2), bits=8)
  with pytest.raises(ValueError, match='K=17 entries, more than 4-bit'):
    PackedArray(idx, np.zeros(17, np.float32), (1, 2), bits=4)
  with pytest.raises(ValueError, match=r'do not fit.*want \(1, 1\)'):
    PackedArray(np.zeros((1, 2), np.uint8), cb, (1, 2))
  with pytest.raises(ValueError, match='indices must be uint8'):
    PackedArray(idx.astype(np.int32), cb, (1, 2))
  with pytest.raises(ValueError, match='padding nibble'):
    PackedArray(np.array([[0x21]], np.uint8), cb, (1, 1))
  with pytest.raises(ValueError, match='high nibble of a scalar'):
    PackedArray(np.array(0x21, np.uint8), cb, ())
  with pytest.raises(ValueError, match='must be floating'):
    PackedArray(idx, np.array([0, 1, 2], np.int32), (1, 2))
  with pytest.raises(ValueError, match='codebook is empty'):
    PackedArray(np.zeros((0,), np.uint8), np.zeros(0, np.float32), (0,))
  with pytest.raises(ValueError, match='bits must be 4 or 8'):
    PackedArray(idx, cb, (1, 2), bits=2)
  with pytest.raises(ValueError, match='K=300'):
    packed_lib.bits_for(300)


def test_pack_array_refuses_what_it_cannot_pack():
  assert packed_lib.pack_array(np.arange(300, dtype=np.float32)) is None
  with pytest.raises(ValueError, match='must be floating'):
    packed_lib.pack_array(np.arange(3))
  with pytest.raises(ValueError, match='do not fit 4-bit'):
    packed_lib.pack_array(np.arange(20, dtype=np.float32), bits=4)
  with pytest.raises(ValueError, match='bits must be None, 4 or 8'):
    gmp_jax.pack({}, bits=2)


def test_packed_apply_checks_shapes_against_the_model():
  rng = np.random.default_rng(0)
  params = gmp_jax.pack({'w': _matrix(rng, (8, 6))})
  like = {'w': jax.ShapeDtypeStruct((6, 8), jnp.float32)}
  fn = gmp_jax.packed_apply(lambda p, x: x @ p['w'], like=like)
  with pytest.raises(ValueError, match=r"'w'.*shape \(8, 6\).*\(6, 8\)"):
    fn(params, np.ones((1, 8), np.float32))
  bad_dtype = {'w': jax.ShapeDtypeStruct((8, 6), jnp.bfloat16)}
  with pytest.raises(ValueError, match='dtype float32.*bfloat16'):
    gmp_jax.packed_apply(lambda p, x: x, like=bad_dtype)(params, 0)
  with pytest.raises(ValueError, match='structure'):
    gmp_jax.packed_apply(lambda p, x: x, like={'v': like['w']})(params, 0)
  ok = jax.jit(gmp_jax.packed_apply(lambda p, x: x @ p['w'],
                                    like={'w': np.zeros((8, 6), np.float32)}))
  assert ok(params, np.ones((1, 8), np.float32)).shape == (1, 6)


# ----------------------------------------------------------------- files ---


def _model_tree(rng):
  return {'dense': {'kernel': _matrix(rng, (40, 30)),
                    'bias': _quantized(rng, (30,), 3)},
          'wide': {'kernel': _quantized(rng, (20, 20), 300)},  # K > 256.
          'norm': {'scale': rng.normal(size=30).astype(np.float32)},
          'emb': [_quantized(rng, (9, 33), 60), _matrix(rng, (5, 7))]}


def test_file_round_trip_packed_and_dense_are_byte_identical():
  rng = np.random.default_rng(0)
  tree = _model_tree(rng)
  dense_bytes = codec.to_bytes(tree)
  packed_tree = gmp_jax.pack(tree)
  assert isinstance(packed_tree['dense']['kernel'], PackedArray)
  assert codec.to_bytes(packed_tree) == dense_bytes
  buf = io.BytesIO()
  assert gmp_jax.save_compressed(buf, packed_tree) == len(dense_bytes)
  assert buf.getvalue() == dense_bytes
  # On device (key order kept): the leaves are gathered one at a time.
  on_device = packed_lib._map(jax.device_put, packed_tree)  # pylint: disable=protected-access
  assert isinstance(on_device['dense']['kernel'].indices, jax.Array)
  assert codec.to_bytes(on_device) == dense_bytes


def test_load_packed_decodes_into_packed_leaves(tmp_path):
  rng = np.random.default_rng(1)
  tree = _model_tree(rng)
  path = tmp_path / 'model.gmpz'
  gmp_jax.save_compressed(path, tree, metadata={'step': np.arange(3.0)})
  info = gmp_jax.load_compressed_with_info(path)
  dense, meta = info.params, info.metadata
  info_p = gmp_jax.load_compressed_with_info(path, packed=True)
  loaded, meta_p = info_p.params, info_p.metadata
  kinds = {r.name: r.kind for r in packed_lib.summary(loaded)}
  assert kinds == {'dense/bias': 'packed', 'dense/kernel': 'packed',
                   'emb/0': 'packed', 'emb/1': 'packed',
                   'norm/scale': 'dense', 'wide/kernel': 'dense'}
  assert loaded['emb'][0].bits == 8 and loaded['emb'][1].bits == 4
  assert isinstance(meta_p['step'], np.ndarray)
  _assert_bitwise(meta_p['step'], meta['step'])
  # Exact, and the packing `pack` gives the dense tree.
  repacked = gmp_jax.pack(dense)
  for got, want, d in zip(
      jax.tree.leaves(loaded, is_leaf=packed_lib.is_packed),
      jax.tree.leaves(repacked, is_leaf=packed_lib.is_packed),
      jax.tree.leaves(dense)):
    assert type(got) is type(want)
    _assert_bitwise(np.asarray(got), d)
    if isinstance(got, PackedArray):
      np.testing.assert_array_equal(got.indices, want.indices)
      _assert_bitwise(got.codebook, want.codebook)
  # And back to the same file.
  assert codec.to_bytes(loaded, metadata=meta_p) == path.read_bytes()
  assert [i.kind for i in info_p.leaves if i.name == 'norm/scale'] == ['raw']
  assert info_p.leaves == info.leaves


def test_load_packed_with_a_narrower_codebook_dtype():
  """A float64 leaf stored with float32 codebooks packs as float64."""
  x = _quantized(np.random.default_rng(2), (12, 10), 6, np.float64)
  data = codec.to_bytes({'w': x})  # codebook_dtype float32.
  p = codec.from_bytes(data, packed=True).params['w']
  assert isinstance(p, PackedArray) and p.dtype == np.float64
  _assert_bitwise(np.asarray(p), codec.from_bytes(data).params['w'])


def test_load_packed_detects_corruption_and_needs_decoding():
  data = bytearray(codec.to_bytes(_model_tree(np.random.default_rng(3))))
  with pytest.raises(ValueError, match='packed=True needs decode=True'):
    codec.from_bytes(bytes(data), packed=True, decode=False)
  data[len(data) // 2] ^= 1
  with pytest.raises(codec.CorruptFileError):
    codec.from_bytes(bytes(data), packed=True)


# ---------------------------------------------------------------- matmul ---


def _value_shapes(jaxpr):
  """Shapes of every value a jaxpr computes, nested jaxprs included."""
  shapes = set()
  for eqn in jaxpr.eqns:
    shapes |= {tuple(v.aval.shape) for v in eqn.outvars}
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, 'jaxpr', sub)  # A ClosedJaxpr's Jaxpr.
        if hasattr(sub, 'eqns'):
          shapes |= _value_shapes(sub)
  return shapes


@pytest.mark.parametrize('transpose', [False, True])
def test_packed_matmul_in_blocks_matches_numpy(monkeypatch, transpose):
  monkeypatch.setattr(packed_lib, 'BLOCK_BYTES', 10 * 33 * 4)  # 10 rows.
  rng = np.random.default_rng(0)
  w = _matrix(rng, (45, 33))  # 4 blocks and a tail of 5 rows.
  p = jax.device_put(packed_lib.pack_array(w))
  x = rng.normal(size=(2, 3, 33 if transpose else 45)).astype(np.float32)
  fn = jax.jit(lambda a, q: packed_lib.packed_matmul(a, q,
                                                     transpose_w=transpose))
  y = fn(x, p)
  want = x.astype(np.float64) @ (w.T if transpose else w).astype(np.float64)
  assert y.shape == want.shape and y.dtype == jnp.float32
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  # The dense W is never formed: no value in the program has its shape.
  shapes = _value_shapes(jax.make_jaxpr(fn)(x, p).jaxpr)
  assert (45, 33) not in shapes and (10, 33) in shapes


# ----------------------------------------------------------- packed_apply ---


def _mlp(params, x):
  h = jax.nn.relu(x @ params['l1']['w'] + params['l1']['b'][None])
  return h @ params['l2']['w'].T  # Torch layout: (out, in).


@pytest.mark.parametrize('fuse', [True, False])
def test_packed_apply_plain_function(monkeypatch, fuse):
  monkeypatch.setattr(packed_lib, 'BLOCK_BYTES', 8 * 24 * 4)
  rng = np.random.default_rng(0)
  params = {'l1': {'w': _matrix(rng, (20, 24)),
                   'b': rng.normal(size=24).astype(np.float32)},
            'l2': {'w': _quantized(rng, (10, 24), 40)}}
  x = rng.normal(size=(5, 20)).astype(np.float32)
  packed = jax.device_put(gmp_jax.pack(params))
  fn = jax.jit(gmp_jax.packed_apply(_mlp, fuse_matmul=fuse))
  np.testing.assert_allclose(fn(packed, x), _mlp(params, x), rtol=1e-5,
                             atol=1e-5)
  # The jitted function's arguments are the packed parts.
  args = jax.tree.leaves(fn.lower(packed, x).args_info)
  dtypes = sorted(str(a.dtype) for a in args)
  assert dtypes == ['float32'] * 4 + ['uint8'] * 2
  shapes = {tuple(a.shape) for a in args}
  assert (20, 12) in shapes and (10, 24) in shapes  # 4-bit and 8-bit.
  assert (20, 24) not in shapes


def test_packed_apply_flax_linen():
  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(24)(x))
      return nn.Dense(6)(x)

  model = Net()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 16)).astype(np.float32)
  # Shapes only: an eager `init` costs seconds.
  params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  quantized = jax.tree.map(lambda a: _quantized(rng, a.shape, 12), params)
  apply_fn = lambda p, xb: model.apply({'params': p}, xb)
  packed = gmp_jax.pack(quantized)
  assert isinstance(packed['Dense_0']['kernel'], PackedArray)
  got = jax.jit(gmp_jax.packed_apply(apply_fn, like=params))(packed, x)
  np.testing.assert_allclose(got, apply_fn(quantized, x), rtol=1e-5,
                             atol=1e-6)


def test_packed_apply_flax_nnx():
  class Net(nnx.Module):

    def __init__(self, rngs):
      self.l1 = nnx.Linear(16, 24, rngs=rngs)
      self.l2 = nnx.Linear(24, 6, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.l1(x)))

  # Shapes only: an eager initialisation costs seconds.
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Net(nnx.Rngs(0))))
  rng = np.random.default_rng(1)
  quantized = jax.tree.map(lambda a: _quantized(rng, a.shape, 10), state)
  packed = gmp_jax.pack(quantized)
  kernel = packed['l1']['kernel']  # A Param: get_value() from flax 0.12.
  kernel = (kernel.get_value() if hasattr(kernel, 'get_value')
            else kernel.value)
  assert isinstance(kernel, PackedArray)
  apply_fn = lambda s, xb: nnx.merge(graphdef, s)(xb)
  x = rng.normal(size=(3, 16)).astype(np.float32)
  got = jax.jit(gmp_jax.packed_apply(apply_fn))(packed, x)
  np.testing.assert_allclose(got, apply_fn(quantized, x), rtol=1e-5,
                             atol=1e-6)


def test_packed_apply_equinox():
  model = eqx.filter_eval_shape(  # Shapes only: no eager init.
      eqx.nn.MLP, 12, 5, 20, depth=2, activation=jax.nn.tanh,
      key=jax.random.key(0))
  params, static = eqx.partition(
      model, lambda a: isinstance(a, jax.ShapeDtypeStruct))
  rng = np.random.default_rng(2)
  quantized = jax.tree.map(lambda a: _quantized(rng, a.shape, 16), params)
  packed = gmp_jax.pack(quantized)
  assert isinstance(packed.layers[0].weight, PackedArray)
  apply_fn = lambda p, xb: jax.vmap(eqx.combine(p, static))(xb)
  x = rng.normal(size=(4, 12)).astype(np.float32)
  got = jax.jit(gmp_jax.packed_apply(apply_fn))(packed, x)
  np.testing.assert_allclose(got, apply_fn(quantized, x), rtol=1e-5,
                             atol=1e-6)


def test_packed_apply_through_casts_nested_jit_and_other_uses():
  """A bf16 cast, a nested jit and a non-matmul use of a packed leaf."""
  rng = np.random.default_rng(3)
  w = _matrix(rng, (8, 8))

  @jax.jit
  def inner(x, w):
    return x @ w.astype(jnp.bfloat16)

  def fn(p, x):
    return inner(x, p['w']).astype(jnp.float32) + jnp.sum(p['w'])

  x = rng.normal(size=(2, 8)).astype(jnp.bfloat16)
  got = jax.jit(gmp_jax.packed_apply(fn))(gmp_jax.pack({'w': w}), x)
  np.testing.assert_allclose(got, fn({'w': w}, x), rtol=1e-2)


def test_packed_apply_on_sharded_packed_leaves(mesh):
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  w = _matrix(rng, (16, 10))
  p = packed_lib.pack_array(w)
  shardings = PackedArray.tree_unflatten(
      (p.shape, p.bits),
      (NamedSharding(mesh, P('data')), NamedSharding(mesh, P())))
  sharded = jax.device_put(p, shardings)
  assert len(sharded.indices.sharding.device_set) == 4
  x = rng.normal(size=(3, 16)).astype(np.float32)
  got = jax.jit(gmp_jax.packed_apply(lambda q, a: a @ q))(sharded, x)
  np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-6)
