"""The pipeline's finetune and cleanup stages on a `:smoke` LeNet-300-100."""

import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest

import gmp_jax
import helpers
from experiments.image import models
from experiments.stages import runner as pipeline
from experiments.configs import lenet300 as lenet300_config


def _config(**overrides):
  config = lenet300_config.get_config('smoke')
  # Keep some weights: a weaker zero component and narrow initial clusters.
  config.retrain.zero_proportion = 0.5
  config.retrain.init_std = 0.05
  config.postprocess.finetune_epochs = 1
  config.postprocess.finetune_learning_rate = 1e-3
  # The codebook mode's invariants are checked on the module's run; the
  # straight-through tests (the configs' default) override it.
  config.postprocess.finetune_mode = 'codebook'
  # The runs are compile-bound: one train step per compiled call (a 4-step
  # unrolled program compiles ~3x longer) and checkpoints at stage ends only.
  config.loop.steps_per_call = 1
  config.loop.checkpoint_interval_s = 3600.0
  return helpers.override(config, **overrides)


# Straight-through fine-tuning after training on shifted images, with FSDP
# over every device (conftest.py: 4): the straight-through and augmentation
# tests read this run, and the mesh test compares a one-device run with it.
SHIFTED = {'postprocess.finetune_mode': 'straight_through',
           'data.augment_shift': 1, 'mesh.fsdp': True,
           'mesh.fsdp_min_size': 1}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('stages'))
  return workdir, pipeline.train_and_evaluate(_config(), workdir)


@pytest.fixture(scope='module')
def shifted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('shifted'))
  return workdir, pipeline.train_and_evaluate(_config(**SHIFTED), workdir)


def _load(workdir, stage):
  return gmp_jax.load_compressed(os.path.join(workdir, stage,
                                              'quantized.gmpz'))


@functools.cache
def _apply():
  net = models.get_model('lenet300100')
  return jax.jit(lambda p, x: net.apply({'params': p}, x))


def _logits(params, x):
  return np.asarray(_apply()(params, x))


def _test_set():
  return pipeline.load_data(_config())['test']


def test_stage_order():
  names = list(pipeline.STAGES)
  assert names.index('postprocess') < names.index('finetune') < names.index(
      'cleanup') < names.index('save')


def test_finetune_changes_values_not_structure(run):
  workdir, report = run
  pruned, tuned = _load(workdir, 'postprocess'), _load(workdir, 'finetune')
  assert any(np.any(x) for x in jax.tree.leaves(pruned))
  record = json.load(open(pipeline.done_path(workdir, 'finetune')))
  assert record['epochs'] == 1
  assert record['codebook_before'] != record['codebook_after']
  all_p = np.concatenate([x.ravel() for x in jax.tree.leaves(pruned)])
  all_t = np.concatenate([x.ravel() for x in jax.tree.leaves(tuned)])
  np.testing.assert_array_equal(all_p != 0, all_t != 0)
  # The same partition into clusters, one value each.
  pairs = set(zip(all_p[all_p != 0].tolist(), all_t[all_t != 0].tolist()))
  assert len(pairs) == len(set(all_p[all_p != 0].tolist())) == len(
      set(all_t[all_t != 0].tolist()))
  assert sorted(v for _, v in pairs) == sorted(record['codebook_after'])
  x, y = _test_set()
  accuracy = float(np.mean(np.argmax(_logits(tuned, x), -1) == y))
  assert accuracy == pytest.approx(report['table2']['finetuned'], abs=1e-9)
  assert report['table2']['pruned'] == record['pruned_accuracy']


def test_cleanup_keeps_predictions_and_the_file_holds_its_output(run):
  workdir, report = run
  tuned, cleaned = _load(workdir, 'finetune'), _load(workdir, 'cleanup')
  x, _ = _test_set()
  assert np.array_equal(_logits(tuned, x), _logits(cleaned, x))
  nonzero = lambda t: sum(int(np.count_nonzero(v))
                          for v in jax.tree.leaves(t))
  assert report['cleanup']['removed'] == nonzero(tuned) - nonzero(cleaned)
  assert report['cleanup']['removed'] > 0
  info = gmp_jax.load_compressed_with_info(os.path.join(workdir, report['compressed_file']))
  stored, metadata = info.params, info.metadata
  assert metadata == {'model': 'lenet300100'}
  for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(cleaned)):
    np.testing.assert_array_equal(a, b)
  assert report['table1'][-1]['nonzero'] == nonzero(cleaned)


