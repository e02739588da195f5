"""Tests of experiments/tools/compare.py on synthetic report.json files."""

import json
import os

import pytest

from experiments.infra import cli
from experiments.tools import compare


def _report(tmp_path, name, *, parameters, nonzero, file_bytes, original,
            pruned, finetuned=None, cr_han=50.0):
  table2 = {'original': original, 'retrained': original - 0.001,
            'pruned': pruned}
  if finetuned is not None:
    table2['finetuned'] = finetuned
  report = {
      'table1': [{'layer': 'dense1', 'shape': [2, 2], 'parameters': 4,
                  'nonzero': 1, 'sparsity': 0.75, 'distinct_values': 1},
                 {'layer': 'total', 'shape': None, 'parameters': parameters,
                  'nonzero': nonzero, 'sparsity': 1 - nonzero / parameters,
                  'distinct_values': 7}],
      'table2': table2,
      'file_bytes': file_bytes,
      'cr_file': 32 * parameters / (8 * file_bytes),
      'cr_han': cr_han,
      'nonzero_fraction': nonzero / parameters,
      'config': {'retrain': {'mode': 'end_to_end', 'tau': 0.02}},
      'wall_time_s': {'retrain': 600.0},
  }
  d = tmp_path / name
  d.mkdir()
  (d / 'report.json').write_text(json.dumps(report))
  return str(d)


def _row(text, needle):
  rows = [line for line in text.splitlines() if needle in line]
  assert len(rows) == 1, (needle, text)
  return [c.strip() for c in rows[0].strip('|').split('|')]


def test_literature_table_places_our_figures_beside_the_anchors(tmp_path):
  d5 = _report(tmp_path, 'lenet5', parameters=431_080, nonzero=4_310,
               file_bytes=4_000, original=0.9921, pruned=0.9900,
               finetuned=0.9905, cr_han=180.25)
  text = compare.literature_table({'lenet5': d5,
                                   'lenet300': str(tmp_path / 'missing'),
                                   'poster': str(tmp_path / 'nothing')})
  ours = _row(text, d5)
  assert ours[0] == 'LeNet-5-Caffe'
  # Errors: 1 - 0.9921 and 1 - the fine-tuned accuracy.
  assert ours[2] == '0.79%' and ours[3] == '**0.95%**'
  # CR_file = 32 * 431,080 / (8 * 4,000) = 431.08.
  assert ours[4] == '**431.1x**' and ours[5] == '180.2x'
  assert ours[6] == '100.0x' and ours[7] == '4,000 B'
  epr = _row(text, 'EPR (Oktay et al. 2020) | n/a | 1.00%')
  assert epr[4] == '606.0x' and epr[5] == 'n/a'  # A real bitstream.
  sws = _row(text, 'LeNet-5-Caffe | SWS')
  assert sws[4] == 'n/a' and sws[5] == '162.0x'  # Han-style.
  assert _row(text, 'missing')[2] == 'not run'
  keras = _row(text, 'Keras')
  assert keras[3] == '0.98%' and keras[6] == f'{1 / 0.0743:.1f}x'
  # Every anchor of the issue is present.
  for method in ('MIRACLE', 'Bayesian Compression', 'SWS poster'):
    assert method in text


def test_without_fine_tuning_the_pruned_accuracy_is_used(tmp_path):
  d = _report(tmp_path, 'poster', parameters=642_460, nonzero=12_059,
              file_bytes=11_081, original=0.9938, pruned=0.99)
  ours = _row(compare.literature_table({'poster': d}), d)
  assert ours[3] == '**1.00%**' and ours[4] == '**231.9x**'
  assert ours[6] == f'{642_460 / 12_059:.1f}x'


def test_run_table_keeps_its_columns(tmp_path):
  d = _report(tmp_path, 'run', parameters=642_460, nonzero=12_059,
              file_bytes=11_081, original=0.9938, pruned=0.99)
  text = compare.table([d])
  assert _row(text, 'Pruned accuracy') == ['Pruned accuracy', '98.14%',
                                           '99.00%']
  assert _row(text, 'Fine-tuned accuracy') == ['Fine-tuned accuracy', 'n/a',
                                               'not run']
  assert _row(text, 'Accuracy of the file') == [
      '**Accuracy of the file**', '98.14%', '**99.00%**']
  assert _row(text, 'CR_file')[2] == '231.9x'
  assert _row(text, 'Compressed file')[2] == '11,081 bytes'


def test_run_table_shows_the_fine_tuned_accuracy_as_the_files(tmp_path):
  d = _report(tmp_path, 'run', parameters=642_460, nonzero=11_526,
              file_bytes=8_972, original=0.9935, pruned=0.9904,
              finetuned=0.9917)
  text = compare.table([d])
  assert _row(text, 'Pruned accuracy')[2] == '99.04%'
  assert _row(text, 'Fine-tuned accuracy')[2] == '99.17%'
  assert _row(text, 'Accuracy of the file')[2] == '**99.17%**'


def test_bad_inputs(tmp_path):
  d = _report(tmp_path, 'wrong', parameters=1000, nonzero=10,
              file_bytes=100, original=0.9, pruned=0.9)
  with pytest.raises(ValueError, match='parameters'):
    compare.literature_table({'lenet300': d})
  with pytest.raises(ValueError, match='unknown nets'):
    compare.literature_table({'resnet': d})
  with pytest.raises(FileNotFoundError):
    compare.table([str(tmp_path / 'absent')])


def test_main_prints_a_table(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)  # No results/ here: every run is 'not run'.
  assert cli.call(compare, []) == 0
  out = capsys.readouterr().out
  assert out.count('not run') == 6 and 'MIRACLE' in out
  d = _report(tmp_path, 'run', parameters=642_460, nonzero=12_059,
              file_bytes=11_081, original=0.9938, pruned=0.99)
  assert cli.call(compare, [d]) == 0
  assert 'Pruned accuracy' in capsys.readouterr().out
  assert os.path.isdir(d)
