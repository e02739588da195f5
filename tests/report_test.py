"""Tests of the tables of gmp_jax.report: Table 1 and the size report."""

import heapq
import io
import json
import math
import os

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
from gmp_jax import codec
from gmp_jax import report


def _tiny_tree():
  """Hand-checkable leaves; the Han counts are worked out in the tests."""
  a, b, c = np.float32(0.5), np.float32(-1.25), np.float32(2.0)
  dense = np.zeros(80, np.float32)  # ndim 1: 5-bit relative indices.
  dense[[2, 5, 45, 79]] = [a, b, a, a]
  conv = np.zeros((1, 1, 1, 300), np.float32)  # ndim 4: 8-bit indices.
  conv[0, 0, 0, [0, 299]] = c
  return {'conv': conv, 'dense': dense, 'zero': np.zeros((3, 3), np.float32)}


# Han et al. counts of `_tiny_tree`, by hand.
#
# dense: nonzeros at 2, 5, 45, 79 -> gaps from p0 = -1: 3, 3, 40, 34. A 5-bit
#   field spans gaps 1..32, so 40 and 34 need floor((g - 1) / 32) = 1 filler
#   each: 6 entries, 6 * 5 = 30 index bits. Entry values: a x3, b x1,
#   filler x2; Huffman merges 1+2 = 3, then 3+3 = 6: 9 bits (a: 1 bit, b and
#   filler: 2 bits; 3*1 + 1*2 + 2*2 = 9). Codebook {a, b}: 64 bits.
#   Total 30 + 9 + 64 = 103.
# conv: nonzeros at 0, 299 -> gaps 1, 299; an 8-bit field spans 1..256, so
#   299 needs floor(298 / 256) = 1 filler: 3 entries, 24 bits. Values c x2,
#   filler x1: two symbols, 1 bit each, 3 bits. Codebook {c}: 32 bits.
#   Total 24 + 3 + 32 = 59.
# zero: no entries, 0 bits.
_HAN_DENSE, _HAN_CONV = 30 + 9 + 64, 24 + 3 + 32
_N = 300 + 80 + 9


def test_han_figures_match_hand_computation():
  rep = report.compression_report(_tiny_tree())
  rows = {r.name: r for r in rep.rows}
  assert (rows['dense'].han_index_width, rows['dense'].han_entries,
          rows['dense'].han_bits) == (5, 6, _HAN_DENSE)
  assert (rows['conv'].han_index_width, rows['conv'].han_entries,
          rows['conv'].han_bits) == (8, 3, _HAN_CONV)
  assert rows['zero'].han_bits == 0
  assert rep.han_bits == _HAN_DENSE + _HAN_CONV
  assert rep.cr_han == pytest.approx(32 * _N / (_HAN_DENSE + _HAN_CONV))
  assert rep.cr_sparsity == pytest.approx(_N / 6)
  assert [(r.parameters, r.nonzeros, r.distinct) for r in rep.rows] == [
      (300, 2, 1), (80, 4, 2), (9, 0, 0)]


def test_is_conv_option_changes_the_index_width():
  rep = report.compression_report(_tiny_tree(),
                                  is_conv=lambda name, shape: True)
  dense = {r.name: r for r in rep.rows}['dense']
  # 8-bit fields: no fillers, 4 entries; Huffman a x3, b x1: 4 bits.
  assert dense.han_bits == 8 * 4 + 4 + 64


def _reference_huffman_bits(counts):
  """Textbook Huffman: repeatedly merge the two lightest nodes."""
  heap = [int(c) for c in counts if c > 0]
  if len(heap) == 1:
    return heap[0]
  heapq.heapify(heap)
  total = 0
  while len(heap) > 1:
    merged = heapq.heappop(heap) + heapq.heappop(heap)
    total += merged
    heapq.heappush(heap, merged)
  return total


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=0, max_size=60))
def test_huffman_bits_match_textbook_construction(counts):
  assert report.huffman_bits(counts) == _reference_huffman_bits(counts)


def test_huffman_bits_by_hand():
  assert report.huffman_bits([]) == 0
  assert report.huffman_bits([7]) == 7  # One symbol: 1 bit each.
  assert report.huffman_bits([1, 1, 1, 1]) == 8  # 2 bits each.
  # 10^6 equal counts: 2^20 - 10^6 = 48,576 codewords of 19 bits, the rest
  # of 20 bits.
  assert report.huffman_bits([1] * 1_000_000) == 20 * 1_000_000 - 48_576


