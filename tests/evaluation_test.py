"""Tests for experiments.infra.evaluation against NumPy."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import gmp_jax
from experiments.configs import fashion_mnist
from experiments.configs import lenet300
from experiments.configs import lenet5
from experiments.configs import mnist
from experiments.configs import shakespeare
from experiments.infra import evaluation

N, D, C = 23, 5, 4  # 23 = 3 batches of 7 and a remainder of 2.


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(N, D)).astype(np.float32)
  labels = rng.integers(0, C, N).astype(np.int32)
  params = {'w': rng.normal(size=(D, C)).astype(np.float32),
            'b': rng.normal(size=C).astype(np.float32)}
  return x, labels, params


def _apply(params, x):
  return x @ params['w'] + params['b'][None, :]


def _numpy_metrics(params, x, labels):
  logits = x.astype(np.float64) @ params['w'] + params['b']
  log_p = special.log_softmax(logits, axis=1)
  return {'accuracy': np.mean(np.argmax(logits, 1) == labels),
          'cross_entropy': -np.mean(log_p[np.arange(len(x)), labels])}


@pytest.mark.parametrize('kind', ['unroll', 'scan'])
def test_evaluator_matches_numpy(kind):
  x, labels, params = _problem()
  test = evaluation.TestSet(x, labels, batch_size=7, kind=kind)
  got = test.evaluator(_apply)(params)
  want = _numpy_metrics(params, x, labels)
  assert got['accuracy'] == want['accuracy']
  assert got['cross_entropy'] == pytest.approx(want['cross_entropy'],
                                               rel=1e-5)


def test_epoch_metrics_with_pruning():
  x, labels, params = _problem(1)
  mixture = gmp_jax.init_mixture(params, 3)
  state = gmp_jax.create_train_state(params, mixture, gmp_jax.gmp_optimizer())
  test = evaluation.TestSet(x, labels, batch_size=7, kind='unroll')
  out = evaluation.epoch_metrics(test.evaluator(_apply), pruned=True)(state)
  want = _numpy_metrics(params, x, labels)
  assert out['test_accuracy'] == want['accuracy']
  q = jax.device_get(gmp_jax.quantize(  # merged, as post-processing will
      params, gmp_jax.merge_components(mixture)))
  assert out['test_pruned_accuracy'] == _numpy_metrics(q, x, labels)[
      'accuracy']
  values = np.concatenate([np.ravel(v) for v in jax.tree.leaves(q)])
  assert out['nonzero_fraction'] == pytest.approx(np.mean(values != 0))


def test_epoch_metrics_pruned_only_skips_the_raw_pass():
  x, labels, params = _problem(1)
  mixture = gmp_jax.init_mixture(params, 3)
  state = gmp_jax.create_train_state(params, mixture, gmp_jax.gmp_optimizer())
  test = evaluation.TestSet(x, labels, batch_size=7, kind='unroll')
  seen = []
  evaluate = test.evaluator(_apply)

  def counting(p):
    seen.append(p)
    return evaluate(p)

  out = evaluation.epoch_metrics(counting, pruned=True, raw=False)(state)
  assert sorted(out) == ['nonzero_fraction', 'test_pruned_accuracy']
  assert len(seen) == 1
  q = jax.device_get(gmp_jax.quantize(  # merged, as post-processing will
      params, gmp_jax.merge_components(mixture)))
  assert out['test_pruned_accuracy'] == _numpy_metrics(q, x, labels)[
      'accuracy']
  with pytest.raises(ValueError, match='raw or pruned'):
    evaluation.epoch_metrics(evaluate, pruned=False, raw=False)


def test_bad_input():
  x, labels, _ = _problem()
  with pytest.raises(ValueError, match='labels has 22'):
    evaluation.TestSet(x, labels[:-1], batch_size=7, kind='unroll')
  with pytest.raises(ValueError, match='empty'):
    evaluation.TestSet(x[:0], labels[:0], batch_size=7, kind='unroll')
  with pytest.raises(ValueError, match='kind'):
    evaluation.TestSet(x, labels, batch_size=7, kind='vmap')


def test_evaluator_equals_the_library_evaluate():
  """`TestSet.evaluator` is `gmp_jax.evaluate` on the device-held set."""
  x, labels, params = _problem(3)
  eval_step = gmp_jax.make_eval_step(_apply)
  for kind in ('unroll', 'scan'):
    test = evaluation.TestSet(x, labels, batch_size=7, kind=kind)
    assert test.evaluator(_apply)(params) == gmp_jax.evaluate(
        eval_step, params, x, labels, batch_size=7, kind=kind)


def test_epoch_metrics_count_a_component_at_zero_as_pruned():
  """A learned mean drifted to 1e-5 holds weights the file prunes."""
  x, labels, params = _problem(2)
  mixture = gmp_jax.init_mixture(params, 3, init_std=0.1,
                                 zero_proportion=0.2)
  mixture = mixture.replace(  # pi = (0.2, 0.6, 0.2)
      nonzero_means=jnp.asarray([1e-5, 0.3]),
      mixing_logits=jnp.log(jnp.asarray([0.75, 0.25])))
  state = gmp_jax.create_train_state(params, mixture, gmp_jax.gmp_optimizer())
  test = evaluation.TestSet(x, labels, batch_size=7, kind='unroll')
  out = evaluation.epoch_metrics(test.evaluator(_apply), pruned=True,
                                 raw=False)(state)
  # NumPy: a weight is kept iff the component at 0.3 owns it.
  w = np.concatenate([np.ravel(v) for v in jax.tree.leaves(params)])
  mu = np.array([0.0, 1e-5, 0.3])
  pi = np.asarray(mixture.mixing_proportions, np.float64)
  log = np.log(pi) - (w[:, None] - mu) ** 2 / (2 * 0.1 ** 2)
  kept = np.argmax(log, axis=1) == 2
  assert 0 < kept.mean() < 1 and np.mean(np.argmax(log, 1) == 1) > 0
  assert out['nonzero_fraction'] == pytest.approx(kept.mean())


@pytest.mark.parametrize('merge, want_k', [
    (None, 16), ({'max_components': None}, 17),
    ({'threshold': 0.1, 'max_components': 4}, 4)])
def test_epoch_metrics_merge_as_told(monkeypatch, merge, want_k):
  """`merge` reaches merge_components; None = its defaults (cap 16)."""
  x, labels, params = _problem(1)
  half = np.linspace(0.3, 2.4, 8)
  mixture = gmp_jax.init_mixture(params, 17, init_std=0.01,
                                 zero_proportion=0.5).replace(
      nonzero_means=jnp.asarray(np.concatenate([-half[::-1], half]),
                                jnp.float32))
  state = gmp_jax.create_train_state(params, mixture, gmp_jax.gmp_optimizer())
  test = evaluation.TestSet(x, labels, batch_size=7, kind='unroll')
  real, seen = gmp_jax.merge_components, []

  def spy(m, **kwargs):
    out = real(m, **kwargs)
    seen.append(out.num_components)
    return out

  monkeypatch.setattr(gmp_jax, 'merge_components', spy)
  out = evaluation.epoch_metrics(test.evaluator(_apply), pruned=True,
                                 raw=False, merge=merge)(state)
  assert seen == [want_k]
  q = jax.device_get(gmp_jax.quantize(params, real(mixture, **(merge or {}))))
  assert out['test_pruned_accuracy'] == _numpy_metrics(q, x, labels)[
      'accuracy']


def test_merge_options_follow_the_config():
  """Committed runs' configs pin no cap; `:smoke` has the library's 16."""
  library = inspect.signature(gmp_jax.merge_components).parameters[
      'max_components'].default
  assert library == 16
  for module in (mnist, fashion_mnist, lenet300, lenet5, shakespeare):
    assert evaluation.merge_options(module.get_config()) == {
        'threshold': 0.1, 'max_components': None}, module.__name__
  for module in (mnist, fashion_mnist, lenet300, lenet5):
    assert evaluation.merge_options(module.get_config('smoke'))[
        'max_components'] == library, module.__name__
  config = mnist.get_config('smoke')
  del config.postprocess['max_components']  # A config from before the field.
  assert evaluation.merge_options(config)['max_components'] is None
  for bad in (1, 0, -2):
    config.postprocess.max_components = bad
    with pytest.raises(ValueError, match='postprocess.max_components must '
                       r'be None \(no cap\) or an int >= 2'):
      evaluation.merge_options(config)
