"""The teacher's early stopping on the validation split.

The stop rule against hand-worked sequences and a brute-force reference,
the resumable `Stopper`, the loop's `stop_fn` hook, the language data's
validation split, the config checks, and the teacher stage on the
Shakespeare sample: the weights it keeps are the best validation epoch's
(read back from that epoch's checkpoint), its record's values are the
metrics log's and a NumPy evaluation's, and killed runs resume to the
uninterrupted run's weights and record.
"""

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs import mnist as mnist_config
from experiments.configs import shakespeare as shakespeare_config
from experiments.image import data as data_lib
from experiments.infra import config_check
from experiments.infra import early_stopping
from experiments.infra import jsonio
from experiments.infra import loop
from experiments.infra import monitor
from experiments.infra import registry
from experiments.infra import workdir_layout
from experiments.language import task as language_model
from experiments.language import transformer
from experiments.stages import runner
from experiments.stages import teacher
import gmp_jax

# --------------------------------------------------------------- the rule --


def _reference_stop(values, patience, higher_is_better):
  """(stop epoch or None, best epoch at that point), by brute force."""
  sign = 1.0 if higher_is_better else -1.0
  for epoch in range(1, len(values) + 1):
    seen = sign * np.asarray(values[:epoch], np.float64)
    best = int(np.flatnonzero(seen == seen.max())[0]) + 1  # First of ties.
    if epoch - best >= patience:
      return epoch, best
  seen = sign * np.asarray(values, np.float64)
  return None, int(np.flatnonzero(seen == seen.max())[0]) + 1


@pytest.mark.parametrize('values, patience, higher, stops', [
    # Lower is better (bits per byte): 4.0 at epoch 2 is never beaten.
    ([5.0, 4.0, 4.5, 4.2, 4.1], 1, False, [0, 0, 1, 1, 1]),
    ([5.0, 4.0, 4.5, 4.2, 4.1], 2, False, [0, 0, 0, 1, 1]),
    ([5.0, 4.0, 4.5, 4.2, 4.1], 3, False, [0, 0, 0, 0, 1]),
    ([5.0, 4.0, 4.5, 3.9, 4.1], 2, False, [0, 0, 0, 0, 0]),
    # A tie is no improvement: the earlier epoch stays the best.
    ([3.0, 3.0, 3.0], 2, False, [0, 0, 1]),
    ([3.0, 2.0, 2.0], 1, False, [0, 0, 1]),
    # Higher is better (accuracy).
    ([0.5, 0.6, 0.55, 0.6], 2, True, [0, 0, 0, 1]),
    ([0.5, 0.4, 0.3], 2, True, [0, 0, 1]),
    ([0.5, 0.4, 0.3], 2, False, [0, 0, 0]),
    # Patience beyond the run: never stops.
    ([1.0, 2.0, 3.0], 5, False, [0, 0, 0]),
])
def test_should_stop_on_hand_worked_sequences(values, patience, higher,
                                              stops):
  got = [early_stopping.should_stop(values[:n], patience=patience,
                                    higher_is_better=higher)
         for n in range(1, len(values) + 1)]
  assert got == [bool(s) for s in stops]
  assert not early_stopping.should_stop([], patience=patience,
                                        higher_is_better=higher)


def test_best_index_keeps_the_first_of_ties():
  assert early_stopping.best_index([3.0, 2.0, 2.0, 5.0],
                                   higher_is_better=False) == 1
  assert early_stopping.best_index([3.0, 2.0, 2.0, 5.0],
                                   higher_is_better=True) == 3
  assert early_stopping.best_index([7], higher_is_better=True) == 0


def test_rule_matches_brute_force_on_random_sequences():
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(1, 12))
    values = [float(v) for v in rng.integers(0, 5, n)]  # Many ties.
    patience = int(rng.integers(1, 5))
    higher = bool(rng.integers(2))
    want_stop, _ = _reference_stop(values, patience, higher)
    got = [early_stopping.should_stop(values[:e], patience=patience,
                                      higher_is_better=higher)
           for e in range(1, n + 1)]
    first = got.index(True) + 1 if True in got else None
    assert first == want_stop, (values, patience, higher)


