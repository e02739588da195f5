"""A `:smoke` run of `benchmarks.pipeline`: its breakdown adds up."""

from benchmarks import pipeline as bench
from experiments import pipeline
from experiments.configs import mnist as mnist_config


def test_breakdown_of_a_smoke_run(tmp_path, capsys):
  config = mnist_config.get_config('smoke')
  out = bench.run_pipeline(config, str(tmp_path), block=True)
  stages = out['stages']
  assert list(stages) == list(pipeline.STAGES)
  # 512 examples: 8 steps of 64 per epoch, 2 epochs per training stage.
  assert stages['teacher']['steps'] == stages['retrain']['steps'] == 16
  for name, row in stages.items():
    sections = sum(row[s] for s in bench.monitor.SECTIONS)
    assert 0 <= sections <= row['wall'], name
    assert abs(row['other'] - (row['wall'] - sections)) < 1e-9
    assert (row['step_ms'] is None) == (row['steps'] == 0)
  assert stages['retrain']['compile'] > 0  # Compilation is its own section.
  assert out['total_s'] >= sum(r['wall'] for r in stages.values())
  assert '| retrain |' in capsys.readouterr().out


def test_hlo_census_counts_ops():
  text = ('%0 = stablehlo.while ... stablehlo.convolution ... '
          'stablehlo.convolution ... stablehlo.outfeed ...')
  assert bench.hlo_census(text) == {'while': 1, 'convolution': 2,
                                    'gather': 0, 'custom_call': 0,
                                    'host_transfer': 1}
