"""A short run of `python -m benchmarks.scale --smoke` and its helpers.

The benchmark itself stays out of CI; this checks that every stage runs on
both layouts, in this process and in fresh subprocesses, and that the JSON
report holds complete, self-consistent figures. No timing is asserted.
"""

import gc
import json
import math
import types

import numpy as np
import pytest
from scipy import stats

from benchmarks import scale
from experiments.infra import cli


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('scale')
  out, png = tmp / 'scale.json', tmp / 'scale.png'
  # The benchmark collects garbage before each of its 36 measurements; in a
  # test process holding earlier tests' objects one full collection takes
  # ~0.5 s. Frozen, those objects are left out of every collection.
  gc.freeze()
  try:
    cli.call(scale, ['--smoke', '--json', str(out), '--plot', str(png)])
  finally:
    gc.unfreeze()
  return json.loads(out.read_text()), png


def _entropy_bits_per_weight() -> float:
  """Zero-order entropy of the codec data, from its stated distribution."""
  _, p = scale.shared_values()
  z = scale.SPARSITY
  h_zero = -(z * math.log2(z) + (1 - z) * math.log2(1 - z))
  return h_zero + (1 - z) * float(-(p * np.log2(p)).sum())


def test_smoke_report_is_complete_and_consistent(smoke):
  report, _ = smoke
  rows = report['results']
  assert report['settings']['isolation'] == 'in_process'
  assert report['settings']['sizes'] == [100_000, 200_000]
  assert report['command'].startswith('python -m benchmarks.scale')
  assert len(report['load_before']['loadavg']) == 3
  assert report['library']['path'] and report['library']['version']
  keys = {(r['stage'], r['layout'], r['n_requested']) for r in rows}
  assert keys == {(s, l, n) for s in scale.STAGES for l in scale.LAYOUTS
                  for n in (100_000, 200_000)}
  assert len(rows) == len(keys)
  r_up, c_up = scale.SMOKE_LEAF_SHAPE
  for r in rows:
    assert 'error' not in r and 'skipped' not in r, r
    # The layouts hold the weights they say, close to what was asked for.
    if r['layout'] == 'one_leaf':
      assert r['leaves'] == 1
      assert r['n'] == 4096 * round(r['n_requested'] / 4096)
    else:
      assert r['leaves'] % 2 == 0
      assert r['n'] == r['leaves'] * r_up * c_up
      assert sorted(map(tuple, r['leaf_shapes'])) == sorted(
          [(r_up, c_up), (c_up, r_up)])
    assert abs(r['n'] - r['n_requested']) <= 0.5 * r['n_requested']
    assert r['runs'] == 1
    assert r['seconds'] > 0 and r['first_s'] > 0
    assert r['weights_per_s'] == pytest.approx(r['n'] / r['seconds'])
    assert r['ns_per_weight'] == pytest.approx(1e9 * r['seconds'] / r['n'])
    assert r['memory_method'] in ('hwm_reset', 'sampled')
    # Memory added by a stage on <= 0.2M weights: small, never much below 0.
    for key in ('peak_mb_added', 'first_call_peak_mb_added',
                'warm_peak_mb_added'):
      assert -2 < r[key] < 2000, (key, r)
    # The peak over all calls covers the first call's.
    assert r['peak_mb_added'] >= r['first_call_peak_mb_added']
  h = _entropy_bits_per_weight()
  for r in rows:
    if r['stage'] == 'save_compressed':
      assert r['zero_fraction'] == pytest.approx(scale.SPARSITY, abs=0.01)
    if r['stage'] in scale.CODEC_STAGES:
      # A zero-order coder is within a few percent of the entropy; the
      # header and codebook add a little at this size.
      assert 0.95 * h < r['bits_per_weight'] < 1.5 * h, r
    if r['stage'] == 'load_compressed':
      assert r['decoded_weights'] == r['n']
    if r['stage'] in ('merge_components', 'quantize'):
      # The 16-17 shared values the benchmark is meant to have.
      assert r['components_after_merge'] >= scale.NUM_COMPONENTS - 1
    if r['stage'] == 'inspect':
      assert r['startup_s'] > 0 and r['startup_peak_mb'] > 0


