"""A `:smoke` run of `benchmarks.pipeline`: its breakdown adds up."""

import json
import os

import pytest

from benchmarks import pipeline as bench
from experiments.infra import cli
from experiments.stages import runner as pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'experiments', 'configs', 'mnist.py')


@pytest.mark.slow
def test_breakdown_of_a_smoke_run(tmp_path, capsys):
  """`python -m benchmarks.pipeline` on the :smoke config, read back from
  the JSON it writes."""
  path = tmp_path / 'pipeline.json'
  # Compile-bound, so the cheaper LeNet-300-100 on one device (as the
  # benchmark runs), one step per compiled call; a weaker zero component
  # and narrow clusters keep weights, so fine-tuning trains too.
  assert cli.call(bench, [
      f'--config={CONFIG}:smoke', '--config.model=lenet300100',
      '--config.retrain.zero_proportion=0.5', '--config.retrain.init_std=0.05',
      '--config.mesh.num_devices=1', '--config.loop.steps_per_call=1',
      f'--workdir={tmp_path / "run"}', f'--json={path}']) == 0
  out = json.loads(path.read_text())
  assert out['block'] and out['config']['model'] == 'lenet300100'
  assert out['command'].startswith('python -m benchmarks.pipeline ')
  stages = out['stages']
  assert list(stages) == list(pipeline.STAGES)
  # 512 examples: 8 steps of 64 per epoch, 2 epochs per training stage.
  for name in ('teacher', 'retrain', 'finetune'):
    assert stages[name]['steps'] == 16, name
  for name, row in stages.items():
    sections = sum(row[s] for s in bench.monitor.SECTIONS)
    assert 0 <= sections <= row['wall'], name
    assert abs(row['other'] - (row['wall'] - sections)) < 1e-9
    assert (row['step_ms'] is None) == (row['steps'] == 0)
  assert stages['retrain']['compile'] > 0  # Compilation is its own section.
  assert out['total_s'] >= sum(r['wall'] for r in stages.values())
  assert '| retrain |' in capsys.readouterr().out
  # One mark at the loop's start and one per epoch: 2 epochs, each timed.
  for name in ('teacher', 'retrain'):
    epochs = stages[name]['epoch_s']
    assert len(epochs) == 2 and all(e > 0 for e in epochs), name
    assert sum(epochs) <= stages[name]['wall']


def test_against_reference_is_wall_over_steps_times_step_time():
  rows = {'retrain': {'wall': 300.0, 'steps': 1000,
                      'epoch_s': [40.0, 26.0, 28.0, 27.0]}}
  before, after = {'ms_per_step': 240.0}, {'ms_per_step': 260.0}
  ref = bench.against_reference(rows, before, after)
  assert ref['ms_per_step'] == 250.0
  assert abs(ref['retrain_ratio'] - 300.0 / (1000 * 0.25)) < 1e-12
  # Epochs after the first (which compiles): median 27 s over 250 steps.
  assert ref['median_epoch_s'] == 27.0
  assert abs(ref['median_epoch_ratio'] - 27.0 / (250 * 0.25)) < 1e-12


def test_hlo_census_counts_ops():
  text = ('%0 = stablehlo.while ... stablehlo.convolution ... '
          'stablehlo.convolution ... stablehlo.outfeed ...')
  assert bench.hlo_census(text) == {'while': 1, 'convolution': 2,
                                    'gather': 0, 'custom_call': 0,
                                    'host_transfer': 1}
