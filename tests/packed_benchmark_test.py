"""A smoke run of `python -m benchmarks.packed` and its JSON report.

No timing is asserted: the figures are checked for completeness and
against the bytes computed here from the layer shapes.
"""

import json
import math

from benchmarks import packed as bench
from experiments.infra import cli


def test_smoke_report_is_complete_and_consistent(tmp_path):
  out = tmp_path / 'packed.json'
  cli.call(bench, ['--smoke', '--out', str(out)])
  report = json.loads(out.read_text())
  assert (tmp_path / 'packed.png').stat().st_size > 0
  assert report['command'].startswith('python -m benchmarks.packed')
  assert report['settings']['sizes'] == [64]
  assert report['kernel']['ran'] is False  # CPU: interpret mode only.
  rows = report['layers']
  n, k = 64, 16
  want_bytes = {'dense_f32': 4 * n * n, 'dense_bf16': 2 * n * n,
                'packed_xla': n * n // 2 + 4 * k,
                'packed_xla_whole': n * n // 2 + 4 * k,
                'naive_u8': n * n + 4 * k, 'naive_4bit': n * n // 2 + 4 * k,
                'kernel': n * n // 2 + 4 * k}
  assert {(r['batch'], r['variant']) for r in rows} == {
      (b, v) for b in (1, 4) for v in want_bytes}
  for r in rows:
    assert r['resident_bytes'] == want_bytes[r['variant']], r
    if r['variant'] == 'kernel':
      assert 'interpret' in r['skipped']
      continue
    assert r['median_ms'] > 0 and r['runs'] == 1
    # Every formulation computes the same product (bf16 to its precision).
    assert r['max_rel_err'] < (2e-2 if r['variant'] == 'dense_bf16'
                               else 1e-5), r
  assert {(t['size'], t['batch']) for t in report['targets']} == {
      (64, 1), (64, 4)}
  for t in report['targets']:
    assert math.isclose(t['packed_over_dense'], next(
        r['median_ms'] for r in rows if r['batch'] == t['batch']
        and r['variant'] == 'packed_xla') / next(
            r['median_ms'] for r in rows if r['batch'] == t['batch']
            and r['variant'] == 'dense_f32'))
  models = {m['model']: m for m in report['models']}
  lm = models['shakespeare_lm']
  assert lm['resident_bytes'] < lm['float32_bytes'] / 6
  assert lm['packed_bits_per_weight'] <= 4.5
  assert lm['float32_bytes'] == 4 * lm['weights']
  assert all(name.split('/')[-2].startswith('ln')
             for name in lm['dense_leaf_names'])
  sparse = report['sparse']
  assert {r['format'] for r in sparse['rows']} == {
      'dense_f32', 'packed_xla', 'sparse', 'bcsr', 'bcoo'}
  assert set(sparse['crossover']) == {'125x50', 'all'}
  assert set(sparse['crossover']['125x50']) == {'4'}
  for r in sparse['rows']:
    nnz = r['nonzeros']
    if r['format'] == 'sparse':  # One byte per row and column, 4-bit codes.
      assert r['resident_bytes'] == 2 * nnz + (nnz + 1) // 2 + 4 * 16, r
    elif r['format'] == 'dense_f32':
      assert r['resident_bytes'] == 4 * 125 * 50
  # The committed poster net, sparse where the rule says: >= 20x smaller.
  e2e = {m['model']: m for m in report['end_to_end']}['poster_mnist']
  assert e2e['resident_bytes']['dense_f32'] == 4 * 642_460
  assert e2e['times_smaller_than_float32']['sparse'] >= 20
