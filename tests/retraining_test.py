"""Tests for experiments.stages.retrain's schedules: weights learning rate, tau."""

import math

import pytest

from experiments.stages import retrain as retraining
from experiments.configs import mnist as mnist_config


def _rc(**overrides):
  rc = mnist_config.get_config().retrain
  for key, value in overrides.items():
    rc[key] = value
  return rc


def test_constant_by_default():
  rc = _rc()
  assert rc.lr_decay_to is None
  assert retraining.weights_schedule(rc, 5e-4, 60000) == 5e-4


def test_cosine_decay_matches_the_formula():
  rc = _rc(lr_decay_to=0.1, epochs=3, batch_size=256)
  schedule = retraining.weights_schedule(rc, 5e-4, 60000)
  total = 3 * (60000 // 256)  # 702 steps; the epoch remainder is dropped.
  for step in (0, 1, 350, 701, total, total + 50):
    t = min(step, total) / total
    want = 5e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    assert float(schedule(step)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize('bad', [-0.1, 1.5, float('nan')])
def test_rejects_a_decay_outside_0_1(bad):
  with pytest.raises(ValueError, match='lr_decay_to'):
    retraining.weights_schedule(_rc(lr_decay_to=bad), 5e-4, 60000)


def test_tau_constant_by_default():
  rc = _rc()
  assert rc.tau_warmup_epochs is None
  assert retraining.tau_schedule(rc, 60000) == rc.tau


def test_tau_warmup_is_linear_then_flat():
  rc = _rc(tau=0.04, tau_warmup_epochs=2, epochs=5, batch_size=256)
  schedule = retraining.tau_schedule(rc, 60000)
  ramp = 2 * (60000 // 256)  # 468 steps
  for step in (0, 1, 234, 467, ramp, ramp + 1000):
    want = 0.04 * min(step, ramp) / ramp
    assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize('bad', [0, -1, 6, 1.5])
def test_rejects_a_warmup_outside_the_epochs(bad):
  rc = mnist_config.get_config().retrain
  rc.epochs = 5
  with rc.ignore_type():
    rc.tau_warmup_epochs = bad
  with pytest.raises(ValueError, match='tau_warmup_epochs'):
    retraining.tau_schedule(rc, 60000)
