"""Trees with int dict keys (flax nnx pure dicts) round-trip with key types."""

import io

import numpy as np
import pytest

from gmp_jax import codec
import helpers


_assert_same = helpers.assert_same_tree


def _round_trip(tree, **kwargs):
  buf = io.BytesIO()
  codec.save_compressed(buf, tree, **kwargs)
  buf.seek(0)
  info = codec.load_compressed_with_info(buf)
  return (info.params, info.metadata) if 'metadata' in kwargs else info.params


def test_int_keys_keep_their_type():
  w = np.where(np.arange(12).reshape(3, 4) % 3 == 0, np.float32(0.5), 0)
  tree = {'blocks': {0: {'kernel': w.astype(np.float32)},
                     1: {'kernel': np.ones((2, 2), np.float32)},
                     -7: [np.zeros(3, np.int8)]},
          'mixed': {'1': np.ones(1, np.float32), 1: np.zeros(1, np.float32),
                    2**70: (None,)},
          'head': {'bias': np.arange(3, dtype=np.float32)}}
  _assert_same(tree, _round_trip(tree))


def test_int_keys_in_metadata():
  params, meta = _round_trip({'w': np.ones(2, np.float32)},
                             metadata={'layers': {0: 'conv', 1: 'dense'}})
  assert meta == {'layers': {0: 'conv', 1: 'dense'}}
  assert [type(k) for k in meta['layers']] == [int, int]
  _assert_same({'w': np.ones(2, np.float32)}, params)


def test_numpy_int_keys_come_back_as_int():
  out = _round_trip({np.int64(3): np.ones(2, np.float32)})
  assert list(out) == [3] and type(list(out)[0]) is int


def test_a_file_without_int_keys_has_no_keyed_dict_tag():
  # The str-keyed layout: tag 1, one entry, the key 'w' (varint 3, 'w').
  data = codec.to_bytes({'w': np.ones(2, np.float32)})
  assert data[7:11] == bytes([1, 1, 3]) + b'w'
  data = codec.to_bytes({0: np.ones(2, np.float32)})
  assert data[7:11] == bytes([10, 1, 6, 0])  # Keyed dict; int key 0.


def test_version_1_writer_rejects_int_keys():
  with pytest.raises(TypeError, match='blocks: dict keys must be str, got 0'):
    helpers.to_bytes_v1({'blocks': {0: np.ones(2, np.float32)}})


@pytest.mark.parametrize('key', [1.5, (0, 1), True, b'k'])
def test_other_keys_name_the_path(key):
  with pytest.raises(TypeError, match=r'blocks/0: dict keys must be str or '
                     r'int, got'):
    codec.to_bytes({'blocks': {0: {key: np.ones(2, np.float32)}}})


def test_nnx_list_of_linear_layers_round_trips(tmp_path):
  nnx = pytest.importorskip('flax.nnx')
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  class Net(nnx.Module):

    def __init__(self, rngs):
      # nnx.List on flax >= 0.12; flax 0.11 takes a plain list (int keys too).
      self.blocks = getattr(nnx, 'List', list)(
          [nnx.Linear(4, 4, rngs=rngs) for _ in range(3)])
      self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      for block in self.blocks:
        x = jax.nn.relu(block(x))
      return self.head(x)

  model = Net(nnx.Rngs(0))
  pure = nnx.to_pure_dict(nnx.state(model))
  assert list(pure['blocks']) == [0, 1, 2]
  path = tmp_path / 'nnx.gmpz'
  codec.save_compressed(path, pure, codebook_dtype=None)
  loaded = codec.load_compressed(path)
  _assert_same(jax.tree.map(np.asarray, pure), loaded)
  fresh = Net(nnx.Rngs(1))
  state = nnx.state(fresh)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, loaded))
  nnx.update(fresh, state)
  x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(model(x)))
