"""Post-processing of FSDP-sharded parameters equals the unsharded run.

On 4 virtual CPU devices (conftest.py), `merge_components`, `quantize`,
`sparsity_table` and `compression_report` take a tree whose large leaves
are split along their last axis
(`experiments.infra.sharding.fsdp_sharding`) and give what they give on one
device; the quantised leaves stay split the same way,
and the compiled programs gather no leaf.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import gmp_jax
from gmp_jax import report
from experiments.infra import sharding

NUM_DEVICES = 4
MIN_SIZE = 500
SPLIT = ('conv/kernel', 'dense/kernel')


def _params():
  rng = np.random.default_rng(0)
  return {'conv': {'kernel': jnp.asarray(rng.normal(0, 0.2, (3, 3, 4, 16)),
                                         jnp.float32),
                   'bias': jnp.asarray(rng.normal(0, 0.01, 16), jnp.float32)},
          'dense': {'kernel': jnp.asarray(rng.normal(0, 0.2, (64, 32)),
                                          jnp.float32),
                    'bias': jnp.asarray(rng.normal(0, 0.01, 32),
                                        jnp.float32)}}


def _mixture(params):
  """A retrained-looking mixture: a drifted mean and a near-duplicate."""
  mixture = gmp_jax.init_mixture(params, 9, init_std=0.03,
                                 zero_proportion=0.5,
                                 filter_fn=lambda p, x: x.ndim > 1)
  means = np.asarray(mixture.nonzero_means).copy()
  means[3] = 1.59e-5
  means[5] = means[4] * (1 + 4e-5)
  return mixture.replace(nonzero_means=jnp.asarray(means, jnp.float32))


def _place(tree, mesh):
  return jax.device_put(tree, sharding.fsdp_sharding(tree, mesh,
                                                     min_size=MIN_SIZE))


def _name(path):
  return '/'.join(k.key for k in path)


def test_split_as_intended(mesh):
  placed = _place(_params(), mesh)
  for path, leaf in jax.tree_util.tree_flatten_with_path(placed)[0]:
    assert leaf.sharding.is_fully_replicated == (_name(path) not in SPLIT)


def test_merge_components_matches_one_device(mesh):
  params = _params()
  mixture = _mixture(params)
  want = gmp_jax.merge_components(mixture)
  got = gmp_jax.merge_components(_place(mixture, mesh))
  assert got.num_components == want.num_components < mixture.num_components
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(g, w)


def _collectives(hlo):
  return re.findall(r'\b(all-gather|all-to-all|collective-permute)', hlo)


def test_quantize_stays_split_and_gathers_nothing(mesh):
  params = _params()
  merged = gmp_jax.merge_components(_mixture(params))
  want = gmp_jax.quantize(params, merged)
  placed, m = _place(params, mesh), _place(merged, mesh)
  got = gmp_jax.quantize(placed, m)
  flat_got = jax.tree_util.tree_flatten_with_path(got)[0]
  for (path, g), w, p in zip(flat_got, jax.tree.leaves(want),
                             jax.tree.leaves(placed)):
    np.testing.assert_array_equal(g, w)
    assert g.sharding.is_equivalent_to(p.sharding, g.ndim), _name(path)
  for leaf in (got['dense']['kernel'], got['conv']['kernel']):
    values = np.asarray(leaf)
    assert values.any() and not values.all()
  hlo = jax.jit(gmp_jax.quantize).lower(placed, m).compile().as_text()
  assert not _collectives(hlo)


def _numpy_table_counts(leaves):
  flat = np.concatenate([np.asarray(x, np.float32).ravel() for x in leaves])
  return (flat.size, int(np.count_nonzero(flat)),
          len(set(flat[flat != 0].tolist())))


def test_sparsity_table_matches_numpy_on_split_leaves(mesh):
  params = _params()
  mixture = gmp_jax.merge_components(_mixture(params))
  quantized = gmp_jax.quantize(params, mixture)
  placed = _place(quantized, mesh)
  assert not placed['dense']['kernel'].sharding.is_fully_replicated
  for by in ('leaf', 'layer'):
    assert (gmp_jax.sparsity_table(placed, mixture, by=by)
            == gmp_jax.sparsity_table(quantized, mixture, by=by))
  table = gmp_jax.sparsity_table(placed, mixture)
  total, raw = [r for r in table if r['layer'] in ('total', 'raw')]
  kernels = [quantized['conv']['kernel'], quantized['dense']['kernel']]
  biases = [quantized['conv']['bias'], quantized['dense']['bias']]
  assert (total['parameters'], total['nonzero'],
          total['distinct_values']) == _numpy_table_counts(kernels)
  assert (raw['parameters'], raw['nonzero'],
          raw['distinct_values']) == _numpy_table_counts(biases)
  # The count of a split leaf runs on its devices: scalars cross, no leaf.
  leaf = placed['dense']['kernel']
  hlo = report._device_count.lower(  # pylint: disable=protected-access
      leaf, 64).compile().as_text()
  assert not _collectives(hlo)
  assert 'all-reduce' in hlo


def test_sparsity_table_of_an_unquantised_split_leaf(mesh):
  # More distinct values than the on-device count lists: read to the host.
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(8, 1024)), jnp.float32)
  placed = jax.device_put(x, NamedSharding(mesh, P(None, 'data')))
  row = gmp_jax.sparsity_table({'w': placed})[0]
  assert row['distinct_values'] == np.unique(np.asarray(x)).size == 8192


def test_compression_report_matches_one_device(mesh):
  params = _params()
  mixture = gmp_jax.merge_components(_mixture(params))
  quantized = gmp_jax.quantize(params, mixture)
  placed = _place(quantized, mesh)
  assert (report.compression_report(placed).to_dict()
          == report.compression_report(quantized).to_dict())
