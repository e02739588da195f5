"""Smoke runs of the documented `python -m` entry points that no other test
runs, at the smallest size each command allows (BUILD_NOTES.md lists which
test runs each one).

In process through `cli.call` (the flags parsed as on the command line), and
one real `python -m` subprocess for the absl program path itself. No network:
the data is the committed results, the MNIST cache where present, or
synthetic.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import codec as codec_benchmark
from benchmarks import postprocess as postprocess_benchmark
from benchmarks import scale
from experiments import data as data_cli
from experiments.image import data as image_data
from experiments.infra import cli
from experiments.language import data as lm_data
from experiments.language import transformer
from experiments.stages import cleanup
from experiments.tools import finetune_committed
from experiments.tools import run_packed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_RUN = os.path.join(REPO, 'results', 'mnist')
LM_RUN = os.path.join(REPO, 'results', 'shakespeare')
SAMPLE = os.path.join(REPO, 'tests', 'data', 'shakespeare_sample.txt')


def test_python_m_runs_the_absl_program():
  """`python -m experiments.tools.compare`: flags parsed by absl, the table
  printed, exit 0; an unknown flag exits non-zero naming it."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  ok = subprocess.run([sys.executable, '-m', 'experiments.tools.compare'],
                      cwd=REPO, env=env, capture_output=True, text=True,
                      timeout=120, check=False)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert 'MIRACLE' in ok.stdout and '`results/mnist`' in ok.stdout
  bad = subprocess.run(
      [sys.executable, '-m', 'experiments.tools.compare', '--no_such_flag'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
      check=False)
  assert bad.returncode != 0 and 'no_such_flag' in bad.stderr


def test_cleanup_reports_the_committed_file(capsys):
  path = os.path.join(MNIST_RUN, 'model.gmpz')
  assert cli.call(cleanup, [path]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f'{path} (poster):')
  assert f'{os.path.getsize(path):,} bytes as committed' in out
  with pytest.raises(Exception, match='gmpz'):
    cli.call(cleanup, [])


def test_run_packed_classify_and_generate(capsys):
  assert cli.call(run_packed, ['classify', MNIST_RUN, '--num_test=200',
                               '--batch_size=100']) == 0
  out = capsys.readouterr().out
  assert 'on 200 examples' in out and '(report.json: 99.2200%)' in out
  assert cli.call(run_packed, ['generate', LM_RUN, '--prompt=ROMEO:',
                               '--length=4', '--temperature=0']) == 0
  text = capsys.readouterr().out
  assert text.startswith('ROMEO:') and len(text.encode()) >= len('ROMEO:') + 1


def test_finetune_committed_one_epoch(monkeypatch, capsys):
  """Synthetic data of MNIST's shape (the tool reads the cache only)."""
  monkeypatch.setattr(
      image_data, 'load_dataset',
      lambda *a, **k: image_data.random_dataset(num_train=256, num_test=128))
  path = os.path.join(MNIST_RUN, 'model.gmpz')
  assert cli.call(finetune_committed, [path, '--epochs=1',
                                       '--batch_size=128']) == 0
  assert f'{path}: epoch 1: test accuracy' in capsys.readouterr().out


def test_transformer_runs_two_steps(monkeypatch, capsys):
  with open(SAMPLE, 'rb') as f:
    corpus = np.frombuffer(f.read(), np.uint8)
  monkeypatch.setattr(lm_data, 'load_splits',
                      lambda *a, **k: lm_data.split_corpus(corpus))
  with jax.numpy_dtype_promotion('standard'):  # optax's Adam mixes dtypes.
    assert cli.call(transformer, ['--steps=2', '--batch_size=2',
                                  '--seq_len=16', '--eval_every=1',
                                  '--eval_windows=2']) == 0
  out = capsys.readouterr().out
  assert 'batch 2 x 16 bytes; 2 steps' in out
  assert 'step 2: train' in out and 'bits/byte' in out


def test_data_reports_the_cached_mnist(capsys):
  if not image_data.is_cached('mnist'):
    pytest.skip('MNIST is not cached (python -m experiments.data mnist)')
  assert cli.call(data_cli, ['mnist']) == 0
  assert 'mnist: 60000 train / 10000 test examples ready' in (
      capsys.readouterr().out)
  with pytest.raises(Exception, match='unknown dataset'):
    cli.call(data_cli, ['no_such_set'])


def test_codec_benchmark_writes_its_json(tmp_path, capsys):
  out = tmp_path / 'codec.json'
  assert cli.call(codec_benchmark, ['--runs=1', f'--json={out}']) == 0
  results = json.loads(out.read_text())
  assert results['runs'] == 1 and results['save_s'] > 0
  assert results['load_s'] > 0 and 'report' in results
  assert 'poster model: 642,460 parameters' in capsys.readouterr().out


def test_postprocess_benchmark_prints_three_calls(capsys):
  assert cli.call(postprocess_benchmark, []) == 0
  out = capsys.readouterr().out
  assert [line.split(':')[0] for line in out.splitlines()] == [
      f'merge + quantize, call {i}' for i in (1, 2, 3)]


def test_scale_compare_prints_the_speed_up(tmp_path, capsys):
  def report(seconds):
    return {'results': [{'stage': 'save_compressed', 'layout': 'one_leaf',
                         'n': 1000, 'seconds': seconds,
                         'weights_per_s': 1000 / seconds,
                         'peak_mb_added': 1.0}]}
  before, after = tmp_path / 'before.json', tmp_path / 'after.json'
  before.write_text(json.dumps(report(2.0)))
  after.write_text(json.dumps(report(0.5)))
  assert cli.call(scale, [f'--compare={before},{after}']) == 0
  assert '| save_compressed | one_leaf | 1,000 | 2 | 0.5 | 4.00x |' in (
      capsys.readouterr().out)
