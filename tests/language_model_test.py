"""The language model plugged in by name: dataset, task, NNX model, the
pipeline end to end on the shipped sample, and the post-training baselines."""

import json
import math
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import tau_ratio
import gmp_jax
import helpers
from experiments.infra import cli
from experiments.tools import baselines
from experiments.language import task as language_model
from experiments.infra import registry
from experiments.language import transformer
from experiments.stages import student


def test_sample_windows_are_the_corpus_bytes_shifted_by_one():
  data = language_model.load_shakespeare(source='sample')
  raw = np.frombuffer(open(language_model.SAMPLE_PATH, 'rb').read(), np.uint8)
  cut, test_cut = len(raw) * 6 // 8, len(raw) * 7 // 8  # Valid between.
  x, y = data['train']
  t = language_model.SEQ_LEN
  assert x.dtype == y.dtype == np.int32 and x.shape == y.shape
  assert x.shape == ((cut - 1) // t, t)
  np.testing.assert_array_equal(x.ravel(), raw[:x.size])
  np.testing.assert_array_equal(y.ravel(), raw[1:x.size + 1])
  xv, _ = data['valid']
  np.testing.assert_array_equal(xv[0], raw[cut:cut + t])
  xt, _ = data['test']
  np.testing.assert_array_equal(xt[0], raw[test_cut:test_cut + t])
  kept = language_model.load_shakespeare(source='sample', num_train=3,
                                         num_test=2)
  assert len(kept['train'][0]) == 3 and len(kept['test'][0]) == 2
  with pytest.raises(ValueError, match="Unknown source 'tfds'"):
    language_model.load_shakespeare(source='tfds')


def test_registered_by_name():
  info = registry.dataset('shakespeare')
  assert info.vocab_size == 256 and info.input_shape == (128,)
  assert registry.task(info.task) is language_model.LANGUAGE_MODEL
  assert registry.model('transformer-lm').default_dataset == 'shakespeare'
  with pytest.raises(ValueError, match='needs a token dataset'):
    language_model.LANGUAGE_MODEL.check_dataset(registry.dataset('mnist'))


def test_bits_per_byte_and_accuracy_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 256)).astype(np.float32)
  labels = rng.integers(0, 256, size=(3, 5)).astype(np.int32)
  labels[0, 0] = int(np.argmax(logits[0, 0]))
  task = language_model.LANGUAGE_MODEL
  step = task.eval_step(lambda p, x: jnp.asarray(logits))
  got = task.summarize(jax.device_get(step(None, {'x': None,
                                                  'label': labels})))
  z = logits.astype(np.float64)
  log_p = z - z.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, labels[..., None], -1).mean()
  np.testing.assert_allclose(got['bits_per_byte'], nll / math.log(2),
                             rtol=1e-5)
  assert got['accuracy'] == np.mean(np.argmax(z, -1) == labels)
  assert task.dataset_size(np.zeros((7, 128))) == 7 * 128
  with pytest.raises(ValueError, match='sequence axis'):
    step(None, {'x': None, 'label': labels[:, :4]})


def test_nnx_module_matches_the_model_called_directly():
  info = registry.dataset('shakespeare')
  module = language_model.build_transformer(info)
  params = module.init(jax.random.key(3), None)['params']
  assert set(params['blocks']) == {'0', '1', '2', '3'}
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 16)),
                       jnp.int32)
  model = transformer.Transformer(
      module.config, rngs=nnx.Rngs(params=jax.random.key(3)))
  np.testing.assert_allclose(module.apply({'params': params}, tokens),
                             model(tokens), rtol=1e-5, atol=1e-5)


def test_kmeans_1d_finds_separated_clusters_and_is_a_lloyd_fixed_point():
  rng = np.random.default_rng(0)
  centres = np.array([-1.0, 0.0, 2.0, 5.0])
  values = np.concatenate([c + 0.01 * rng.normal(size=200) for c in centres])
  found, index = baselines.kmeans_1d(values, 4)
  np.testing.assert_allclose(found, [values[i * 200:(i + 1) * 200].mean()
                                     for i in range(4)], rtol=1e-9)
  # On overlapping data: each centroid is the mean of the values nearest it.
  values = rng.normal(size=5000)
  found, index = baselines.kmeans_1d(values, 8)
  nearest = np.argmin(np.abs(values[:, None] - found[None]), axis=1)
  np.testing.assert_array_equal(index, nearest)
  for j in range(len(found)):
    np.testing.assert_allclose(found[j], values[index == j].mean(),
                               rtol=1e-9)
  with pytest.raises(ValueError, match='k >= 1'):
    baselines.kmeans_1d(values, 0)


def test_int_quantize_per_channel():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(6, 4)).astype(np.float32) * np.array([1, 2, 0, 3],
                                                            np.float32)
  for bits in (8, 4):
    levels = 2 ** (bits - 1) - 1
    q = baselines.int_quantize(w, bits)
    peak = np.abs(w).max(0)
    np.testing.assert_allclose(q['scale'], np.where(peak > 0, peak / levels,
                                                    1.0), rtol=1e-6)
    assert q['codes'].dtype == np.int8 and np.abs(q['codes']).max() <= levels
    back = baselines.int_dequantize(q, w.shape)
    assert np.all(np.abs(back - w) <= q['scale'] / 2 + 1e-6)
  bias = baselines.int_quantize(np.array([0.5, -1.0], np.float32), 8)
  assert bias['scale'].shape == (1,)
  with pytest.raises(ValueError, match='bits'):
    baselines.int_quantize(w, 1)


