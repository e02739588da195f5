"""experiments.infra.tasks: a language-model task runs through the unchanged pipeline.

A toy byte-level language model (inputs (B, T) int tokens, logits
(B, T, V), bits per byte as the metric) is registered as a model, a
dataset and a task; the pipeline runs every stage on it, and the file it
saves scores the reported bits per byte, recomputed here with NumPy.
"""

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
import helpers
from experiments.image import models
from experiments.infra import monitor
from experiments.stages import runner as pipeline
from experiments.infra import registry
from experiments.infra import tasks
from experiments.infra import workdir_layout
from experiments.configs import mnist as mnist_config

VOCAB, LENGTH = 16, 6


class BitsPerByte(tasks.Task):
  """Next-token prediction over bytes: bits per byte, lower is better."""
  name = 'test_bytes_lm'
  metric = 'bits_per_byte'
  higher_is_better = False

  def check_dataset(self, info):
    if info.vocab_size is None:
      raise ValueError(f'{info.name!r} has no vocabulary.')

  def eval_step(self, apply_fn):
    def step(params, batch):
      log_p = jax.nn.log_softmax(apply_fn(params, batch['x']), axis=-1)
      nll = -jnp.take_along_axis(log_p, batch['label'][..., None], axis=-1)
      return {'nll_sum': jnp.sum(nll),
              'count': jnp.asarray(batch['label'].size)}
    return step

  def summarize(self, totals):
    return {'bits_per_byte': float(totals['nll_sum'])
                             / (float(totals['count']) * math.log(2))}


class TinyLM(nn.Module):
  vocab: int

  @nn.compact
  def __call__(self, tokens):
    h = nn.relu(nn.Embed(self.vocab, 8)(tokens))
    return nn.Dense(self.vocab)(h)


def _shifted_bytes(*, source, data_dir, download, num_train, num_test, seed):
  """Token windows whose next token is the current one plus 1 (mod V)."""
  del source, data_dir, download
  rng = np.random.default_rng(seed)

  def split(n):
    x = rng.integers(0, VOCAB, (n, LENGTH)).astype(np.int32)
    return x, ((x + 1) % VOCAB).astype(np.int32)

  return {'train': split(num_train), 'test': split(num_test)}


registry.register_task('test_bytes_lm', BitsPerByte(), replace=True)
registry.register_dataset(
    'test_bytes', _shifted_bytes, input_shape=(LENGTH,), input_dtype='int32',
    vocab_size=VOCAB, task='test_bytes_lm', replace=True)
registry.register_model('test_tiny_lm', lambda info: TinyLM(info.vocab_size),
                        default_dataset='test_bytes', replace=True)


def _bits_per_byte(params, x, y):
  """NumPy: -sum log2 softmax(logits)[label] / number of tokens."""
  logits = np.asarray(models.get_model('test_tiny_lm').apply(
      {'params': params}, x), np.float64)
  logits -= logits.max(-1, keepdims=True)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, y[..., None], axis=-1)
  return nll.sum() / (y.size * np.log(2))


@pytest.fixture(scope='module')
def lm_run(tmp_path_factory):
  config = helpers.override(mnist_config.get_config('smoke'), **{
      'model': 'test_tiny_lm', 'data.name': 'test_bytes',
      'data.source': 'offline', 'retrain.num_components': 4,
      'teacher.epochs': 8, 'teacher.learning_rate': 3e-2,
      'tensorboard': False})
  workdir = str(tmp_path_factory.mktemp('lm'))
  return config, workdir, pipeline.train_and_evaluate(config, workdir)


def test_language_model_runs_every_stage(lm_run):
  config, workdir, report = lm_run
  assert set(report['table2']) == {'original', 'retrained', 'pruned',
                                   'finetuned'}
  assert report['cleanup']['skipped'] == 'not a SequentialNet'
  teacher = workdir_layout.read_done(workdir, 'teacher')
  assert set(teacher) == {'test_bits_per_byte', 'wall_time_s'}
  # The teacher learnt the rule: far below the log2(16) = 4 bits of chance.
  assert report['table2']['original'] < 3.0
  x, y = pipeline.load_data(config)['test']
  params = gmp_jax.load_compressed(os.path.join(workdir,
                                                report['compressed_file']))
  assert report['table2']['finetuned'] == pytest.approx(
      _bits_per_byte(params, x, y), rel=1e-5)
  records = monitor.MetricsLog(workdir).records()
  assert any('test_pruned_bits_per_byte' in r for r in records
             if r['stage'] == 'retrain')


def test_the_classification_task_is_the_old_evaluation():
  """The task's evaluator equals `gmp_jax.evaluate` on the same params."""
  x = np.random.default_rng(0).uniform(size=(70, 28, 28, 1)).astype(
      np.float32)
  y = np.arange(70, dtype=np.int32) % 10
  params = models.init_params('lenet300', jax.random.key(0))
  apply_fn = lambda p, xb: models.get_model('lenet300').apply({'params': p},
                                                               xb)
  task = registry.task('classification')
  got = task.evaluator(task.test_set(x, y, batch_size=32), apply_fn)(params)
  want = gmp_jax.evaluate(gmp_jax.make_eval_step(apply_fn), params, x, y,
                          batch_size=32)
  assert got == pytest.approx(want, rel=1e-6)