def test_smoke_extrapolation_matches_an_independent_fit(smoke):
  report, _ = smoke
  ext = report['extrapolation']
  assert set(ext) == {f'{s}/{l}' for s in scale.STAGES
                      for l in scale.LAYOUTS}
  for key, e in ext.items():
    stage, layout = key.split('/')
    rows = sorted((r for r in report['results'] if r['stage'] == stage
                   and r['layout'] == layout), key=lambda r: r['n'])
    assert e['sizes'] == [r['n'] for r in rows]
    fit = stats.linregress(np.log([r['n'] for r in rows]),
                           np.log([r['seconds'] for r in rows]))
    assert e['time_slope'] == pytest.approx(fit.slope, rel=1e-6, abs=1e-9)
    for target in scale.EXTRAPOLATE_TO:
      expected = math.exp(fit.intercept + fit.slope * math.log(target))
      assert e['seconds'][str(target)] == pytest.approx(expected, rel=1e-6)


def test_smoke_plot_is_a_png(smoke):
  _, png = smoke
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_subprocess_measurements(tmp_path, monkeypatch):
  # A fixed mmap threshold: glibc's adaptive one may otherwise serve the
  # decoded 393 kB from heap pages the file's writer already touched, and
  # the stage's RSS would then not show them.
  monkeypatch.setenv('MALLOC_MMAP_THRESHOLD_', '65536')
  out = tmp_path / 'scale.json'
  cli.call(scale, ['--sizes', '1e5', '--layouts', 'one_leaf', '--stages',
                   'save_compressed,load_compressed', '--runs', '1',
                   '--json', str(out)])
  report = json.loads(out.read_text())
  assert report['settings']['isolation'] == 'subprocess'
  rows = {r['stage']: r for r in report['results']}
  assert set(rows) == {'save_compressed', 'load_compressed'}
  for r in rows.values():
    assert 'error' not in r, r
    assert r['n'] == 4096 * 24 and r['seconds'] > 0
    assert r['memory_method'] in ('hwm_reset', 'sampled')
  # The load reads the file the save wrote: the same bytes.
  assert rows['load_compressed']['file_bytes'] == (
      rows['save_compressed']['file_bytes'])
  assert rows['load_compressed']['decoded_weights'] == 4096 * 24
  # The decoded float32 tree (4 bytes a weight) is resident at the peak.
  assert rows['load_compressed']['peak_mb_added'] >= 0.9 * 4 * 4096 * 24 / 2**20