@pytest.mark.parametrize('patience', [0, -1, 1.5, True, '2'])
def test_bad_patience(patience):
  with pytest.raises(ValueError, match='patience must be None .* int >= 1'):
    early_stopping.should_stop([1.0], patience=patience,
                               higher_is_better=False)
  with pytest.raises(ValueError, match='patience'):
    _stopper('/nonexistent', patience=patience)


def test_bad_values():
  for bad in ([1.0, math.nan], [math.inf], [1.0, '2'], [None], [True]):
    with pytest.raises(ValueError, match='must be a finite number'):
      early_stopping.should_stop(bad, patience=1, higher_is_better=False)
  with pytest.raises(ValueError, match='at least one value'):
    early_stopping.best_index([], higher_is_better=False)
  with pytest.raises(ValueError, match='needs a patience'):
    early_stopping.should_stop([1.0], patience=None, higher_is_better=False)


# ------------------------------------------------------------ the Stopper --


class _State:
  """A stand-in for a TrainState: only `params` is read."""

  def __init__(self, params):
    self.params = params


def _params(epoch):
  return {'w': np.full((3, 2), epoch, np.float32),
          'b': np.arange(2, dtype=np.float32) + epoch}


def _stopper(directory, *, patience=2, higher=False, key='valid_m'):
  def write(path, params):
    gmp_jax.save_compressed(path, params, codebook_dtype=None)
  return early_stopping.Stopper(
      str(directory), key=key, higher_is_better=higher, patience=patience,
      host_params=jax.device_get, write_params=write)


def _feed(stopper, values, start=1):
  return [stopper(e, _State(_params(e)), {'valid_m': v, 'epoch': e})
          for e, v in enumerate(values, start)]


def _same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def test_stopper_keeps_the_best_epoch_and_its_params(tmp_path):
  values = [5.0, 4.0, 4.5, 4.2, 3.0]
  stopper = _stopper(tmp_path, patience=2)
  assert _feed(stopper, values[:4]) == [False, False, False, True]
  assert stopper.best_epoch == 2 and stopper.best_value == 4.0
  assert stopper.best_record == {'valid_m': 4.0, 'epoch': 2}
  assert stopper.finished(10) and stopper.values == values[:4]
  _same_tree(stopper.best_params(), _params(2))
  # On disk: the state and the best epoch's params alone.
  assert sorted(os.listdir(tmp_path)) == ['best_epoch_0002.gmpz',
                                          'state.json']
  _same_tree(gmp_jax.load_compressed(tmp_path / 'best_epoch_0002.gmpz'),
             _params(2))
  state = json.load(open(tmp_path / 'state.json'))
  assert state['values'] == values[:4] and state['best_epoch'] == 2
  assert state['stopped'] and state['elapsed_s'] >= 0
  # A run that never stops reaches its maximum.
  other = _stopper(tmp_path / 'o', patience=9, higher=True)
  assert _feed(other, [0.1, 0.3, 0.2]) == [False] * 3
  assert other.best_epoch == 2 and other.finished(3)
  assert not other.finished(4)


def test_stopper_resumes_and_replays(tmp_path):
  first = _stopper(tmp_path, patience=2)
  assert _feed(first, [5.0, 4.0, 4.5]) == [False, False, False]
  # A new process reads the state: the best params come from the file.
  again = _stopper(tmp_path, patience=2)
  assert again.values == [5.0, 4.0, 4.5] and again.best_epoch == 2
  _same_tree(again.best_params(), _params(2))
  # Epoch 3 replayed (killed before its checkpoint): the same answer, and
  # its (different) params and value are not taken.
  assert again(3, _State(_params(30)), {'valid_m': 1.0}) is False
  assert again.values == [5.0, 4.0, 4.5] and again.best_epoch == 2
  assert _feed(again, [4.6], start=4) == [True]
  assert again(4, _State(_params(40)), {'valid_m': 9.0}) is True
  assert again(2, _State(_params(40)), {'valid_m': 9.0}) is False
  _same_tree(_stopper(tmp_path, patience=2).best_params(), _params(2))


