"""The post-training baselines' k-means (+ fine-tuning) rows against
independent computations, on a `:smoke` LeNet-300-100 (random data)."""

import json
import os
import shutil

from absl import app
import jax
import numpy as np
import pytest

import gmp_jax
from experiments.configs import lenet300 as lenet300_config
from experiments.image import models
from experiments.infra import workdir_layout
from experiments.stages import finetune
from experiments.stages import runner
from experiments.tools import baselines

K = 4
LEAVES = ("['dense1']['bias']", "['dense1']['kernel']", "['dense2']['bias']",
          "['dense2']['kernel']", "['dense3']['bias']", "['dense3']['kernel']")


def _config():
  config = lenet300_config.get_config('smoke')
  # The budget is the finetune stage's: 2 epochs of 8 steps at Adam 1e-4.
  assert config.postprocess.finetune_epochs == 2
  config.loop.steps_per_call = 1  # Compile-bound: one step per call.
  config.loop.checkpoint_interval_s = 3600.0
  return config


def _teacher():
  """LeNet-300-100's initial weights with random biases, except dense3's
  (all zero: k-means puts them at an exact 0), and some exact zeros in
  dense2's kernel (k-means puts them at a non-zero centroid)."""
  params = jax.tree.map(np.array, models.init_params('lenet300100',
                                                   jax.random.key(0)))
  rng = np.random.default_rng(0)
  for name in ('dense1', 'dense2'):
    bias = params[name]['bias']
    params[name]['bias'] = rng.normal(0, 0.05, bias.shape).astype(np.float32)
  params['dense2']['kernel'][:3, :7] = 0.0
  return params


def _bits(x):
  return np.asarray(x, np.float32).view(np.uint32)


def _leaves(params):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """`baselines.run` with kmeans4 and kmeans4_ft; what the fine-tuning
  started from and returned, seen through the functions it calls."""
  workdir = str(tmp_path_factory.mktemp('baselines'))
  teacher = _teacher()
  path = os.path.join(workdir, workdir_layout.TEACHER_PARAMS)
  os.makedirs(os.path.dirname(path))
  gmp_jax.save_compressed(path, teacher, codebook_dtype=None)
  seen = {}
  real_setup, real_finetune = finetune.setup, baselines.kmeans_finetune

  def setup(*args, **kwargs):
    training = real_setup(*args, **kwargs)
    seen['start'] = jax.device_get(training.params_of(training.state))
    seen['data'] = jax.device_get(training.data)
    return training

  def kmeans_finetune(*args, **kwargs):
    seen['tuned'] = real_finetune(*args, **kwargs)
    return seen['tuned']

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(finetune, 'setup', setup)
    patch.setattr(baselines, 'kmeans_finetune', kmeans_finetune)
    table = baselines.run(_config(), workdir, kmeans=(K,), kmeans_ft=(K,),
                          int_bits=())
  files = {name: gmp_jax.load_compressed(
      os.path.join(workdir, 'baselines', f'{name}.gmpz'))
           for name in (f'kmeans{K}', f'kmeans{K}_ft')}
  return workdir, teacher, table, files, seen


def test_kmeans_rejects_k_outside_1_to_the_leaf_size():
  with pytest.raises(ValueError, match='k=4 for 3 values'):
    baselines.kmeans_1d(np.arange(3.0), 4)
  with pytest.raises(ValueError, match='k >= 1'):
    baselines.kmeans_1d(np.arange(3.0), 0)
  centroids, _ = baselines.kmeans_1d(np.arange(3.0), 3)  # k = size is fine.
  np.testing.assert_array_equal(centroids, [0.0, 1.0, 2.0])
  params = {'dense': {'bias': np.ones(2, np.float32),
                      'kernel': np.ones((3, 2), np.float32)}}
  covered = {"['dense']['bias']", "['dense']['kernel']"}
  with pytest.raises(ValueError,
                     match=r"Leaf \['dense'\]\['bias'\]: .*k=3 for 2 values"):
    baselines.kmeans_params(params, covered, 3)


def test_run_names_the_leaf_too_small_for_k(run):
  workdir = run[0]
  with pytest.raises(ValueError,
                     match=r"Leaf \['dense3'\]\['bias'\]: .*k=11 for 10 "):
    baselines.run(_config(), workdir, kmeans=(K,), kmeans_ft=(11,),
                  int_bits=())


