"""A seconds-long run of `python -m benchmarks.train_step --smoke`.

The benchmark itself stays out of CI; this checks that it runs and that its
JSON report holds what BUILD_NOTES.md and README.md quote.
"""

import contextlib
import io
import json

import jax
import pytest

from benchmarks import train_step
from experiments.infra import cli


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  """One smoke run for both tests: every configuration of the default
  command line (the PyTorch ones dropped by the benchmark when torch is not
  installed) at the smoke size.

  Returns the report and what the benchmark printed.
  """
  out = tmp_path_factory.mktemp('train_step') / 'report.json'
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    cli.call(train_step, ['--smoke', '--configs',
                          ','.join(train_step.ALL_CONFIGS),
                          '--json', str(out)])
  return json.loads(out.read_text()), printed.getvalue()


def test_smoke_run_writes_a_complete_report(smoke):
  report, printed = smoke
  rows = {(r['config'], r['batch_size']): r for r in report['results']
          if r['config'].startswith('jax')}
  assert set(rows) == {(c, 16) for c in train_step.ALL_CONFIGS
                       if c.startswith('jax')}
  for row in report['results']:
    assert row['images_per_s'] > 0
    assert len(row['window_images_per_s']) == report['settings']['windows']
  assert rows[('jax_gmp_multi', 16)]['dispatch'] == 'multi-step'
  assert 'jax_gmp/jax_plain@16' in report['ratios']
  assert report['targets'] == {'jax_gmp/torch_gmp': 2.0,
                               'jax_gmp/jax_plain': 0.85}
  assert report['settings']['num_params'] == 642_460
  assert len(report['load_before']['loadavg']) == 3
  # What jax.devices() reports, not a guess about accelerators.
  devices = jax.devices()
  assert report['machine']['platform'] == devices[0].platform
  assert report['machine']['device_kind'] == devices[0].device_kind
  assert report['machine']['count'] == len(devices)
  assert '| jax_gmp | per-step | 16 |' in printed


def test_smoke_run_with_the_pytorch_peer(smoke):
  """The PyTorch peer builds the same (published, fixed pi_0) prior."""
  pytest.importorskip('torch', reason='the [bench] extra is not installed')
  report, _ = smoke
  rows = {r['config']: r for r in report['results']}
  assert set(rows) == set(train_step.ALL_CONFIGS)
  assert rows['torch_gmp']['images_per_s'] > 0
  assert rows['torch_plain']['images_per_s'] > 0
  assert 'jax_gmp/torch_gmp@16' in report['ratios']