def test_rerun_runs_nothing(run):
  workdir, report = run
  before = {n: open(pipeline.done_path(workdir, n)).read()
            for n in pipeline.STAGES}
  assert pipeline.train_and_evaluate(_config(), workdir) == report
  assert {n: open(pipeline.done_path(workdir, n)).read()
          for n in pipeline.STAGES} == before


@pytest.mark.parametrize('mode', ['codebook', 'straight_through'])
def test_finetune_codes_only_the_leaves_of_retrain_filter(run, mode):
  """`retrain.filter` = kernels: the biases are not fine-tuning's to move.

  The module's run quantised biases too (its filter is the default); with
  its retrained float biases put back, the tree is what a kernels-only run
  quantises. Set up with that filter, the stage's codebook holds the
  kernels' values alone (NumPy) and the biases come out as they went in.
  """
  from experiments.infra import workdir_layout  # pylint: disable=import-outside-toplevel
  from experiments.stages import finetune  # pylint: disable=import-outside-toplevel
  workdir, _ = run
  retrained = gmp_jax.load_compressed(os.path.join(workdir, 'retrain',
                                                   'state.gmpz'))
  quantized = {layer: dict(leaves, bias=np.asarray(retrained[layer]['bias']))
               for layer, leaves in _load(workdir, 'postprocess').items()}
  teacher, _ = workdir_layout.load_params(
      os.path.join(workdir, workdir_layout.TEACHER_PARAMS))
  config = _config(**{'retrain.filter': 'kernels',
                      'postprocess.finetune_mode': mode})
  training = finetune.setup(config, 'lenet300100', quantized, teacher,
                            pipeline.load_data(config))
  kernels = np.concatenate([np.asarray(v['kernel']).ravel()
                            for v in quantized.values()])
  np.testing.assert_array_equal(
      np.sort(training.codebook_of(training.state)),
      np.unique(kernels[kernels != 0]))
  out = training.params_of(training.state)
  for layer, leaves in quantized.items():
    np.testing.assert_array_equal(np.asarray(out[layer]['bias']),
                                  np.asarray(leaves['bias']))


def _rerun_from_finetune(workdir, copy, **overrides):
  """Copies a finished run and reruns it from the finetune stage on."""
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, 'finetune'))
  return pipeline.train_and_evaluate(_config(**overrides), copy)


def test_both_off(run, tmp_path):
  workdir, report = run
  copy = str(tmp_path / 'off')
  off = _rerun_from_finetune(workdir, copy, **{
      'postprocess.finetune_epochs': 0, 'postprocess.cleanup': False})
  assert 'finetuned' not in off['table2']
  assert off['table2']['pruned'] == report['table2']['pruned']
  assert off['cleanup']['skipped'] == 'disabled'
  for a, b in zip(jax.tree.leaves(_load(copy, 'postprocess')),
                  jax.tree.leaves(gmp_jax.load_compressed(
                      os.path.join(copy, 'model.gmpz')))):
    np.testing.assert_array_equal(a, b)


def test_per_leaf_codebooks(run, tmp_path):
  workdir, _ = run
  copy = str(tmp_path / 'per_leaf')
  report = _rerun_from_finetune(workdir, copy,
                                **{'postprocess.finetune_per_leaf': True})
  pruned, tuned = _load(copy, 'postprocess'), _load(copy, 'finetune')
  leaves_p, leaves_t = jax.tree.leaves(pruned), jax.tree.leaves(tuned)
  record = json.load(open(pipeline.done_path(copy, 'finetune')))
  k = len(set(np.concatenate([x[x != 0] for x in leaves_p]).tolist()))
  assert len(record['codebook_after']) == k * len(leaves_p)
  moved_apart = False
  for p, t in zip(leaves_p, leaves_t):
    np.testing.assert_array_equal(p != 0, t != 0)
    # Within a leaf: one tuned value per pruned value, and back.
    pairs = set(zip(p[p != 0].tolist(), t[t != 0].tolist()))
    assert len(pairs) == len(set(p[p != 0].tolist())) == len(
        set(t[t != 0].tolist()))
    for value, tuned_value in pairs:
      for p2, t2 in zip(leaves_p, leaves_t):
        shared = t2[p2 == value]
        moved_apart |= bool(shared.size and shared[0] != tuned_value)
  assert moved_apart  # Some pruned value now differs between two leaves.
  x, y = _test_set()
  accuracy = float(np.mean(np.argmax(_logits(tuned, x), -1) == y))
  assert accuracy == pytest.approx(report['table2']['finetuned'], abs=1e-9)


def test_negative_epochs_are_rejected(tmp_path):
  with pytest.raises(ValueError, match='finetune_epochs'):
    pipeline.train_and_evaluate(
        _config(**{'postprocess.finetune_epochs': -1}), str(tmp_path))