# The smoke config on fewer windows, for the pipeline and both tools alike,
# on a 2-device mesh: the language model's only run on a mesh, at 2 devices
# rather than conftest's 4, which on 2 cores costs about 10 s more for the
# same sharded programs.
SAMPLE_RUN = {'data.num_train': 192, 'retrain.num_train': 64,
              'mesh.num_devices': 2}


@pytest.mark.slow
def test_pipeline_and_baselines_on_the_sample(tmp_path):
  from experiments.stages import runner as pipeline  # pylint: disable=import-outside-toplevel
  from experiments.configs import shakespeare  # pylint: disable=import-outside-toplevel
  config = helpers.override(shakespeare.get_config('smoke'), **SAMPLE_RUN)
  workdir = str(tmp_path / 'lm')
  report = pipeline.train_and_evaluate(config, workdir)
  assert report['metric'] == 'bits_per_byte'
  t2 = report['table2']
  assert 0 < t2['finetuned'] < 8.0 and t2['original'] < 6.0
  retrain = json.load(open(os.path.join(workdir, 'retrain', 'done.json')))
  assert retrain['tau'] > 0 and retrain['tau_ratio'] == 0.05
  assert retrain['initial_grad_ratio'] == pytest.approx(0.05)
  assert 0.5 < retrain['initial_nonzero_fraction'] <= 1.0
  records = [json.loads(l) for l in open(os.path.join(workdir,
                                                      'metrics.jsonl'))]
  last = [r for r in records if r['stage'] == 'retrain'][-1]
  for key in ('grad_ratio', 'nonzero_fraction', 'test_pruned_bits_per_byte'):
    assert np.isfinite(last[key]), key
  loaded = gmp_jax.load_compressed(os.path.join(workdir, 'model.gmpz'))
  # Every column on the validation split too; the file's, recomputed from
  # its logits on the sample's validation windows with a float64 NumPy
  # log-softmax.
  valid = report['table2_valid']
  assert set(valid) == set(t2)
  xv, yv = language_model.load_shakespeare(source='sample')['valid']
  logits = np.asarray(jax.jit(student.apply_fn(config.model, 'shakespeare'))(
      jax.tree.map(np.asarray, loaded), xv), np.float64)
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, yv[..., None], -1).mean()
  assert valid['finetuned'] == pytest.approx(nll / math.log(2), rel=1e-4)
  assert valid['finetuned'] != pytest.approx(t2['finetuned'], rel=1e-6)
  assert 'Validation bits per byte' in open(
      os.path.join(workdir, 'report.md')).read()
  assert config.model == 'transformer_tiny'  # 1 block, d_model 64.
  assert set(loaded['blocks']) == {'0'}
  assert loaded['blocks']['0']['fc1']['kernel'].shape == (64, 256)
  # LayerNorms are left out by the default filter and stored raw.
  covered = {r['name'] for r in report['size_report']['rows']
             if r['storage'] == 'coded'}
  assert not any('ln' in name for name in covered)
  # The teacher's rho at the config's tau (`python -m benchmarks.tau_ratio`)
  # is the ratio the retraining calibrated to.
  config_args = [f'--config={os.path.abspath(shakespeare.__file__)}:smoke',
                 *(f'--config.{k}={v}' for k, v in SAMPLE_RUN.items())]
  rho_path = tmp_path / 'tau_ratio.json'
  assert cli.call(tau_ratio, [*config_args, f'--workdir={workdir}',
                              f'--json={rho_path}']) == 0
  rho = json.loads(rho_path.read_text())
  assert rho['model'] == 'transformer_tiny' and rho['dataset'] == 'shakespeare'
  assert rho['tau'] == pytest.approx(retrain['tau'], rel=1e-3)
  assert rho['rho'] == pytest.approx(0.05, rel=1e-3)
  # `python -m experiments.tools.baselines`; the table from its JSON.
  assert cli.call(baselines, [*config_args, f'--workdir={workdir}',
                              '--kmeans=4,16', '--kmeans_ft=4',
                              '--int_bits=8']) == 0
  table = json.load(open(os.path.join(workdir, 'baselines',
                                      'baselines.json')))
  names = [r['name'] for r in table['rows']]
  assert names == ['teacher', 'kmeans4', 'kmeans16', 'kmeans4_ft', 'int8',
                   'gmp_jax']
  rows = {r['name']: r for r in table['rows']}
  # The pipeline's fine-tuning budget, from the k-means file.
  assert rows['kmeans4_ft']['finetune_epochs'] == 1
  assert rows['kmeans4_ft']['bits_per_byte'] < rows['kmeans4']['bits_per_byte']
  assert rows['gmp_jax']['bits_per_byte'] == pytest.approx(t2['finetuned'],
                                                           rel=1e-5)
  assert rows['gmp_jax']['file_bytes'] == report['file_bytes']
  assert rows['int8']['bits_per_byte'] == pytest.approx(
      rows['teacher']['bits_per_byte'], rel=2e-2)
  assert rows['kmeans4']['file_bytes'] < rows['kmeans16']['file_bytes']
  assert os.path.exists(os.path.join(workdir, 'figures', 'baselines.png'))