def test_stopper_survives_a_kill_between_its_two_files(tmp_path,
                                                       monkeypatch):
  stopper = _stopper(tmp_path)
  _feed(stopper, [5.0])

  def killed(*args, **kwargs):
    raise KeyboardInterrupt('killed')

  # Epoch 2 improves: its params file is written, then the kill.
  monkeypatch.setattr(jsonio, 'write_json_atomic', killed)
  with pytest.raises(KeyboardInterrupt):
    _feed(stopper, [4.0], start=2)
  monkeypatch.undo()
  resumed = _stopper(tmp_path)
  assert resumed.values == [5.0] and resumed.best_epoch == 1
  _same_tree(resumed.best_params(), _params(1))
  # The replayed epoch 2 takes over; the stray file goes.
  assert _feed(resumed, [4.0], start=2) == [False]
  assert sorted(os.listdir(tmp_path)) == ['best_epoch_0002.gmpz',
                                          'state.json']
  _same_tree(_stopper(tmp_path).best_params(), _params(2))


def test_stopper_bad_input(tmp_path):
  stopper = _stopper(tmp_path)
  with pytest.raises(ValueError, match='no epoch recorded'):
    stopper.best_params()
  with pytest.raises(KeyError, match="watches 'valid_m'"):
    stopper(1, _State(_params(1)), {'valid_other': 1.0})
  with pytest.raises(ValueError, match='finite'):
    stopper(1, _State(_params(1)), {'valid_m': math.nan})
  _feed(stopper, [5.0, 4.0])
  with pytest.raises(RuntimeError, match='holds epochs 1-2 but training is '
                     'at the end of epoch 4'):
    stopper(4, _State(_params(4)), {'valid_m': 1.0})
  for kwargs in ({'patience': 3}, {'higher': True}, {'key': 'valid_x'}):
    with pytest.raises(ValueError, match='was kept for'):
      _stopper(tmp_path, **kwargs)


# --------------------------------------------------------- the loop hook --

N, D, BATCH = 24, 2, 6  # 4 steps per epoch.


def _loop(tmp_path, stop_fn, *, eval_fn=None, epochs=5):
  x = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)

  def step(state, batch):
    grad = jnp.mean(batch['x'], axis=0) + state['w']
    return {'w': state['w'] - 0.1 * grad}, {'loss': jnp.sum(state['w'] ** 2)}

  return loop.train_loop(
      stage='teacher', state={'w': jnp.ones(D, jnp.float32)},
      train_step=step, data=jax.device_put({'x': x}), num_epochs=epochs,
      batch_size=BATCH, seed=(3,), checkpoint_dir=str(tmp_path / 'ckpt'),
      options=loop.LoopOptions(kind='unroll', checkpoint_interval_s=1e9,
                               eval_every_epochs=None),
      log=monitor.MetricsLog(str(tmp_path)), eval_fn=eval_fn,
      stop_fn=stop_fn)


def _steps(tmp_path):
  return sorted(int(d) for d in os.listdir(tmp_path / 'ckpt') if d.isdigit())


def test_loop_stops_evaluates_and_checkpoints_every_epoch(tmp_path):
  calls = []

  def stop_fn(epoch, state, record):
    calls.append((epoch, record['valid_w'], float(state['w'][0])))
    return epoch == 3

  def eval_fn(state):
    return {'valid_w': float(state['w'][0])}

  state = _loop(tmp_path, stop_fn, eval_fn=eval_fn)
  # Evaluated at every epoch although eval_every_epochs is None, and the
  # hook saw each epoch's record and state.
  assert [c[0] for c in calls] == [1, 2, 3]
  assert all(c[1] == c[2] for c in calls)
  assert float(state['w'][0]) == calls[-1][2]
  # A checkpoint at each epoch end (the interval is 1e9 s); two are kept.
  assert _steps(tmp_path) == [8, 12]
  records = workdir_layout.read_metrics(tmp_path / 'metrics.jsonl')
  assert [r['epoch'] for r in records] == [1, 2, 3]
  # The stopped state is the uninterrupted 5-epoch run's after epoch 3.
  calls_full = []
  full = _loop(tmp_path / 'full', lambda e, s, r: calls_full.append(
      float(s['w'][0])) or False, eval_fn=eval_fn)
  assert len(calls_full) == 5 and calls_full[2] == calls[-1][2]
  assert _steps(tmp_path / 'full') == [16, 20]
  assert float(full['w'][0]) == calls_full[-1]


