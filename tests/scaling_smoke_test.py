"""A short run of `python -m benchmarks.scaling --smoke`.

The benchmark itself stays out of CI; this checks that every configuration
runs, including the two-process one, and that the JSON report holds what
BUILD_NOTES.md quotes.
"""

import json

import pytest

from benchmarks import scaling
from experiments.infra import cli


@pytest.mark.slow
def test_smoke_run_writes_a_complete_report(tmp_path, capsys):
  out = tmp_path / 'scaling.json'
  cli.call(scaling, ['--smoke', '--layouts', 'data_parallel,fsdp',
                     '--json', str(out)])
  report = json.loads(out.read_text())
  rows = {r['config']: r for r in report['results']}
  # FSDP needs at least two devices to split over.
  assert set(rows) == {'1x1 data_parallel', '1x2 data_parallel', '1x2 fsdp',
                       '2x2 data_parallel', '2x2 fsdp'}
  for r in rows.values():
    assert r['images_per_s'] > 0
    assert len(r['window_images_per_s']) == report['settings']['windows']
    assert r['per_device_batch'] * r['devices'] == r['batch_size'] == 16
  assert rows['2x2 fsdp']['processes'] == 2
  assert rows['2x2 fsdp']['devices'] == 4
  assert rows['1x1 data_parallel']['relative_to_one_device'] == 1.0
  assert rows['1x2 data_parallel']['split_state_arrays'] == 0
  # The poster net's dense1 kernel and its two Adam moments are split.
  assert rows['1x2 fsdp']['split_state_arrays'] == 3
  assert report['command'].startswith('python -m benchmarks.scaling')
  assert len(report['load_before']['loadavg']) == 3
  assert '| 2x2 fsdp | 2 | 4 | fsdp | 4 |' in capsys.readouterr().out


def test_bad_settings():
  with pytest.raises(ValueError, match='does not split evenly'):
    scaling.run_in_process(device_counts=(3,), layouts=('data_parallel',),
                           batch_size=16, windows=1, window_steps=1,
                           warmup_steps=1)
  with pytest.raises(ValueError, match='devices asked for'):
    scaling.run_in_process(device_counts=(64,), layouts=('data_parallel',),
                           batch_size=64, windows=1, window_steps=1,
                           warmup_steps=1)
  with pytest.raises(ValueError, match='Unknown layout'):
    scaling.run_benchmark(batch_size=16, device_counts=(1,),
                          layouts=('tensor',), processes=0,
                          devices_per_process=1, windows=1, window_steps=1,
                          warmup_steps=1)
