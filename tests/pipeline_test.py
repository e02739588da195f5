"""End-to-end tests of the MNIST pipeline on the `:smoke` config."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

import gmp_jax
import helpers
from experiments.infra import monitor
from experiments.image import models
from experiments.stages import runner as pipeline
from experiments.configs import mnist as mnist_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The module's runs retrain for 2 epochs: room to kill the CLI between its
# two checkpoints (`test_sigkill_mid_retraining_resumes_to_the_same_numbers`).
RETRAIN_EPOCHS = 2


def _smoke(**overrides):
  config = mnist_config.get_config('smoke')
  return helpers.override(config, **{'retrain.epochs': RETRAIN_EPOCHS,
                                     **overrides})


@pytest.fixture(scope='module', autouse=True)
def compilation_cache_dir(tmp_path_factory):
  """A persistent compilation cache for this module's runs and CLIs.

  The runs here compile the same programs over and over (teacher, retrain,
  evaluation); each is compiled once and read back after, by this process
  and by the CLIs it starts (`_cli_env`). The cache holds XLA's output for
  the same program, so every number is as without it.
  """
  path = str(tmp_path_factory.mktemp('compilation_cache'))
  options = {'jax_compilation_cache_dir': path,
             'jax_persistent_cache_min_compile_time_secs': 0.0}
  saved = {name: getattr(jax.config, name) for name in options}
  compilation_cache.reset_cache()
  for name, value in options.items():
    jax.config.update(name, value)
  yield path
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _cli_env(cache_dir):
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


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
  assert 'table2_valid' not in on_disk  # MNIST has no validation split.
  # The synthetic task is learnable: the teacher beats chance clearly.
  assert on_disk['table2']['original'] > 0.5
  for path in on_disk['figures'].values():
    with open(os.path.join(workdir, path), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  md = open(os.path.join(workdir, 'report.md')).read()
  assert 'Table 1' in md and 'Table 2' in md


def test_validation_table_needs_every_stage():
  from experiments.stages import report  # pylint: disable=import-outside-toplevel
  results = {'teacher': {'best_valid_m': 3.0}, 'retrain': {'valid_m': 2.0},
             'postprocess': {'valid_m': 2.5}, 'finetune': {'valid_m': 2.1}}
  columns = ('original', 'retrained', 'pruned', 'finetuned')
  # A teacher that stopped early: its best epoch's value.
  assert report._valid_table(results, 'm', columns) == {  # pylint: disable=protected-access
      'original': 3.0, 'retrained': 2.0, 'pruned': 2.5, 'finetuned': 2.1}
  assert report._valid_table(  # pylint: disable=protected-access
      dict(results, teacher={'valid_m': 2.9}), 'm', columns[:3]) == {
          'original': 2.9, 'retrained': 2.0, 'pruned': 2.5}
  del results['postprocess']['valid_m']  # A record from before: no table.
  assert report._valid_table(results, 'm', columns) is None  # pylint: disable=protected-access


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
  x, y = pipeline.load_data(_smoke())['test']
  logits = models.get_model(report['student']).apply({'params': params}, x)
  accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == y))
  assert accuracy == pytest.approx(report['table2']['pruned'], abs=1e-9)
  nonzero = sum(int(np.count_nonzero(x)) for x in jax.tree.leaves(params))
  assert nonzero / 642_460 == pytest.approx(report['nonzero_fraction'])


def _done_records(workdir):
  return {name: open(pipeline.done_path(workdir, name)).read()
          for name in pipeline.STAGES}


def test_every_stage_writes_its_record(smoke_run):
  workdir, _ = smoke_run
  for name, record in _done_records(workdir).items():
    assert json.loads(record)['wall_time_s'] >= 0, name


def test_rerun_skips_finished_stages(smoke_run):
  workdir, report = smoke_run
  before = _done_records(workdir)
  again = pipeline.train_and_evaluate(_smoke(), workdir)
  assert _done_records(workdir) == before  # No stage ran again.
  assert again == report


def test_missing_output_reruns_that_stage_and_later_ones(smoke_run, tmp_path):
  workdir, report = smoke_run
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  before = _done_records(copy)
  os.remove(os.path.join(copy, 'postprocess', 'quantized.gmpz'))
  again = pipeline.train_and_evaluate(_smoke(), copy)
  after = _done_records(copy)
  for name in ('teacher', 'retrain'):
    assert after[name] == before[name]
  for name in ('postprocess', 'save', 'report'):
    assert after[name] != before[name]  # A new wall time.
  assert again['table1'] == report['table1']
  assert again['table2'] == report['table2']
  assert again['file_bytes'] == report['file_bytes']


def test_reuses_a_workdir_of_the_earlier_layout(smoke_run, tmp_path):
  """Teacher and retrain finished by the earlier pipeline are kept.

  That pipeline left `postprocess/done.json` without outputs, no record
  for `save` and `report`, and the same teacher and retrain files.
  """
  workdir, report = smoke_run
  old = str(tmp_path / 'old')
  shutil.copytree(workdir, old)
  for path in ('postprocess/quantized.gmpz', 'save', 'report', 'model.gmpz',
               'report.json', 'report.md', 'figures'):
    full = os.path.join(old, path)
    (shutil.rmtree if os.path.isdir(full) else os.remove)(full)
  kept = {n: open(pipeline.done_path(old, n)).read()
          for n in ('teacher', 'retrain')}
  again = pipeline.train_and_evaluate(_smoke(), old)
  assert {n: open(pipeline.done_path(old, n)).read() for n in kept} == kept
  assert again['table1'] == report['table1']
  assert again['table2'] == report['table2']


@pytest.mark.xla_optimized
@pytest.mark.slow
def test_layerwise_mode(smoke_run, tmp_path):
  # smoke_run's teacher (the same teacher config); retraining starts there.
  shutil.copytree(os.path.join(smoke_run[0], 'teacher'),
                  str(tmp_path / 'teacher'))
  report = pipeline.train_and_evaluate(
      _smoke(**{'retrain.mode': 'layerwise', 'retrain.epochs': 2}),
      str(tmp_path))
  assert report['config']['retrain']['mode'] == 'layerwise'
  records = monitor.MetricsLog(str(tmp_path)).records()
  retrain = [r for r in records if r['stage'] == 'retrain']
  assert retrain and all(f'rel_mse_{n}' in retrain[-1]
                         for n in ('conv1', 'conv2', 'dense1', 'dense2'))


def test_bad_mode(tmp_path):
  with pytest.raises(ValueError, match='retrain.mode'):
    pipeline.train_and_evaluate(_smoke(**{'retrain.mode': 'bogus'}),
                                str(tmp_path))


def test_config_placeholders_and_required_flag(tmp_path):
  config = mnist_config.get_config()
  assert config.data.num_train is None and config.retrain.student is None
  assert config.retrain.zero_beta is None and config.data.data_dir is None
  out = subprocess.run([sys.executable, '-m', 'experiments.mnist',
                        f'--workdir={tmp_path}'], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert '--config' in out.stderr


@pytest.mark.slow
def test_sigkill_mid_retraining_resumes_to_the_same_numbers(
    compilation_cache_dir, smoke_run, tmp_path):
  """Kill the CLI mid-retraining; the same command resumes and finishes.

  The run starts from scratch in a new process with the module's config, so
  its tables must equal `smoke_run`'s: the same seed gives the same numbers,
  killed and resumed or not. (Both compile at conftest's level, through the
  module's cache.)
  """
  workdir = str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'experiments.mnist',
         '--config=experiments/configs/mnist.py:smoke',
         f'--config.retrain.epochs={RETRAIN_EPOCHS}', f'--workdir={workdir}']
  env = _cli_env(compilation_cache_dir)
  ckpts = os.path.join(workdir, 'retrain', 'checkpoints')
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
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
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  # Our INFO lines are shown; Orbax's per-save INFO lines are not.
  assert 'teacher: finished earlier' in out.stderr
  assert 'retrain: resuming from step' in out.stderr
  assert f'retrain epoch {RETRAIN_EPOCHS}/{RETRAIN_EPOCHS}' in out.stderr
  assert 'checkpoint_manager.py' not in out.stderr
  resumed = json.load(open(os.path.join(workdir, 'report.json')))
  _, uninterrupted = smoke_run
  assert resumed['table2'] == uninterrupted['table2']
  assert resumed['table1'] == uninterrupted['table1']