def test_loop_replays_the_epoch_a_kill_cut_before_its_checkpoint(tmp_path):
  seen = []

  def killed_at_3(epoch, state, record):
    seen.append(epoch)
    if epoch == 3:
      raise KeyboardInterrupt('killed')  # Before epoch 3's checkpoint.
    return False

  with pytest.raises(KeyboardInterrupt):
    _loop(tmp_path, killed_at_3)
  assert _steps(tmp_path) == [4, 8]
  _loop(tmp_path, lambda e, s, r: seen.append(e) or e == 4)
  assert seen == [1, 2, 3, 3, 4] and _steps(tmp_path) == [12, 16]


# ------------------------------------------------ the data and the config --


def test_sample_has_a_disjoint_validation_split():
  raw = np.frombuffer(open(language_model.SAMPLE_PATH, 'rb').read(), np.uint8)
  t = language_model.SEQ_LEN
  data = language_model.load_shakespeare(source='sample')
  n = len(raw)
  # Train [0, 6n/8), valid [6n/8, 7n/8), test [7n/8, n): each split's
  # windows hold its own bytes, inputs and targets alike.
  for name, lo, hi in (('train', 0, 6 * n // 8), ('valid', 6 * n // 8,
                                                  7 * n // 8),
                       ('test', 7 * n // 8, n)):
    x, y = data[name]
    assert x.shape == ((hi - lo - 1) // t, t)
    np.testing.assert_array_equal(x.ravel(), raw[lo:lo + x.size])
    np.testing.assert_array_equal(y.ravel(), raw[lo + 1:lo + 1 + x.size])
    assert lo + 1 + x.size <= hi
  kept = language_model.load_shakespeare(source='sample', num_valid=5)
  assert len(kept['valid'][0]) == 5
  assert registry.dataset('shakespeare').validation


def test_image_datasets_are_unchanged_and_have_no_validation_split():
  ds = data_lib.load_dataset('mnist', source='random', num_train=8,
                             num_test=4, seed=1)
  assert set(ds) == {'train', 'test'}
  assert not registry.dataset('mnist').validation
  with pytest.raises(ValueError, match="'mnist' has no validation split"):
    data_lib.load_dataset('mnist', source='random', num_valid=3)


def test_config_checks():
  config = shakespeare_config.get_config('converged')
  assert config.teacher.patience == 2 and config.teacher.epochs == 30
  default = shakespeare_config.get_config()
  assert default.teacher.patience is None and default.data.num_valid is None
  # Only the teacher's epochs and patience differ from the default.
  config.teacher.epochs, config.teacher.patience = 4, None
  assert config.to_dict() == default.to_dict()
  assert mnist_config.get_config().teacher.patience is None
  config_check.check_config(shakespeare_config.get_config('converged'))
  for patience in (0, -2):  # The config's int field takes no other type.
    config = shakespeare_config.get_config('smoke')
    config.teacher.patience = patience
    with pytest.raises(ValueError, match='teacher.patience must be None'):
      config_check.check_config(config)
  config = shakespeare_config.get_config('smoke')
  config.data.num_valid = 0
  with pytest.raises(ValueError, match='data.num_valid must be None'):
    config_check.check_config(config)
  config = mnist_config.get_config('smoke')
  config.teacher.patience = 2
  with pytest.raises(ValueError, match="teacher.patience=2 stops the teacher "
                     "on the validation split, but dataset 'mnist' has none"):
    config_check.check_config(config)
  config = mnist_config.get_config('smoke')
  config.data.num_valid = 8
  with pytest.raises(ValueError, match="'mnist' has no validation split"):
    config_check.check_config(config)
  with pytest.raises(ValueError, match='expected "smoke" or "converged"'):
    shakespeare_config.get_config('convergd')


# ------------------------------------------------- the stage, end to end --

MICRO = 'transformer_micro_early_stopping_test'
registry.register_model(
    MICRO, lambda info: language_model.NNXModule(transformer.TransformerConfig(
        num_layers=1, d_model=16, num_heads=1, mlp_dim=32,
        vocab_size=info.vocab_size, context=info.input_shape[0])),
    default_dataset='shakespeare', replace=True)
NUM_TRAIN, BATCH_SIZE = 48, 16  # 3 steps per epoch.
STEPS_PER_EPOCH = NUM_TRAIN // BATCH_SIZE
# The validation bits per byte the stage sees at the ends of epochs 1, 2,
# 3, ...: 3 is worse than 2, so patience 1 stops there with epoch 2 best.
SCRIPT = [6.0, 5.0, 5.5, 4.0]
WALL = ('wall_time_s', 'train_wall_time_s')


def _config():
  config = shakespeare_config.get_config('smoke')
  config.model = MICRO
  config.data.num_train = NUM_TRAIN
  config.data.num_valid = 24
  config.data.num_test = 24
  config.eval_batch_size = 24
  config.teacher.batch_size = BATCH_SIZE
  config.teacher.epochs = 4
  config.teacher.patience = 1
  config.tensorboard = False
  return config


def _script(monkeypatch):
  """The validation's bits per byte replaced by `SCRIPT` (by the state's
  step); its accuracy, and everything else, as computed."""
  real = teacher.valid_metrics

  def valid_metrics(validate):
    metrics = real(validate)

    def scripted_metrics(state):
      out = metrics(state)
      epoch = int(state.step) // STEPS_PER_EPOCH
      out['valid_bits_per_byte'] = SCRIPT[epoch - 1]
      return out

    return scripted_metrics

  monkeypatch.setattr(teacher, 'valid_metrics', valid_metrics)


@pytest.fixture
def scripted(monkeypatch):
  _script(monkeypatch)


def _run_teacher(workdir):
  runner.train_and_evaluate(_config(), str(workdir), stop_after='teacher')
  record = workdir_layout.read_done(str(workdir), 'teacher')
  params = gmp_jax.load_compressed(
      os.path.join(workdir, workdir_layout.TEACHER_PARAMS))
  return record, params


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  with pytest.MonkeyPatch.context() as monkeypatch:
    _script(monkeypatch)
    workdir = tmp_path_factory.mktemp('uninterrupted')
    record, params = _run_teacher(workdir)
  return workdir, record, params


def _numpy_metrics(params, split):
  """Bits per byte and accuracy of `params` on a split, from the logits in
  float64 NumPy."""
  x, y = language_model.load_shakespeare(source='sample', num_valid=24,
                                         num_test=24)[split]
  apply = registry.model(MICRO).build('shakespeare').apply
  params = jax.tree.map(jnp.asarray, params)
  z = np.asarray(apply({'params': params}, jnp.asarray(x)), np.float64)
  log_p = z - z.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, y[..., None], -1).mean()
  return nll / math.log(2), float(np.mean(np.argmax(z, -1) == y))


def test_stage_keeps_the_best_validation_epoch(uninterrupted):
  workdir, record, params = uninterrupted
  logged = workdir_layout.read_metrics(
      workdir_layout.metrics_path(str(workdir)), latest=True, stage='teacher')
  valid = [r['valid_bits_per_byte'] for r in logged]
  # It stopped at epoch 3 of at most 4: epoch 3 was worse than epoch 2.
  assert valid == SCRIPT[:3] and [r['epoch'] for r in logged] == [1, 2, 3]
  assert record['epochs_run'] == 3 and record['stopped_early']
  assert record['max_epochs'] == 4 and record['patience'] == 1
  assert record['best_valid_bits_per_byte'] == min(valid)
  assert record['best_epoch'] == 1 + int(np.argmin(valid))
  assert record['valid_history'] == valid
  assert record['wall_time_s'] >= record['train_wall_time_s'] > 0
  # The test split was not looked at during training.
  assert not any(k.startswith('test_') for r in logged for k in r)
  # The saved weights are the best epoch's: its checkpoint's params (the
  # loop keeps the last two, epochs 2 and 3).
  ckpt = os.path.join(workdir, 'teacher', 'checkpoints')
  assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [
      2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]
  with ocp.CheckpointManager(os.path.abspath(ckpt)) as manager:
    restored = manager.restore(2 * STEPS_PER_EPOCH,
                               args=ocp.args.StandardRestore())
    last = manager.restore(3 * STEPS_PER_EPOCH,
                           args=ocp.args.StandardRestore())
  _same_tree(params, jax.device_get(restored['params']))
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(params), jax.tree.leaves(last['params'])))
  # The record's validation accuracy and test metrics are those of the
  # saved weights, recomputed from their logits.
  _, valid_accuracy = _numpy_metrics(params, 'valid')
  assert record['best_valid_accuracy'] == pytest.approx(valid_accuracy,
                                                        abs=1e-12)
  assert logged[1]['valid_accuracy'] == record['best_valid_accuracy']
  test_bpb, test_accuracy = _numpy_metrics(params, 'test')
  assert record['test_bits_per_byte'] == pytest.approx(test_bpb, rel=1e-5)
  assert record['test_accuracy'] == pytest.approx(test_accuracy, abs=1e-12)


class _Killed(Exception):
  pass


def _raise_killed(*args, **kwargs):
  raise _Killed('killed')


def _same_result(workdir, uninterrupted):
  _, want_record, want_params = uninterrupted
  record = workdir_layout.read_done(str(workdir), 'teacher')
  _same_tree(gmp_jax.load_compressed(
      os.path.join(workdir, workdir_layout.TEACHER_PARAMS)), want_params)
  assert ({k: v for k, v in record.items() if k not in WALL}
          == {k: v for k, v in want_record.items() if k not in WALL})
  logged = workdir_layout.read_metrics(
      workdir_layout.metrics_path(str(workdir)), latest=True, stage='teacher')
  assert [r['valid_bits_per_byte'] for r in logged] == SCRIPT[:3]


@pytest.mark.slow  # Two training runs (two compilations).
def test_a_run_killed_before_a_checkpoint_resumes_to_the_same_teacher(
    uninterrupted, scripted, tmp_path, monkeypatch):
  """Killed after epoch 2 (the best) was recorded, before its checkpoint:
  the rerun resumes from epoch 1's checkpoint and replays epoch 2."""
  del scripted  # Applied.
  workdir = tmp_path / 'killed'
  make_manager = loop._checkpoint_manager  # pylint: disable=protected-access

  def manager_killed_at_epoch_2(directory):
    manager = make_manager(directory)
    save = manager.save

    def killing_save(step, *args, **kwargs):
      if step == 2 * STEPS_PER_EPOCH:
        raise _Killed(step)
      return save(step, *args, **kwargs)

    manager.save = killing_save
    return manager

  with monkeypatch.context() as m:
    m.setattr(loop, '_checkpoint_manager', manager_killed_at_epoch_2)
    with pytest.raises(_Killed):
      _run_teacher(workdir)
  state = json.load(open(workdir / teacher.EARLY_STOPPING_DIR /
                         early_stopping.STATE_FILE))
  assert state['values'] == SCRIPT[:2] and state['best_epoch'] == 2
  ckpt = workdir / 'teacher' / 'checkpoints'
  assert [d for d in os.listdir(ckpt) if d.isdigit()] == [
      str(STEPS_PER_EPOCH)]
  assert not workdir_layout.has_done(str(workdir), 'teacher')
  _run_teacher(workdir)
  _same_result(workdir, uninterrupted)


def test_a_run_killed_after_it_stopped_trains_no_more(uninterrupted,
                                                      tmp_path, monkeypatch):
  """Killed after the loop stopped, before the stage's record: the rerun
  trains nothing and writes the same teacher and record."""
  workdir = tmp_path / 'stopped'
  shutil.copytree(uninterrupted[0], workdir)
  os.remove(workdir_layout.done_path(str(workdir), 'teacher'))
  os.remove(workdir / workdir_layout.TEACHER_PARAMS)
  monkeypatch.setattr(loop, 'train_loop', _raise_killed)
  _run_teacher(workdir)
  _same_result(workdir, uninterrupted)


def test_stage_without_a_validation_split_names_the_problem(tmp_path):
  config = mnist_config.get_config('smoke')
  config.teacher.patience = 1
  with pytest.raises(ValueError, match="dataset 'mnist' has none"):
    runner.train_and_evaluate(config, str(tmp_path), stop_after='teacher')
  assert not os.path.exists(tmp_path / 'teacher')