def test_peak_meter_sees_an_allocation():
  meter = scale.PeakMeter()
  meter.reset()
  x = np.ones(64 * 2**20 // 8)  # 64 MB, touched.
  del x
  assert 60 < meter.peak_added() / 2**20 < 200
  meter.stop()


def test_layout_spec():
  spec = scale.layout_spec('one_leaf', 10_000_000)
  assert spec.leaves == (('w', (4096, 2441)),)
  assert spec.n == 4096 * 2441
  spec = scale.layout_spec('many_leaves', 10_000_000)
  assert len(spec.leaves) == 20  # round(1e7 / 2^20) = 10 blocks of 2.
  assert spec.leaves[0] == ('block_0/up', (512, 1024))
  assert spec.leaves[-1] == ('block_9/down', (1024, 512))
  assert spec.n == 20 * 512 * 1024
  assert scale.layout_spec('many_leaves', 10).n == 2 * 512 * 1024
  with pytest.raises(ValueError, match='Unknown layout'):
    scale.layout_spec('conv', 100)
  with pytest.raises(ValueError, match='must be >= 1'):
    scale.layout_spec('one_leaf', 0)


def test_quantized_tree_has_the_stated_distribution():
  tree = scale.quantized_tree(scale.layout_spec('one_leaf', 1_000_000))
  x = tree['w'].ravel()
  values, p = scale.shared_values()
  assert np.mean(x == 0) == pytest.approx(scale.SPARSITY, abs=2e-3)
  nz = x[x != 0]
  assert set(np.unique(nz)) <= set(values)
  freq = np.array([np.mean(nz == v) for v in values])
  np.testing.assert_allclose(freq, p, atol=5e-3)


def test_extrapolate_recovers_a_power_law_and_a_line():
  rows = [{'stage': 's', 'layout': 'one_leaf', 'n': n,
           'seconds': 2e-9 * n**1.5, 'peak_mb_added': 4e-6 * n}
          for n in (1e6, 1e7, 1e8, 1e3)]  # Only the 3 largest are fitted.
  rows[-1]['seconds'] = 1.0  # Off the law; not among the fitted points.
  e = scale.extrapolate(rows, fit_points=3)['s/one_leaf']
  assert e['sizes'] == [1e6, 1e7, 1e8]
  assert e['time_slope'] == pytest.approx(1.5)
  assert e['memory_slope'] == pytest.approx(1.0)
  assert e['seconds']['7000000000'] == pytest.approx(2e-9 * 7e9**1.5)
  assert e['peak_mb']['1000000000'] == pytest.approx(4e3)
  # A constant plus a per-weight cost: the affine fit gives both back.
  for r in rows:
    r['peak_mb_added'] = 300.0 + 4e-6 * r['n']
  e = scale.extrapolate(rows, fit_points=3)['s/one_leaf']
  assert e['peak_mb_affine']['7000000000'] == pytest.approx(300 + 2.8e4)
  assert e['bytes_per_weight_marginal'] == pytest.approx(4e-6 * 2**20)
  assert 0 < e['memory_slope'] < 1  # The constant flattens the log-log line.
  one = scale.extrapolate(rows[:1])['s/one_leaf']
  assert one['time_slope'] is None and one['seconds']['1000000000'] is None
  assert one['seconds_affine']['1000000000'] is None
  with pytest.raises(ValueError, match='fit_points'):
    scale.extrapolate(rows, fit_points=1)


def test_limit_kwargs():
  def load(file, *, packed=False, max_elements=None, max_bytes=None,
           max_depth=8):
    del file, packed, max_elements, max_bytes, max_depth

  kwargs, unknown = scale.limit_kwargs(load, elements=10, nbytes=99)
  assert kwargs == {'max_elements': 10, 'max_bytes': 99}
  assert unknown == ['max_depth']
  assert scale.limit_kwargs(lambda file: None, elements=1, nbytes=1) == ({},
                                                                         [])


def test_stage_of_a_missing_api_is_skipped(tmp_path):
  old = types.SimpleNamespace(save_compressed=None, load_compressed=None)
  spec = scale.layout_spec('one_leaf', 4096)
  row = scale.measure(old, 'quantize', spec, runs=1, workdir=tmp_path,
                      batch_size=2)
  assert 'seconds' not in row
  assert row['skipped'] == ('gmp_jax lacks init_mixture, merge_components, '
                            'quantize')
  with pytest.raises(ValueError, match='Unknown stage'):
    scale.run_benchmark(old, sizes=(4096,), stages=('fit',),
                        layouts=('one_leaf',), runs=1, batch_size=2,
                        leaf_shape=(2, 2), in_process=True, fit_points=2)


def test_compare_table_takes_the_largest_common_size():
  def row(stage, n, seconds, peak):
    return {'stage': stage, 'layout': 'one_leaf', 'n': n, 'seconds': seconds,
            'weights_per_s': n / seconds, 'peak_mb_added': peak}
  before = {'results': [row('save_compressed', 10, 4.0, 30.0),
                        row('save_compressed', 100, 8.0, 300.0),
                        row('load_compressed', 10, 1.0, 5.0)]}
  after = {'results': [row('save_compressed', 10, 1.0, 3.0),
                       row('save_compressed', 100, 2.0, 40.0),
                       row('save_compressed', 1000, 9.0, 400.0)]}
  lines = scale.compare_table(before, after).splitlines()
  assert len(lines) == 3  # header, rule, save_compressed only
  cells = [c.strip() for c in lines[2].strip('|').split('|')]
  assert cells[:6] == ['save_compressed', 'one_leaf', '100', '8', '2', '4.00x']
  assert cells[8:] == ['300', '40']