def test_file_bits_add_up_to_the_real_file(tmp_path):
  rng = np.random.default_rng(0)
  params = _tiny_tree()
  params['raw'] = rng.standard_normal(50).astype(np.float32)
  path = tmp_path / 'm.gmp'
  codec.save_compressed(path, params, metadata={'tag': 'x',
                                                'v': np.arange(4.0)})
  rep = report.compression_report(path=path)
  size = path.stat().st_size
  assert rep.file_bytes == size
  assert (sum(r.file_bits for r in rep.rows) + 8 * rep.header_bytes
          + 8 * rep.metadata_bytes) == 8 * size
  assert rep.metadata_bytes == 1 + 4 * 8  # Raw record of arange(4.0).
  assert rep.cr_file == pytest.approx(32 * (_N + 50) / (8 * size))
  assert {r.name: r.storage for r in rep.rows}['raw'] == 'raw'
  assert {r.name: r.raw_bits for r in rep.rows}['raw'] == 8 * 4 * 50


def test_in_memory_report_matches_the_saved_file(tmp_path):
  params = _tiny_tree()
  path = tmp_path / 'm.gmp'
  codec.save_compressed(path, params)
  assert (report.compression_report(params).to_dict()
          == report.compression_report(params, path=path).to_dict())
  with pytest.raises(ValueError, match='do not match'):
    report.compression_report({'other': np.ones(2)}, path=path)


def test_entropy_columns_match_independent_computation():
  rng = np.random.default_rng(1)
  values = np.array([0.5, -0.5, 1.0], np.float32)
  x = np.where(rng.random(20_000) < 0.1,
               values[rng.choice(3, 20_000, p=[0.6, 0.3, 0.1])],
               np.float32(0))
  row = report.compression_report({'w': x}).rows[0]
  n, m = x.size, np.count_nonzero(x)
  assert row.position_entropy_bits == pytest.approx(
      -m * math.log2(m / n) - (n - m) * math.log2(1 - m / n))
  c = np.array([np.sum(x == v) for v in values], np.float64)
  assert row.index_entropy_bits == pytest.approx(-np.sum(c * np.log2(c / m)))
  # The streams stay within 5% of these bounds even on this small leaf.
  assert row.position_bits <= 1.05 * row.position_entropy_bits
  assert row.index_bits <= 1.05 * row.index_entropy_bits


def test_to_dict_is_json_and_markdown_has_the_figures():
  rep = report.compression_report(_tiny_tree())
  d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
  assert d['totals']['parameters'] == _N
  assert d['totals']['han_bits'] == _HAN_DENSE + _HAN_CONV
  assert [r['name'] for r in d['rows']] == ['conv', 'dense', 'zero']
  md = rep.to_markdown()
  assert f'{32 * _N / (_HAN_DENSE + _HAN_CONV):.1f}×' in md
  assert f'{_N / 6:.1f}×' in md
  assert f'{32 * _N / (8 * rep.file_bytes):.1f}×' in md


def test_all_zero_model_has_undefined_ratios():
  rep = report.compression_report({'w': np.zeros(5, np.float32)})
  assert rep.cr_han is None and rep.cr_sparsity is None
  json.dumps(rep.to_dict(), allow_nan=False)
  assert 'n/a' in rep.to_markdown()


def test_report_needs_params_or_path():
  with pytest.raises(ValueError):
    report.compression_report()


def test_report_of_file_object():
  buf = io.BytesIO()
  codec.save_compressed(buf, _tiny_tree())
  buf.seek(0)
  assert report.compression_report(path=buf).han_bits == (
      _HAN_DENSE + _HAN_CONV)


# ------------------------------------------------------------------ Table 1 ---


def test_sparsity_table_counts():
  params = {'k': jnp.array([[0.0, 0.5, 0.5], [-0.25, 0.0, 0.0]]),
            'b': jnp.array([0.0, 0.0, 0.75, 0.5])}
  table = gmp_jax.sparsity_table(params)
  rows = {r['layer']: r for r in table}
  assert rows['k'] == {'layer': 'k', 'shape': [2, 3], 'parameters': 6,
                       'nonzero': 3, 'sparsity': 0.5, 'distinct_values': 2}
  assert rows['b']['sparsity'] == 0.5
  total = table[-1]
  assert total['layer'] == 'total' and total['shape'] is None
  assert total['parameters'] == 10 and total['nonzero'] == 5
  assert total['distinct_values'] == 3
  assert total['sparsity'] == 0.5


