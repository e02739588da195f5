"""End-to-end tests of the MNIST pipeline on the `:smoke` config."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import gmp_jax
from experiments import data as data_lib
from experiments import models
from experiments import pipeline
from experiments.configs import mnist as mnist_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'results', 'mnist')


def _smoke(**overrides):
  config = mnist_config.get_config('smoke')
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('smoke'))
  return workdir, pipeline.train_and_evaluate(_smoke(), workdir)


def test_smoke_report(smoke_run):
  workdir, report = smoke_run
  on_disk = json.load(open(os.path.join(workdir, 'report.json')))
  assert on_disk['table2'] == report['table2']
  for key in ('table1', 'table2', 'compressed_file', 'file_bytes', 'cr_file',
              'cr_han', 'nonzero_fraction', 'wall_time_s', 'config',
              'figures'):
    assert key in on_disk
  for stage in ('teacher', 'retrain', 'postprocess', 'save', 'report'):
    assert on_disk['wall_time_s'][stage] >= 0
  assert set(on_disk['table2']) == {'original', 'retrained', 'pruned'}
  # The synthetic task is learnable: the teacher beats chance clearly.
  assert on_disk['table2']['original'] > 0.5
  for path in on_disk['figures'].values():
    with open(os.path.join(workdir, path), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  md = open(os.path.join(workdir, 'report.md')).read()
  assert 'Table 1' in md and 'Table 2' in md


def test_table1_matches_poster_counts(smoke_run):
  _, report = smoke_run
  rows = {r['layer']: r for r in report['table1']}
  assert {k: rows[k]['parameters'] for k in
          ('conv1', 'conv2', 'dense1', 'dense2')} == {
              'conv1': 650, 'conv2': 11_300, 'dense1': 625_500,
              'dense2': 5_010}
  assert rows['total']['parameters'] == 642_460
  assert rows['dense1']['shape'] == [1250, 500]


def test_compressed_file_reproduces_pruned_accuracy(smoke_run):
  workdir, report = smoke_run
  params = gmp_jax.load_compressed(os.path.join(workdir,
                                                report['compressed_file']))
  assert os.path.getsize(os.path.join(workdir, report['compressed_file'])) \
      == report['file_bytes']
  config = _smoke()
  dataset = pipeline._load_data(config)
  evaluate = pipeline._eval_fn(report['student'], dataset['test'], 256)
  assert evaluate(params)['accuracy'] == report['table2']['pruned']
  nonzero = sum(int(np.count_nonzero(x)) for x in jax.tree.leaves(params))
  assert nonzero / 642_460 == pytest.approx(report['nonzero_fraction'])


def test_rerun_skips_finished_stages(smoke_run):
  workdir, report = smoke_run
  again = pipeline.train_and_evaluate(_smoke(), workdir)
  assert again['table2'] == report['table2']
  assert again['wall_time_s']['teacher'] == report['wall_time_s']['teacher']


def test_same_seed_same_numbers(smoke_run, tmp_path):
  _, report = smoke_run
  again = pipeline.train_and_evaluate(_smoke(), str(tmp_path))
  assert again['table2'] == report['table2']
  assert again['table1'] == report['table1']


def test_layerwise_mode(tmp_path):
  report = pipeline.train_and_evaluate(
      _smoke(**{'retrain.mode': 'layerwise'}), str(tmp_path))
  assert report['config']['retrain']['mode'] == 'layerwise'
  records = pipeline.MetricsLog(str(tmp_path)).records()
  retrain = [r for r in records if r['stage'] == 'retrain']
  assert retrain and all(f'rel_mse_{n}' in retrain[-1]
                         for n in ('conv1', 'conv2', 'dense1', 'dense2'))


def test_bad_mode(tmp_path):
  with pytest.raises(ValueError, match='retrain.mode'):
    pipeline.train_and_evaluate(_smoke(**{'retrain.mode': 'bogus'}),
                                str(tmp_path))


def test_non_finite_loss_stops_with_stage_and_step(tmp_path):
  params = {'w': jax.numpy.ones(3)}
  mixture = gmp_jax.init_mixture(params, 2)
  tx = gmp_jax.gmp_optimizer()
  state = gmp_jax.create_train_state(params, mixture, tx)

  def scan_step(state, data, idx):
    del data
    return state, {'loss': np.full((len(idx),), np.nan)}

  with pytest.raises(FloatingPointError, match="'retrain'.*steps 1-"):
    pipeline.train_loop(
        stage='retrain', workdir=str(tmp_path), state=state,
        scan_step=scan_step, data={'x': np.zeros((16, 1))}, num_epochs=1,
        batch_size=4, seed=0, config=_smoke(), log=pipeline.MetricsLog(
            str(tmp_path)))


def test_sigkill_during_retraining_resumes(tmp_path):
  """Kill the CLI mid-retraining; the same command resumes and finishes."""
  workdir = str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'experiments.mnist',
         '--config=experiments/configs/mnist.py:smoke',
         '--config.retrain.epochs=6', f'--workdir={workdir}']
  ckpts = os.path.join(workdir, 'retrain', 'checkpoints')
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 240
  while time.time() < deadline:
    saved = [d for d in (os.listdir(ckpts) if os.path.isdir(ckpts) else [])
             if d.isdigit()]
    if saved:
      break
    if proc.poll() is not None:
      pytest.fail('the run finished before it could be killed:\n'
                  + proc.stdout.read().decode())
    time.sleep(0.05)
  else:
    proc.kill()
    pytest.fail('no retraining checkpoint appeared')
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, 'retrain', 'done.json'))
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'retrain: resuming from step' in out.stdout
  resumed = json.load(open(os.path.join(workdir, 'report.json')))
  # An uninterrupted run with the same config gives the same numbers.
  fresh = pipeline.train_and_evaluate(
      _smoke(**{'retrain.epochs': 6}), str(tmp_path / 'fresh'))
  assert resumed['table2'] == fresh['table2']
  assert resumed['table1'] == fresh['table1']


@pytest.mark.skipif(not os.path.exists(os.path.join(RESULTS, 'report.json')),
                    reason='results/mnist has not been committed yet')
def test_committed_result_reproduces_pruned_accuracy():
  if not data_lib.is_cached('mnist'):
    pytest.skip('MNIST is not cached (python -m experiments.data --fetch)')
  report = json.load(open(os.path.join(RESULTS, 'report.json')))
  path = os.path.join(RESULTS, report['compressed_file'])
  params = gmp_jax.load_compressed(path)
  assert os.path.getsize(path) == report['file_bytes']
  dataset = data_lib.load_dataset('mnist', download=False)
  model = models.get_model(report['student'])
  eval_step = gmp_jax.make_eval_step(
      lambda p, x: model.apply({'params': p}, x))
  x, y = dataset['test']
  got = gmp_jax.evaluate(eval_step, params, x, y, batch_size=1000)
  assert got['accuracy'] == pytest.approx(report['table2']['pruned'],
                                          abs=1e-4)
