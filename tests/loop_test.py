"""Tests for experiments.infra.loop against a plain NumPy training loop."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
from experiments.image import data as data_lib
from experiments.infra import loop
from experiments.infra import monitor

N, D, BATCH, LR = 40, 3, 4, 0.05  # 10 steps per epoch.
SEED = (7, 1)


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, D)).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=N)
       ).astype(np.float32)
  return {'x': x, 'y': y}


def _train_step(state, batch):
  """Least squares by SGD; `t` counts steps (NaN loss from step `nan_at`)."""
  err = batch['x'] @ state['w'] - batch['y']
  loss = jnp.mean(err ** 2)
  grad = 2.0 * batch['x'].T @ err / err.shape[0]
  loss = jnp.where(state['t'] + 1 >= state['nan_at'], jnp.nan, loss)
  return ({'w': state['w'] - LR * grad, 't': state['t'] + 1,
           'nan_at': state['nan_at']},
          {'loss': loss, 'w_now': state['w']})


def _state(nan_at=10 ** 6):
  return {'w': jnp.zeros(D, jnp.float32), 't': jnp.zeros((), jnp.int32),
          'nan_at': jnp.asarray(nan_at, jnp.int32)}


def _numpy_reference(epochs):
  """The same SGD in float64 NumPy, with the loop's batch order."""
  d = _data()
  w, losses = np.zeros(D), []
  for epoch in range(epochs):
    order = data_lib.epoch_batches(np.random.default_rng([*SEED, epoch]), N,
                                   BATCH)
    epoch_losses = []
    for idx in order:
      x, y = d['x'][idx].astype(np.float64), d['y'][idx].astype(np.float64)
      err = x @ w - y
      epoch_losses.append(np.mean(err ** 2))
      w = w - LR * 2.0 * x.T @ err / len(err)
    losses.append(np.mean(epoch_losses))
  return w, losses


def _run(tmp_path, epochs, *, state=None, eval_fn=None, **options):
  options = loop.LoopOptions(**{'kind': 'unroll', **options})
  return loop.train_loop(
      stage='retrain', state=_state() if state is None else state,
      train_step=_train_step, data=jax.device_put(_data()),
      num_epochs=epochs, batch_size=BATCH, seed=SEED,
      checkpoint_dir=str(tmp_path / 'ckpt'), options=options,
      log=monitor.MetricsLog(str(tmp_path)), eval_fn=eval_fn)


def _saved_steps(tmp_path):
  return sorted(int(d) for d in os.listdir(tmp_path / 'ckpt') if d.isdigit())


@pytest.mark.parametrize('kind,steps_per_call,log_every', [
    ('unroll', 3, None),  # 10 = 3 + 3 + 3 + 1 per epoch.
    ('unroll', None, None),  # unroll_steps(10) = 5: 5 + 5.
    ('unroll', 1, 4),
    ('scan', None, None),  # The whole epoch in one call.
    ('scan', 4, 5),
])
def test_matches_numpy_sgd_with_the_same_batches(tmp_path, kind,
                                                 steps_per_call, log_every):
  state = _run(tmp_path, 3, kind=kind, steps_per_call=steps_per_call,
               log_every_steps=log_every)
  w, losses = _numpy_reference(3)
  np.testing.assert_allclose(state['w'], w, rtol=1e-5, atol=1e-6)
  assert int(state['t']) == 30
  records = monitor.MetricsLog(str(tmp_path)).records()
  assert [r['step'] for r in records] == [10, 20, 30]
  np.testing.assert_allclose([r['loss'] for r in records], losses, rtol=1e-5)
  assert 'w_now' not in records[0]  # Only scalar metrics are averaged.


def test_resumes_from_the_last_checkpoint(tmp_path):
  _run(tmp_path, 2, checkpoint_interval_s=1e9)  # Saved at the end only.
  assert _saved_steps(tmp_path) == [20]
  state = _run(tmp_path, 3, checkpoint_interval_s=1e9)
  w, _ = _numpy_reference(3)
  np.testing.assert_allclose(state['w'], w, rtol=1e-5, atol=1e-6)
  assert _saved_steps(tmp_path) == [20, 30]


