"""Tests of experiments/tools/sweep.py: the grid, resuming, teacher sharing."""

import json
import os

from ml_collections import config_dict
import pytest

from experiments.infra import cli
from experiments.tools import sweep
from experiments.configs import lenet300 as lenet300_config
from gmp_jax import codec

LENET300_CONFIG = os.path.abspath(lenet300_config.__file__)


def _config():
  return lenet300_config.get_config('smoke')


def test_grid_names_and_configs():
  points = sweep.sweep_points([1e-2, 2e-2], {'retrain.init_std': [0.1, 0.25]})
  assert [sweep.point_name(p) for p in points] == [
      'tau=0.01,retrain.init_std=0.1', 'tau=0.01,retrain.init_std=0.25',
      'tau=0.02,retrain.init_std=0.1', 'tau=0.02,retrain.init_std=0.25']
  base = _config()
  cfg = sweep.point_config(base, points[1])
  assert cfg.retrain.tau == 1e-2 and cfg.retrain.init_std == 0.25
  assert base.retrain.tau == 1e-4  # The base config is not modified.
  # Integers given for float fields become floats.
  assert isinstance(sweep.point_config(base, {'retrain.tau': 1}).retrain.tau,
                    float)
  assert sweep.parse_knob('retrain.epochs=3, 5') == ('retrain.epochs', [3, 5])
  assert sweep.parse_knob('retrain.distillation=kl,mse') == (
      'retrain.distillation', ['kl', 'mse'])


@pytest.mark.parametrize('taus,knobs,match', [
    ([], None, 'at least one'),
    ([-1e-3], None, '>= 0'),
    ([1e-2, 1e-2], None, 'repeated'),
    ([1e-2], {'retrain.tau': [1.0]}, 'taus'),
])
def test_bad_grids(taus, knobs, match):
  with pytest.raises(ValueError, match=match):
    sweep.sweep_points(taus, knobs)


def test_bad_knobs_and_fields():
  for spec in ('retrain.tau', '=1', 'retrain.tau='):
    with pytest.raises(ValueError, match='key=value'):
      sweep.parse_knob(spec)
  with pytest.raises(KeyError, match='unknown config field'):
    sweep.point_config(_config(), {'retrain.nonexistent': 1})
  with pytest.raises(KeyError, match='unknown config field'):
    sweep.point_config(_config(), {'nothing.tau': 1})


class FakePipeline:
  """Writes a teacher stage and a report per call; can fail once."""

  def __init__(self, fail_on=None):
    self.calls, self.fail_on = [], fail_on

  def __call__(self, config, workdir):
    name = os.path.basename(workdir)
    self.calls.append(name)
    teacher = os.path.join(workdir, 'teacher')
    self.teacher_given = os.path.exists(os.path.join(teacher, 'done.json'))
    if not self.teacher_given:
      os.makedirs(teacher, exist_ok=True)
      with open(os.path.join(teacher, 'params.gmpz'), 'wb') as f:
        f.write(b'teacher of ' + name.encode())
      with open(os.path.join(teacher, 'done.json'), 'w') as f:
        json.dump({'test_accuracy': 0.99}, f)
    if name == self.fail_on:
      self.fail_on = None
      raise RuntimeError('killed')
    tau = config.retrain.tau
    n = 266_610
    report = {
        'table1': [{'layer': 'total', 'parameters': n,
                    'nonzero': int(n * tau)}],
        'table2': {'original': 0.99, 'retrained': 0.985,
                   'pruned': 0.99 - tau},
        'file_bytes': int(1e5 * tau), 'cr_file': 32 * n / (8e5 * tau),
        'cr_han': 10.0, 'nonzero_fraction': tau,
        'config': config.to_dict()}
    with open(os.path.join(workdir, 'report.json'), 'w') as f:
      json.dump(report, f)
    return report


