"""README "Run it compressed": the NNX example runs as written, packed.

The block is executed once (module fixture). Its logits are checked against
the dense quantised model run by Flax itself, its state against the file's
codebooks decoded with NumPy, and the README's table against the committed
benchmark JSON.
"""

import json
import os
import re

import jax
import numpy as np
import pytest

import gmp_jax
from benchmarks import packed as packed_benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _section() -> str:
  text = open(os.path.join(REPO, 'README.md')).read()
  return text.split('## Run it compressed\n', 1)[1].split('\n## ', 1)[0]


@pytest.fixture(scope='module')
def example(tmp_path_factory):
  blocks = re.findall(r'```python\n(.+?)\n```', _section(), flags=re.S)
  assert len(blocks) == 1
  namespace = {}
  cwd = os.getcwd()
  os.chdir(tmp_path_factory.mktemp('packed_example'))
  try:
    exec(compile(blocks[0], 'README-packed', 'exec'), namespace)  # pylint: disable=exec-used
    namespace['file_path'] = os.path.abspath('mlp.gmpz')
  finally:
    os.chdir(cwd)
  return namespace


def test_logits_equal_the_dense_quantised_model(example):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  dense = nnx.merge(example['graphdef'], example['quantized'])(example['x'])
  np.testing.assert_allclose(example['logits'], dense, rtol=1e-5, atol=1e-5)


def test_state_holds_packed_leaves_only(example):
  leaves = jax.tree.leaves(example['state'],
                           is_leaf=lambda l: isinstance(
                               l, (gmp_jax.PackedArray,
                                   gmp_jax.SparsePackedArray)))
  kernels = [l for l in leaves if isinstance(l, gmp_jax.PackedArray)]
  assert len(kernels) == 2  # fc1 and fc2's kernels; the zero biases sparse.
  assert all(isinstance(l, (gmp_jax.PackedArray, gmp_jax.SparsePackedArray))
             for l in leaves)
  for k in kernels:
    assert k.bits == 4 and np.asarray(k.indices).dtype == np.uint8
    # Two indices per byte: the dense float32 leaf is 8x the index bytes.
    assert np.asarray(k.indices).size * 2 >= np.prod(k.shape) > (
        np.asarray(k.indices).size * 2 - k.shape[0] - 1)
  quantized = nnx_pure(example['quantized'])
  for name in ('fc1', 'fc2'):
    k = example['packed'][name]['kernel']
    decoded = np.asarray(k.codebook)[_nibbles(np.asarray(k.indices),
                                              k.shape)]
    np.testing.assert_array_equal(decoded, quantized[name]['kernel'])


def nnx_pure(state):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return jax.tree.map(np.asarray, nnx.to_pure_dict(state))


def _nibbles(packed: np.ndarray, shape) -> np.ndarray:
  """Low nibble first, per row of the last axis (NumPy, not the library)."""
  both = np.stack([packed & 15, packed >> 4], axis=-1).reshape(
      *packed.shape[:-1], -1)
  return both[..., :shape[-1]].astype(np.int64)


def test_readme_table_is_the_committed_benchmark():
  results = json.load(open(os.path.join(REPO, 'results',
                                        'packed_cpu.json')))
  assert packed_benchmark.models_table(results) in _section()
  results_readme = open(os.path.join(REPO, 'results', 'README.md')).read()
  assert packed_benchmark.models_table(results) in results_readme
  assert packed_benchmark._table(results) in results_readme  # pylint: disable=protected-access
