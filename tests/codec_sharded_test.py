"""Saving device and sharded arrays: NumPy's bytes, one leaf on the host.

On a 4-device CPU mesh (conftest.py sets JAX_NUM_CPU_DEVICES=4), a tree of
`jax.Array`s split over the devices is written to exactly the bytes of the
same tree as NumPy arrays (the independent reference) and loads back bit
for bit. The writer gathers one leaf at a time: leaves that count their
live host copies never have two alive at once.
"""

import io
import weakref

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from gmp_jax import codec

NUM_DEVICES = 4


def _quantized(rng, shape, k=5, density=0.3, dtype=np.float32):
  values = rng.standard_normal(k).astype(dtype)
  x = values[rng.integers(0, k, shape)]
  return np.where(rng.random(shape) < density, x, dtype(0))


def _numpy_tree(seed=0):
  rng = np.random.default_rng(seed)
  return {
      'conv': {'kernel': _quantized(rng, (3, 3, 8, 16))},
      'dense': {'kernel': _quantized(rng, (64, 32)),
                'bias': rng.standard_normal(32).astype(np.float32)},  # Raw.
      'half': _quantized(rng, (16, 8)).astype(ml_dtypes.bfloat16),
      'steps': np.arange(8, dtype=np.int32),
      'blocks': [_quantized(rng, (12, 4)), (np.zeros(4, np.int8), None)],
  }


def _map(tree, fn):
  """`fn` on every array leaf, keeping dict order (jax.tree.map sorts keys,
  which would change the file)."""
  if isinstance(tree, dict):
    return {k: _map(v, fn) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_map(v, fn) for v in tree)
  return None if tree is None else fn(tree)


def _shard(tree, mesh):
  """Each leaf on the mesh: split along its last axis where it divides."""

  def put(x):
    spec = (P(*([None] * (x.ndim - 1)), 'data')
            if x.ndim and x.shape[-1] % NUM_DEVICES == 0 else P())
    return jax.device_put(jnp.asarray(x), NamedSharding(mesh, spec))

  return _map(tree, put)


def _assert_same(want, got):
  assert jax.tree.structure(want) == jax.tree.structure(got)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    assert type(b) is np.ndarray
    assert b.dtype == a.dtype and b.shape == a.shape
    assert b.tobytes() == a.tobytes()


def test_sharded_tree_writes_the_bytes_of_its_numpy_tree(mesh, tmp_path):
  tree = _numpy_tree()
  sharded = _shard(tree, mesh)
  split = [x for x in jax.tree.leaves(sharded)
           if len(x.sharding.device_set) == NUM_DEVICES
           and not x.is_fully_replicated]
  assert len(split) >= 4  # The test covers arrays split over the devices.
  metadata = {'means': np.linspace(-1, 1, 8).astype(np.float32), 'k': 3}
  sharded_meta = {'means': _shard(metadata['means'], mesh), 'k': 3}
  path = tmp_path / 'm.gmpz'
  size = codec.save_compressed(path, sharded, metadata=sharded_meta)
  data = path.read_bytes()
  assert size == len(data)
  assert data == codec.to_bytes(tree, metadata=metadata)
  info = codec.load_compressed_with_info(path)
  params, meta = info.params, info.metadata
  # float32 codebooks: every leaf is stored exactly.
  _assert_same(tree, params)
  _assert_same(metadata['means'], meta['means'])
  assert meta['k'] == 3


def test_sharded_leaves_are_left_without_a_host_copy(mesh):
  sharded = _shard(_numpy_tree(1), mesh)
  codec.to_bytes(sharded)
  for x in jax.tree.leaves(sharded):
    # jax keeps the gathered value of a sharded array unless it is dropped.
    assert getattr(x, '_npy_value', None) is None


class _Counted:
  """An array leaf whose host copies (`__array__` results) are counted."""

  live = 0
  most = 0
  gathers = 0

  def __init__(self, value: np.ndarray):
    self._value = value
    self.dtype, self.shape = value.dtype, value.shape

  def __array__(self, dtype=None, copy=None):
    del copy
    out = np.array(self._value, dtype=dtype, copy=True)
    cls = type(self)
    cls.live += 1
    cls.gathers += 1
    cls.most = max(cls.most, cls.live)
    weakref.finalize(out, cls._drop)
    return out

  @classmethod
  def _drop(cls):
    cls.live -= 1

  @classmethod
  def reset(cls):
    cls.live = cls.most = cls.gathers = 0


def test_writer_holds_one_leaf_on_the_host_at_a_time():
  tree = _numpy_tree(2)
  counted = _map(tree, _Counted)
  _Counted.reset()
  buf = io.BytesIO()
  size = codec.save_compressed(buf, counted)
  # Planning, coding and writing each gather the leaves they need.
  assert _Counted.gathers > len(jax.tree.leaves(tree))
  assert _Counted.most == 1
  assert _Counted.live == 0
  assert buf.getvalue() == codec.to_bytes(tree)
  assert size == len(buf.getvalue())


def test_numpy_leaves_are_not_copied(monkeypatch):
  from gmp_jax.codec import _trees  # pylint: disable=import-outside-toplevel
  tree = _numpy_tree(3)
  originals = {id(x) for x in jax.tree.leaves(tree)}
  gathered = []
  as_array = _trees.as_array

  def spy(x, *args):
    out = as_array(x, *args)
    gathered.append(out is x and id(x) in originals)
    return out

  monkeypatch.setattr(_trees, 'as_array', spy)
  codec.to_bytes(tree)
  assert gathered and all(gathered)
