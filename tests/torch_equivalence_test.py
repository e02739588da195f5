"""JAX and the PyTorch reference compute the same losses and gradients.

`benchmarks.torch_reference` is what `benchmarks/train_step.py` times
against; these tests pin it to `gmp_jax` on the same weights and batch.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
import helpers
from experiments.image import models

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec('torch') is None,
    reason='PyTorch is not installed (the bench extra)')

# Imported by the fixture below, not at collection (torch takes seconds of
# CPU to import, in every test process).
torch = ref = None


@pytest.fixture(scope='module', autouse=True)
def _import_torch():
  global torch, ref  # pylint: disable=global-statement
  import torch as torch_module  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  torch, ref = torch_module, torch_reference

TAU = 5e-3
DATASET_SIZE = 60_000
TEMPERATURE = 4.0


@pytest.fixture(scope='module')
def setup():
  model = models.get_model('poster')
  params = models.init_params(model, jax.random.key(0))
  # The published recipe (fixed pi_0: K - 1 mixing logits), as the torch
  # reference implements it.
  mixture = helpers.shared_mixture(params, 17, init_std=0.25,
                                 zero_proportion=0.99)
  # Move away from the symmetric initialisation.
  rng = np.random.default_rng(1)
  mixture = mixture.replace(
      nonzero_means=mixture.nonzero_means + 0.02 * rng.normal(size=16),
      log_precisions=mixture.log_precisions + rng.normal(size=17),
      mixing_logits=mixture.mixing_logits + 0.5 * rng.normal(size=16))
  batch = {'x': rng.random((8, 28, 28, 1), np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32),
           'teacher_logits': (3 * rng.normal(size=(8, 10))).astype(np.float32)}
  return model, params, mixture, batch


def _jax_terms(model, params, mixture, batch):
  def total(p, m):
    logits = model.apply({'params': p}, batch['x'])
    data = gmp_jax.distillation_loss(logits, batch['teacher_logits'],
                                     TEMPERATURE)
    loss, _ = gmp_jax.gmp_objective(data, p, m, tau=TAU,
                                    dataset_size=DATASET_SIZE)
    return loss, data

  (loss, data), grads = jax.jit(jax.value_and_grad(
      total, argnums=(0, 1), has_aux=True))(params, mixture)
  return {'loss': loss, 'data': data,
          'log_prior': gmp_jax.mixture_log_prob(params, mixture),
          'log_hyperprior': gmp_jax.hyperprior_log_prob(mixture),
          'grads': grads}


def _torch_terms(params, mixture, batch):
  net = ref.load_flax_params(ref.PosterNet(), params)
  prior = ref.GaussianMixturePrior.from_jax(mixture)
  objective = ref.Objective(net, prior, tau=TAU, dataset_size=DATASET_SIZE,
                            temperature=TEMPERATURE)
  tb = {'x': torch.from_numpy(batch['x'].transpose(0, 3, 1, 2).copy()),
        'teacher_logits': torch.from_numpy(batch['teacher_logits'])}
  loss, data, _ = objective(tb)
  loss.backward()
  with torch.no_grad():
    weights = list(net.parameters())
    log_prior = ref.mixture_log_prob(
        weights, prior.nonzero_means, prior.log_precisions,
        prior.mixing_logits, prior.zero_proportion)
    log_hyperprior = ref.hyperprior_log_prob(prior.log_precisions)
  return {'loss': loss.item(), 'data': data.item(),
          'log_prior': log_prior.item(),
          'log_hyperprior': log_hyperprior.item(),
          'param_grads': ref.grads_to_flax_layout(net),
          'mixture_grads': {
              'nonzero_means': prior.nonzero_means.grad.numpy(),
              'log_precisions': prior.log_precisions.grad.numpy(),
              'mixing_logits': prior.mixing_logits.grad.numpy()}}


@pytest.fixture(scope='module')
def terms(setup):
  model, params, mixture, batch = setup
  return (_jax_terms(model, params, mixture, batch),
          _torch_terms(params, mixture, batch))


def test_same_function_of_the_inputs(setup):
  model, params, _, batch = setup
  net = ref.load_flax_params(ref.PosterNet(), params)
  want = model.apply({'params': params}, batch['x'])
  got = net(torch.from_numpy(batch['x'].transpose(0, 3, 1, 2).copy()))
  np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-4,
                             atol=1e-5)


def test_losses_agree(terms):
  j, t = terms
  np.testing.assert_allclose(t['data'], j['data'], rtol=1e-5)
  np.testing.assert_allclose(t['log_prior'], j['log_prior'], rtol=1e-5)
  np.testing.assert_allclose(t['log_hyperprior'], j['log_hyperprior'],
                             rtol=1e-5)
  np.testing.assert_allclose(t['loss'], j['loss'], rtol=1e-5)


def test_gradients_agree(terms):
  j, t = terms
  param_grads, mixture_grads = j['grads']
  for layer, leaves in t['param_grads'].items():
    for name, got in leaves.items():
      want = np.asarray(param_grads[layer][name])
      scale = np.max(np.abs(want))
      np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale,
                                 err_msg=f'{layer}/{name}')
  for name, got in t['mixture_grads'].items():
    want = np.asarray(getattr(mixture_grads, name))
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale,
                               err_msg=name)


def test_plain_cross_entropy_agrees(setup):
  model, params, _, batch = setup
  net = ref.load_flax_params(ref.PosterNet(), params)
  objective = ref.Objective(net, None, tau=TAU, dataset_size=DATASET_SIZE,
                            temperature=TEMPERATURE)
  loss, _, complexity = objective(
      {'x': torch.from_numpy(batch['x'].transpose(0, 3, 1, 2).copy()),
       'label': torch.from_numpy(batch['label'].astype(np.int64))})
  assert complexity is None
  want = gmp_jax.cross_entropy_loss(
      model.apply({'params': params}, batch['x']), batch['label'])
  np.testing.assert_allclose(loss.item(), want, rtol=1e-5)


def test_first_adam_step_agrees(setup):
  _, params, mixture, _ = setup
  rng = np.random.default_rng(2)
  grads = jax.tree.map(
      lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype),
      (params, mixture))
  tx = gmp_jax.gmp_optimizer()
  updates, _ = tx.update(grads, tx.init((params, mixture)), (params, mixture))

  net = ref.load_flax_params(ref.PosterNet(), grads[0])  # Grads, same layout.
  net_grads = {n: p.detach().clone() for n, p in net.named_parameters()}
  net = ref.load_flax_params(ref.PosterNet(), params)
  prior = ref.GaussianMixturePrior.from_jax(mixture)
  before = {n: p.detach().clone() for n, p in net.named_parameters()}
  for n, p in net.named_parameters():
    p.grad = net_grads[n]
  for name in ('nonzero_means', 'log_precisions', 'mixing_logits'):
    getattr(prior, name).grad = torch.tensor(
        np.asarray(getattr(grads[1], name)))
  mixture_before = {n: p.detach().clone() for n, p in prior.named_parameters()}
  ref.make_optimizer(net, prior).step()

  for n, p in net.named_parameters():
    delta = (p.detach() - before[n])
    layer, kind = n.split('.')
    want = updates[0][layer]['kernel' if kind == 'weight' else 'bias']
    got = ref.to_flax_layout(n, delta)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=_ulps(before[n]),
                               err_msg=n)
  for n, p in prior.named_parameters():
    np.testing.assert_allclose((p.detach() - mixture_before[n]).numpy(),
                               getattr(updates[1], n), rtol=1e-4,
                               atol=_ulps(mixture_before[n]), err_msg=n)


def _ulps(t, n=4):
  # The deltas are rounded where the parameters are: a few ulps of them.
  return n * np.finfo(np.float32).eps * float(t.abs().max())