def test_nearest_centroids_is_the_float32_argmin_ties_low():
  rng = np.random.default_rng(1)
  # Random centroids; then ones whose midpoints are exact float32 ties.
  for c in (np.sort(rng.normal(size=5)).astype(np.float32),
            np.float32([-1.0, 0.5, 1.0, 2.25, 3.0])):
    mid = (c[1:] + c[:-1]) / 2
    w = np.concatenate([rng.normal(size=999).astype(np.float32), mid, c,
                        np.float32([-9, 9])]).reshape(-1, 5)
    got = baselines.nearest_centroids(w, c[::-1])
    # argmin takes the first, i.e. lower, of equal float32 distances.
    want = c[np.argmin(np.abs(w[..., None] - c), axis=-1)]
    np.testing.assert_array_equal(_bits(got), _bits(want))
  assert baselines.nearest_centroids(np.float32([-0.25]), c)[0] == -1.0


def test_rows_and_the_front(run):
  _, _, table, _, _ = run
  assert [r['name'] for r in table['rows']] == ['teacher', f'kmeans{K}',
                                                 f'kmeans{K}_ft']
  row = table['rows'][2]
  assert row['kind'] == 'kmeans_ft' and row['k'] == K
  assert row['finetune_epochs'] == 2
  # No gmp_jax file in this workdir: every baseline is "none as good".
  assert [(f['baseline'], f['kind'], f['gmp']) for f in table['front']] == [
      (f'kmeans{K}', 'kmeans', None), (f'kmeans{K}_ft', 'kmeans_ft', None)]
  assert f'| kmeans{K}_ft |' in baselines.markdown(table)


def test_kmeans_file_holds_each_weight_at_its_nearest_centroid(run):
  _, teacher, _, files, seen = run
  want, got = _leaves(teacher), _leaves(files[f'kmeans{K}'])
  assert set(got) == set(LEAVES)  # The no_norm filter covers every leaf.
  for name, w in want.items():
    values = np.unique(got[name])
    assert len(values) <= K
    nearest = values[np.argmin(np.abs(w[..., None] - values), axis=-1)]
    np.testing.assert_array_equal(_bits(got[name]), _bits(nearest))
  # The fine-tuning starts exactly at the k-means file.
  for name, x in _leaves(seen['start']).items():
    np.testing.assert_array_equal(_bits(x), _bits(got[name]), err_msg=name)


def test_fine_tuning_moves_at_most_k_values_per_leaf(run):
  _, teacher, _, files, _ = run
  before, after = _leaves(files[f'kmeans{K}']), _leaves(files[f'kmeans{K}_ft'])
  teacher = _leaves(teacher)
  assert not np.any(before["['dense3']['bias']"])  # Its centroid is 0...
  np.testing.assert_array_equal(after["['dense3']['bias']"], 0.0)  # ...kept.
  for name in LEAVES:
    if name == "['dense3']['bias']":
      continue
    # Zero is not special: the teacher's exact zeros (dense2) are not kept.
    assert np.all(before[name] != 0) and np.all(after[name] != 0), name
    values = set(after[name].ravel().tolist())
    assert len(values) <= K, name
    assert values.isdisjoint(before[name].ravel().tolist()), name
  assert np.count_nonzero(teacher["['dense2']['kernel']"] == 0) == 21