def test_sparsity_table_by_layer_groups_kernel_and_bias():
  rng = np.random.default_rng(0)
  params = {
      'conv1': {'bias': np.array([0.0, 1.0], np.float32),
                'kernel': np.where(rng.random((3, 3, 1, 2)) < 0.5, 0.0,
                                   rng.choice([-1.0, 2.0], (3, 3, 1, 2))
                                   ).astype(np.float32)},
      'dense1': {'kernel': np.array([[0.0, 3.0], [3.0, 0.0]], np.float32)},
      'step': np.array(7, np.int32),  # Integer leaves are left out.
  }
  table = gmp_jax.sparsity_table(params, by='layer')
  assert [r['layer'] for r in table] == ['conv1', 'dense1', 'total']
  conv = np.concatenate([params['conv1']['bias'],
                         params['conv1']['kernel'].ravel()])
  assert table[0] == {
      'layer': 'conv1', 'shape': [3, 3, 1, 2], 'parameters': 20,
      'nonzero': int(np.count_nonzero(conv)),
      'sparsity': 1.0 - np.count_nonzero(conv) / 20,
      'distinct_values': len(set(conv[conv != 0].tolist()))}
  assert table[1]['distinct_values'] == 1 and table[1]['nonzero'] == 2
  everything = np.concatenate([conv, params['dense1']['kernel'].ravel()])
  assert table[2]['parameters'] == 24
  assert table[2]['nonzero'] == np.count_nonzero(everything)
  assert table[2]['distinct_values'] == len(
      set(everything[everything != 0].tolist()))
  by_leaf = gmp_jax.sparsity_table(params)
  assert [r['layer'] for r in by_leaf] == [
      'conv1/bias', 'conv1/kernel', 'dense1/kernel', 'total']
  assert by_leaf[-1] == table[-1]


def test_sparsity_table_bad_input():
  with pytest.raises(ValueError, match='by must be'):
    gmp_jax.sparsity_table({'w': np.zeros(3, np.float32)}, by='row')
  with pytest.raises(ValueError, match='floating-point'):
    gmp_jax.sparsity_table({'n': np.zeros(3, np.int32)})


def test_sparsity_table_keeps_raw_leaves_apart():
  # Kernels quantised to three shared values; biases left raw (all
  # distinct), as with a filter that covers kernels only.
  rng = np.random.default_rng(3)
  values = np.array([-0.5, 0.25, 0.75], np.float32)
  params = {
      'a': {'kernel': np.where(rng.random((30, 20)) < 0.6, 0.0,
                               rng.choice(values, (30, 20))).astype(
                                   np.float32),
            'bias': rng.normal(size=20).astype(np.float32)},
      'b': {'kernel': np.where(rng.random((20, 5)) < 0.3, 0.0,
                               rng.choice(values[:2], (20, 5))).astype(
                                   np.float32),
            'bias': rng.normal(size=5).astype(np.float32)}}
  mixture = gmp_jax.init_mixture(params, 4,
                                 filter_fn=lambda p, x: x.ndim == 2)
  table = gmp_jax.sparsity_table(params, mixture)
  assert [r['layer'] for r in table] == [
      'a/kernel', 'b/kernel', 'total', 'a/bias', 'b/bias', 'raw']
  kernels = np.concatenate([params['a']['kernel'].ravel(),
                            params['b']['kernel'].ravel()])
  biases = np.concatenate([params['a']['bias'], params['b']['bias']])
  total, raw = table[2], table[5]
  assert total['parameters'] == kernels.size
  assert total['nonzero'] == np.count_nonzero(kernels)
  assert total['distinct_values'] == len(set(kernels[kernels != 0].tolist()))
  assert total['distinct_values'] == 3
  assert raw['parameters'] == biases.size == 25
  assert raw['distinct_values'] == len(set(biases.tolist())) == 25
  # Without the mixture every leaf counts as covered (the old table).
  assert gmp_jax.sparsity_table(params)[-1]['distinct_values'] == 3 + 25
  by_layer = gmp_jax.sparsity_table(params, mixture, by='layer')
  assert [r['layer'] for r in by_layer] == ['a', 'b', 'total', 'a', 'b',
                                            'raw']
  assert by_layer[2] == dict(total, layer='total')
  with pytest.raises(ValueError, match='another tree'):
    gmp_jax.sparsity_table({'a': params['a']}, mixture)


def test_format_ratio():
  assert report.format_ratio(None) == 'n/a'
  assert report.format_ratio(232.04) == '232.0×'
  assert report.format_ratio(0.96) == '1.0×'


@pytest.mark.parametrize('run', ['mnist_v1', 'mnist_layerwise', 'mnist_tau5e-3'])
def test_sparsity_table_rebuilds_committed_table1(run):
  # report.json was written by the pipeline before sparsity_table existed.
  directory = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'results', run)
  with open(os.path.join(directory, 'report.json')) as f:
    table1 = json.load(f)['table1']
  params = codec.load_compressed(os.path.join(directory, 'model.gmpz'))
  assert gmp_jax.sparsity_table(params, by='layer') == table1