def test_unknown_finetune_mode_is_rejected(tmp_path):
  with pytest.raises(ValueError, match='finetune_mode'):
    pipeline.train_and_evaluate(
        _config(**{'postprocess.finetune_mode': 'everything'}), str(tmp_path))


def test_bad_augment_shift_is_rejected(tmp_path):
  with pytest.raises(ValueError, match='augment_shift'):
    pipeline.train_and_evaluate(_config(**{'data.augment_shift': -2}),
                                str(tmp_path))


def test_straight_through_keeps_the_mask_and_reads_the_codebook(shifted):
  workdir, report = shifted
  pruned, tuned = _load(workdir, 'postprocess'), _load(workdir, 'finetune')
  record = json.load(open(pipeline.done_path(workdir, 'finetune')))
  assert record['mode'] == 'straight_through'
  codebook = np.asarray(record['codebook_after'])
  all_p = np.concatenate([x.ravel() for x in jax.tree.leaves(pruned)])
  all_t = np.concatenate([x.ravel() for x in jax.tree.leaves(tuned)])
  np.testing.assert_array_equal(all_p != 0, all_t != 0)
  # Every kept weight is a trained shared value, and its latent started at
  # the retrained weight: independent of the stage, the nearest value of
  # each retrained weight in the initial codebook is where it starts.
  assert set(all_t[all_t != 0].tolist()) <= set(codebook.tolist())
  retrained = gmp_jax.load_compressed(os.path.join(workdir, 'retrain',
                                                   'state.gmpz'))
  start = np.asarray(record['codebook_before'])
  kept = all_p != 0
  w = np.concatenate([np.asarray(x).ravel() for x in
                      jax.tree.leaves(retrained)])[kept]
  nearest = start[np.argmin(np.abs(w[:, None] - start[None]), -1)]
  x, y = _test_set()
  flat = np.zeros_like(all_p)
  flat[kept] = nearest
  start_params = jax.tree.unflatten(jax.tree.structure(pruned), [
      a.reshape(v.shape) for a, v in zip(
          np.split(flat, np.cumsum([v.size for v in
                                    jax.tree.leaves(pruned)])[:-1]),
          jax.tree.leaves(pruned))])
  start_accuracy = float(np.mean(np.argmax(_logits(start_params, x), -1) == y))
  assert start_accuracy == pytest.approx(record['start_accuracy'], abs=1e-9)
  accuracy = float(np.mean(np.argmax(_logits(tuned, x), -1) == y))
  assert accuracy == pytest.approx(report['table2']['finetuned'], abs=1e-9)


def test_augmented_run_trains_on_shifted_images(shifted, tmp_path):
  workdir, report = shifted
  assert report['config']['data']['augment_shift'] == 1
  # The same run without the shifts, up to its teacher.
  unshifted = str(tmp_path / 'unshifted')
  assert pipeline.train_and_evaluate(
      _config(**{**SHIFTED, 'data.augment_shift': None}), unshifted,
      stop_after='teacher') is None
  teacher = lambda w: json.load(open(pipeline.done_path(w, 'teacher')))
  # Same seed, data and mesh: only the shifts make the teacher differ.
  assert teacher(workdir)['test_cross_entropy'] != teacher(unshifted)[
      'test_cross_entropy']
  x, y = _test_set()
  stored = gmp_jax.load_compressed(os.path.join(workdir, 'model.gmpz'))
  accuracy = float(np.mean(np.argmax(_logits(stored, x), -1) == y))
  assert accuracy == pytest.approx(report['table2']['finetuned'], abs=1e-9)


@pytest.mark.slow
def test_straight_through_and_shifts_on_a_mesh_match_one_device(shifted,
                                                                tmp_path):
  if jax.device_count() < 4:
    pytest.skip('needs 4 devices (conftest.py)')
  fsdp_dir, fsdp = shifted
  one_dir = str(tmp_path / 'one')
  one = pipeline.train_and_evaluate(
      _config(**{**SHIFTED, 'mesh.num_devices': 1}), one_dir)
  assert fsdp['distributed'] == {'num_processes': 1, 'num_devices': 4}
  for key, value in one['table2'].items():
    assert fsdp['table2'][key] == pytest.approx(value, abs=0.01)
  record = lambda w: json.load(open(pipeline.done_path(w, 'finetune')))
  assert record(fsdp_dir)['mode'] == 'straight_through'
  np.testing.assert_allclose(record(fsdp_dir)['codebook_after'],
                             record(one_dir)['codebook_after'], atol=1e-5)