def _loss(params, data, config):
  """The finetune stage's data loss (`config.retrain`: MSE distillation at
  T plus the label cross-entropy) in float64 NumPy, on every example."""
  rc = config.retrain
  assert rc.distillation == 'mse'
  apply = jax.jit(models.get_model('lenet300100').apply)
  z = np.asarray(apply({'params': params}, data['x']), np.float64)

  def softmax(v):
    e = np.exp(v - v.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  t = rc.temperature
  distill = np.mean((softmax(z / t) - softmax(
      np.asarray(data['teacher_logits'], np.float64) / t)) ** 2)
  log_p = np.log(softmax(z))
  ce = -np.mean(log_p[np.arange(len(z)), data['label']])
  return rc.distillation_weight * distill + rc.label_weight * ce


def test_fine_tuning_lowers_the_training_loss(run):
  _, _, _, files, seen = run
  config = _config()
  x, y = runner.load_data(config)['train']
  data = seen['data']
  np.testing.assert_array_equal(data['x'], x)
  np.testing.assert_array_equal(data['label'], y)
  start = _loss(files[f'kmeans{K}'], data, config)
  tuned = _loss(files[f'kmeans{K}_ft'], data, config)
  assert tuned < start


def test_file_is_the_fine_tuned_tree_bit_for_bit(run):
  workdir, _, _, files, seen = run
  got, want = _leaves(files[f'kmeans{K}_ft']), _leaves(seen['tuned'])
  assert set(got) == set(want)
  for name, x in want.items():
    assert got[name].dtype == x.dtype
    np.testing.assert_array_equal(_bits(got[name]), _bits(x), err_msg=name)
  # Its epoch records are the baselines' (not the run's); no checkpoints.
  out = os.path.join(workdir, 'baselines')
  records = [json.loads(line) for line in
             open(os.path.join(out, 'metrics.jsonl'))]
  assert [r['epoch'] for r in records] == [1, 2]
  assert {r['stage'] for r in records} == {f'baselines/kmeans{K}_ft'}
  assert not os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
  assert not os.path.exists(os.path.join(out, f'kmeans{K}_ft'))


def test_no_fine_tuned_rows_without_a_fine_tuning_budget(run, tmp_path):
  teacher = os.path.join(str(tmp_path), workdir_layout.TEACHER_PARAMS)
  os.makedirs(os.path.dirname(teacher))
  shutil.copy(os.path.join(run[0], workdir_layout.TEACHER_PARAMS), teacher)
  config = _config()
  config.postprocess.finetune_epochs = 0
  table = baselines.run(config, str(tmp_path), kmeans=(), kmeans_ft=(K,),
                        int_bits=())
  assert [r['name'] for r in table['rows']] == ['teacher']


def test_table_from_recomputes_the_front(tmp_path):
  """`--table_from`: the front of a table written with the old keys, by
  hand: each baseline against the smallest gmp_jax file at least as good."""
  from experiments.infra import cli  # pylint: disable=import-outside-toplevel
  row = lambda name, kind, value, size: {  # pylint: disable=unnecessary-lambda-assignment
      'name': name, 'kind': kind, 'bits_per_byte': value,
      'file_bytes': size, 'cr_file': 1000 / size}
  gmp = dict(tau_ratio=0.05, tau=1.0, retrain_epochs=1, nonzero_fraction=0.5)
  table = {'metric': 'bits_per_byte', 'rows': [
      row('teacher', 'teacher', 2.0, 1000), row('kmeans4', 'kmeans', 3.0, 200),
      row('kmeans16', 'kmeans', 2.1, 400), row('int4', 'int', 2.2, 380),
      dict(row('a', 'gmp_jax', 2.5, 100), **gmp),
      dict(row('b', 'gmp_jax', 2.15, 150), **gmp)],
      'front': [{'kmeans': 'kmeans4', 'smaller': 9.0}]}  # Old keys.
  path = tmp_path / 'baselines.json'
  path.write_text(json.dumps(table))
  assert cli.call(baselines, [f'--table_from={path}']) == 0
  front = json.loads(path.read_text())['front']
  assert [(f['baseline'], f['kind'], f['gmp']) for f in front] == [
      ('kmeans4', 'kmeans', 'a'), ('kmeans16', 'kmeans', None),
      ('int4', 'int', 'b')]
  assert front[0]['smaller'] == 2.0 and front[2]['smaller'] == 380 / 150
  assert front[1]['smaller'] is None
  md = (tmp_path / 'baselines.md').read_text()
  assert '| int4 | 2.2000 | 380 | b | 150 | 2.53x |' in md
  assert '| kmeans16 | 2.1000 | 400 | none as good | | |' in md
  # Bad input: not a table; both ways at once; neither.
  bad = tmp_path / 'bad.json'
  bad.write_text('{"rows": []}')
  with pytest.raises(ValueError, match=r"lacks \['metric'\]"):
    cli.call(baselines, [f'--table_from={bad}'])
  with pytest.raises(app.UsageError, match='without --config and --workdir'):
    cli.call(baselines, [f'--table_from={path}', f'--workdir={tmp_path}'])
  with pytest.raises(app.UsageError, match='are required'):
    cli.call(baselines, [])