def test_checkpoint_interval_zero_saves_at_every_sync(tmp_path):
  _run(tmp_path, 3, checkpoint_interval_s=0.0, log_every_steps=5)
  assert _saved_steps(tmp_path) == [25, 30]  # Orbax keeps the last two.


def test_caller_state_is_not_donated(tmp_path):
  state = _state()
  _run(tmp_path, 1, state=state)
  np.testing.assert_array_equal(state['w'], np.zeros(D))  # Still readable.


def test_eval_every_epochs(tmp_path):
  calls = []

  def eval_fn(state):
    calls.append(int(state['t']))
    return {'test_w0': float(state['w'][0])}

  _run(tmp_path, 5, eval_fn=eval_fn, eval_every_epochs=2)
  assert calls == [20, 40, 50]  # Every 2nd epoch and the last.
  records = monitor.MetricsLog(str(tmp_path)).records()
  assert ['test_w0' in r for r in records] == [False, True, False, True,
                                               True]


def test_non_finite_names_the_step_and_keeps_the_good_checkpoint(tmp_path):
  with pytest.raises(FloatingPointError,
                     match=r"'retrain'.* from step 16 \(steps 11-20"):
    _run(tmp_path, 3, state=_state(nan_at=16), checkpoint_interval_s=0.0)
  assert _saved_steps(tmp_path) == [10]
  with open(tmp_path / 'metrics.jsonl') as f:
    assert [json.loads(line)['step'] for line in f] == [10]


def test_bad_input(tmp_path):
  with pytest.raises(ValueError, match='batch_size 80 exceeds the 40'):
    loop.train_loop(
        stage='teacher', state=_state(), train_step=_train_step,
        data=_data(), num_epochs=1, batch_size=80, seed=SEED,
        checkpoint_dir=str(tmp_path / 'c'),
        options=loop.LoopOptions(kind='unroll'),
        log=monitor.MetricsLog(str(tmp_path)))
  with pytest.raises(ValueError, match='kind must be one of'):
    gmp_jax.make_multi_step(_train_step, kind='while')
  for bad, match in (({'kind': 'while'}, 'loop kind'),
                     ({'steps_per_call': 0}, 'steps_per_call'),
                     ({'log_every_steps': -5}, 'log_every_steps'),
                     ({'eval_every_epochs': 1.5}, 'eval_every_epochs'),
                     ({'checkpoint_interval_s': -1.0}, 'checkpoint_interval')):
    with pytest.raises(ValueError, match=match):
      _run(tmp_path, 1, **bad)


@pytest.mark.parametrize('steps_per_epoch,want', [
    (234, 6),  # The default retraining epoch: 6 x 39, one program.
    (468, 6), (10, 5), (8, 4), (7, 7), (24, 6), (3, 3),
    (13, 5), (1, 5), (2, 5), (11, 5),  # No size in 3..8 divides them.
])
def test_unroll_steps_divides_the_epoch_when_it_can(steps_per_epoch, want):
  got = loop.unroll_steps(steps_per_epoch)
  assert got == want
  divisors = [d for d in range(3, 9) if steps_per_epoch % d == 0]
  if divisors:  # The divisor nearest to 5 (ties: the larger).
    assert steps_per_epoch % got == 0
    assert abs(got - 5) == min(abs(d - 5) for d in divisors)


def test_default_kind_by_backend():
  assert loop.default_kind('cpu') == 'unroll'
  assert loop.default_kind('gpu') == loop.default_kind('tpu') == 'scan'


@pytest.mark.parametrize('kind,whiles', [('scan', 1), ('unroll', 0)])
def test_chunk_program_structure(kind, whiles):
  """A 'scan' call is one device loop over the steps; no host round trips."""
  state, data = _state(), jax.device_put(_data())
  acc = loop.zero_accumulator(_train_step, state, data)
  order = jnp.zeros((10, BATCH), jnp.int32)
  text = jax.jit(loop.chunk_program(_train_step, kind, 10)).lower(
      state, acc, data, order, np.int32(0), np.int32(0)).as_text()
  assert text.count('stablehlo.while') == whiles
  for op in ('infeed', 'outfeed', 'send', 'recv', 'custom_call'):
    assert f'stablehlo.{op}' not in text