def test_sweep_shares_the_teacher_and_resumes(tmp_path):
  workdir = str(tmp_path / 'sweep')
  taus = [0.01, 0.02, 0.04]
  fake = FakePipeline(fail_on='tau=0.02')
  with pytest.raises(RuntimeError, match='killed'):
    sweep.run_sweep(_config(), workdir, taus=taus, run_fn=fake)
  assert fake.calls == ['tau=0.01', 'tau=0.02']
  # The first point's teacher went to the second before it ran.
  with open(os.path.join(workdir, 'tau=0.02', 'teacher', 'params.gmpz'),
            'rb') as f:
    assert f.read() == b'teacher of tau=0.01'
  summary = json.load(open(os.path.join(workdir, sweep.SUMMARY_FILE)))
  assert [p['name'] for p in summary['points']] == ['tau=0.01']
  # The rerun skips the finished point and resumes the others.
  fake.calls = []
  summary = sweep.run_sweep(_config(), workdir, taus=taus, run_fn=fake)
  assert fake.calls == ['tau=0.02', 'tau=0.04']
  assert fake.teacher_given
  for tau in ('0.02', '0.04'):
    source = json.load(open(os.path.join(workdir, f'tau={tau}', 'teacher',
                                         'source.json')))
    assert source['source'] == os.path.abspath(
        os.path.join(workdir, 'tau=0.01'))
  on_disk = json.load(open(os.path.join(workdir, sweep.SUMMARY_FILE)))
  assert on_disk == json.loads(json.dumps(summary))
  assert [p['name'] for p in on_disk['points']] == [
      'tau=0.01', 'tau=0.02', 'tau=0.04']
  assert [p['accuracy'] for p in on_disk['points']] == pytest.approx(
      [0.98, 0.97, 0.95])
  assert [p['file_bytes'] for p in on_disk['points']] == [1000, 2000, 4000]
  with open(os.path.join(workdir, sweep.FIGURE_FILE), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # A third run does nothing.
  fake.calls = []
  sweep.run_sweep(_config(), workdir, taus=taus, run_fn=fake)
  assert fake.calls == []
  # Another config in the same workdir is refused.
  other = _config()
  other.retrain.epochs = 7
  with pytest.raises(ValueError, match='another config'):
    sweep.run_sweep(other, workdir, taus=taus, run_fn=fake)


@pytest.mark.parametrize('recorded,current,want', [
    ({'a': 1, 'r': {'t': 2}}, {'a': 1, 'r': {'t': 2}}, True),
    # A None field added after the report was written: the same run.
    ({'a': 1, 'r': {'t': 2}}, {'a': 1, 'r': {'t': 2, 'new': None}}, True),
    # A new field with a value, a changed value, a dropped field: not.
    ({'a': 1, 'r': {'t': 2}}, {'a': 1, 'r': {'t': 2, 'new': 0.5}}, False),
    ({'a': 1, 'r': {'t': 2}}, {'a': 1, 'r': {'t': 3}}, False),
    ({'a': 1, 'r': {'t': 2}}, {'r': {'t': 2}}, False),
    # A recorded None is a value like any other.
    ({'a': None}, {'a': 1}, False),
    (None, {'a': 1}, False),
])
def test_same_config(recorded, current, want):
  assert sweep.same_config(recorded, current) is want


def test_a_report_from_before_a_new_none_field_is_reused(tmp_path):
  workdir = str(tmp_path / 'sweep')
  fake = FakePipeline()
  sweep.run_sweep(_config(), workdir, taus=[0.01], run_fn=fake)
  newer = _config()
  newer.retrain.new_knob = config_dict.placeholder(float)
  again = FakePipeline()
  sweep.run_sweep(newer, workdir, taus=[0.01], run_fn=again)
  assert again.calls == []


def test_teacher_workdir_is_shared_and_checked(tmp_path):
  base = str(tmp_path / 'base')
  FakePipeline()(sweep.point_config(_config(), {'retrain.tau': 0.5}), base)
  fake = FakePipeline()
  sweep.run_sweep(_config(), str(tmp_path / 'sweep'), taus=[0.01],
                  teacher_workdir=base, run_fn=fake)
  assert fake.teacher_given
  other = sweep.point_config(_config(), {'seed': 3})
  with pytest.raises(ValueError, match="'seed'"):
    sweep.run_sweep(other, str(tmp_path / 'sweep2'), taus=[0.01],
                    teacher_workdir=base, run_fn=FakePipeline())
  with pytest.raises(FileNotFoundError, match='teacher'):
    sweep.run_sweep(_config(), str(tmp_path / 'sweep3'), taus=[0.01],
                    teacher_workdir=str(tmp_path / 'absent'),
                    run_fn=FakePipeline())


def test_anchor_bytes_follow_the_published_figures():
  # EPR: 2.84 KB at 606x on LeNet-5-Caffe, 8.56 KB at 124x on LeNet-300-100.
  lenet5 = {a['label']: a for a in sweep.anchors_for('lenet5', 431_080)}
  epr = lenet5['EPR (Oktay et al. 2020)']
  assert epr['bytes'] == pytest.approx(2840, rel=0.01)
  assert epr['accuracy'] == pytest.approx(0.99)
  lenet300 = {a['label']: a for a in sweep.anchors_for('lenet300100',
                                                       266_610)}
  assert lenet300['EPR (Oktay et al. 2020)']['bytes'] == pytest.approx(
      8560, rel=0.01)
  poster = {a['label']: a for a in sweep.anchors_for('poster', 642_460)}
  keras = poster['SWS Keras tutorial']
  assert keras['bytes'] is None
  assert keras['nonzero_fraction'] == pytest.approx(0.0743)
  assert keras['accuracy'] == pytest.approx(0.9902)


def test_smoke_sweep_trains_one_teacher(tmp_path):
  """`python -m experiments.tools.sweep` on the smoke config; the summary
  read back from its sweep.json."""
  workdir = str(tmp_path / 'sweep')
  # Compile-bound runs: one device, one train step per compiled call,
  # checkpoints at stage ends only.
  assert cli.call(sweep, [
      f'--config={LENET300_CONFIG}:smoke', f'--workdir={workdir}',
      '--taus=1e-4,1e-3', '--config.mesh.num_devices=1',
      '--config.loop.steps_per_call=1',
      '--config.loop.checkpoint_interval_s=3600']) == 0
  summary = json.load(open(os.path.join(workdir, sweep.SUMMARY_FILE)))
  assert [p['overrides'] for p in summary['points']] == [
      {'retrain.tau': 1e-4}, {'retrain.tau': 1e-3}]
  first, second = (os.path.join(workdir, p['workdir'])
                   for p in summary['points'])
  assert summary['teacher'] == os.path.abspath(first)
  # Only the first point trained a teacher; the second reused its params.
  assert os.path.isdir(os.path.join(first, 'teacher', 'checkpoints'))
  assert not os.path.exists(os.path.join(second, 'teacher', 'checkpoints'))
  with open(os.path.join(first, 'teacher', 'params.gmpz'), 'rb') as a, \
      open(os.path.join(second, 'teacher', 'params.gmpz'), 'rb') as b:
    assert a.read() == b.read()
  for p in summary['points']:
    d = os.path.join(workdir, p['workdir'])
    report = json.load(open(os.path.join(d, 'report.json')))
    assert report['config']['retrain']['tau'] == p['overrides']['retrain.tau']
    assert report['table2']['original'] == summary['points'][0][
        'original_accuracy']
    assert os.path.getsize(os.path.join(d, 'model.gmpz')) == p['file_bytes']
    codec.load_compressed(os.path.join(d, 'model.gmpz'))
  assert os.path.exists(os.path.join(workdir, sweep.FIGURE_FILE))
