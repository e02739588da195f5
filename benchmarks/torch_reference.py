"""The poster network and the soft weight-sharing objective in PyTorch.

A reference written the way a PyTorch user would write it: an `nn.Module`
for the network (NCHW, `F.max_pool2d`), the mixture prior as a module whose
log-likelihood is a dense `torch.logsumexp` over (weights, K), and `Adam`
with one parameter group per learning rate. It computes the same
mathematics as `gmp_jax` (poster eqs. 1 and 2, the Gamma hyperpriors and
the learning rates of `gmp_jax.gmp_optimizer`), so the benchmark compares
like with like and `tests/torch_equivalence_test.py` can check losses and
gradients against JAX on the same weights.

PyTorch is an optional extra: `pip install 'gmp_jax[bench]'` (CPU build,
`torch==2.13.0`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gmp_jax.prior import VARIANCE_CEILING
from gmp_jax.prior import VARIANCE_FLOOR

# Same clipping of the log-precisions as gmp_jax.prior.
_LOG_PRECISION_MAX = -math.log(VARIANCE_FLOOR)
_LOG_PRECISION_MIN = -math.log(VARIANCE_CEILING)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class PosterNet(nn.Module):
  """conv 25@5x5 -> pool -> conv 50@3x3 -> pool -> dense 500 -> dense 10."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 25, 5)
    self.conv2 = nn.Conv2d(25, 50, 3)
    self.dense1 = nn.Linear(1250, 500)
    self.dense2 = nn.Linear(500, 10)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Logits (N, 10) for NCHW images (N, 1, 28, 28)."""
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    x = F.relu(self.dense1(torch.flatten(x, 1)))
    return self.dense2(x)


def load_flax_params(model: PosterNet, params: Mapping) -> PosterNet:
  """Copies Flax `PosterNet` parameters into the PyTorch model.

  Flax stores conv kernels HWIO and dense kernels (in, out), and flattens
  NHWC activations in (h, w, c) order; PyTorch uses OIHW, (out, in) and
  (c, h, w). The first dense kernel's rows are permuted accordingly, so
  both models compute the same function.
  """
  def t(x):
    return torch.from_numpy(np.array(x, dtype=np.float32))

  with torch.no_grad():
    for name in ('conv1', 'conv2'):
      layer = getattr(model, name)
      layer.weight.copy_(t(params[name]['kernel']).permute(3, 2, 0, 1))
      layer.bias.copy_(t(params[name]['bias']))
    k1 = np.asarray(params['dense1']['kernel'], np.float32)
    k1 = k1.reshape(5, 5, 50, 500).transpose(2, 0, 1, 3).reshape(1250, 500)
    model.dense1.weight.copy_(t(k1).T)
    model.dense1.bias.copy_(t(params['dense1']['bias']))
    model.dense2.weight.copy_(t(params['dense2']['kernel']).T)
    model.dense2.bias.copy_(t(params['dense2']['bias']))
  return model


def to_flax_layout(name: str, value: torch.Tensor) -> np.ndarray:
  """A `PosterNet` parameter (by its `named_parameters` name) in Flax layout.

  The inverse of `load_flax_params` for one array, e.g. a gradient.
  """
  layer, kind = name.split('.')
  v = value.detach().numpy()
  if kind == 'bias':
    return v
  if layer.startswith('conv'):
    return v.transpose(2, 3, 1, 0)
  if layer == 'dense1':
    return v.T.reshape(50, 5, 5, 500).transpose(1, 2, 0, 3).reshape(1250, 500)
  return v.T


def grads_to_flax_layout(model: PosterNet) -> dict:
  """The model's `.grad`s as NumPy arrays in the Flax parameter layout."""
  grads = {}
  for name, p in model.named_parameters():
    layer, kind = name.split('.')
    grads.setdefault(layer, {})['kernel' if kind == 'weight' else 'bias'] = (
        to_flax_layout(name, p.grad))
  return grads


class GaussianMixturePrior(nn.Module):
  """K-component mixture with component 0 fixed at mean 0 and fixed pi_0.

  Parameters mirror `gmp_jax.GaussianMixture`: `nonzero_means` (K-1,),
  `log_precisions` (K,) and `mixing_logits` (K-1,).
  """

  def __init__(self, nonzero_means, log_precisions, mixing_logits, *,
               zero_proportion: float = 0.99):
    super().__init__()
    def param(x):
      return nn.Parameter(torch.tensor(np.asarray(x, np.float32)))

    self.nonzero_means = param(nonzero_means)
    self.log_precisions = param(log_precisions)
    self.mixing_logits = param(mixing_logits)
    self.zero_proportion = float(zero_proportion)

  @classmethod
  def from_jax(cls, mixture) -> GaussianMixturePrior:
    """Builds the prior from a `gmp_jax.GaussianMixture` with a fixed pi_0."""
    if mixture.zero_proportion is None:
      raise ValueError('The reference implements a fixed pi_0 only.')
    return cls(mixture.nonzero_means, mixture.log_precisions,
               mixture.mixing_logits, zero_proportion=mixture.zero_proportion)


def mixture_log_prob(weights: Sequence[torch.Tensor], nonzero_means,
                     log_precisions, mixing_logits,
                     zero_proportion: float) -> torch.Tensor:
  """sum_i log sum_k pi_k N(w_i | mu_k, 1 / lambda_k) over all weights."""
  means = torch.cat([nonzero_means.new_zeros(1), nonzero_means])
  log_lam = log_precisions.clamp(_LOG_PRECISION_MIN, _LOG_PRECISION_MAX)
  log_pi = torch.cat([
      log_precisions.new_full((1,), math.log(zero_proportion)),
      math.log1p(-zero_proportion) + F.log_softmax(mixing_logits, 0)])
  w = torch.cat([p.reshape(-1) for p in weights])
  d = w[:, None] - means
  log_comp = log_pi + 0.5 * log_lam - _HALF_LOG_2PI - 0.5 * log_lam.exp() * d * d
  return torch.logsumexp(log_comp, dim=1).sum()


def hyperprior_log_prob(log_precisions, *, zero_gamma=(5000.0, 2.0),
                        gamma=(250.0, 0.1)) -> torch.Tensor:
  """Gamma hyperpriors on the precisions, as `gmp_jax.hyperprior_log_prob`."""
  log_lam = log_precisions.clamp(_LOG_PRECISION_MIN, _LOG_PRECISION_MAX)
  lam = log_lam.exp()
  a0, b0 = zero_gamma
  a, b = gamma
  return ((a0 - 1.0) * log_lam[0] - b0 * lam[0]
          + ((a - 1.0) * log_lam[1:] - b * lam[1:]).sum())


def complexity_loss(weights: Sequence[torch.Tensor], nonzero_means,
                    log_precisions, mixing_logits,
                    zero_proportion: float) -> torch.Tensor:
  """Negative log prior plus negative log hyperprior (default Gammas)."""
  return -(mixture_log_prob(weights, nonzero_means, log_precisions,
                            mixing_logits, zero_proportion)
           + hyperprior_log_prob(log_precisions))


def distillation_loss(student_logits, teacher_logits, temperature):
  """Mean over all elements of (softmax(s/T) - softmax(t/T))^2 (eq. 2)."""
  return F.mse_loss(F.softmax(student_logits / temperature, dim=-1),
                    F.softmax(teacher_logits / temperature, dim=-1))


class Objective:
  """Poster eq. 1: data loss + tau / N * complexity loss.

  Args:
    model: the network.
    prior: a `GaussianMixturePrior`, or None for the plain data loss.
    tau: prior strength.
    dataset_size: N.
    temperature: distillation temperature.
    compile_prior: wrap the complexity loss in `torch.compile`.
  """

  def __init__(self, model: nn.Module, prior: GaussianMixturePrior | None,
               *, tau: float, dataset_size: int, temperature: float,
               compile_prior: bool = False):
    self.model = model
    self.prior = prior
    self.scale = tau / dataset_size
    self.temperature = temperature
    self.complexity = (torch.compile(complexity_loss) if compile_prior
                       else complexity_loss)

  def __call__(self, batch: Mapping[str, torch.Tensor]):
    """Returns (loss, data_loss, complexity_loss or None)."""
    logits = self.model(batch['x'])
    if 'teacher_logits' in batch:
      data = distillation_loss(logits, batch['teacher_logits'],
                               self.temperature)
    else:
      data = F.cross_entropy(logits, batch['label'])
    if self.prior is None:
      return data, data, None
    p = self.prior
    complexity = self.complexity(
        list(self.model.parameters()), p.nonzero_means, p.log_precisions,
        p.mixing_logits, p.zero_proportion)
    return data + self.scale * complexity, data, complexity


def make_optimizer(model: nn.Module, prior: GaussianMixturePrior | None
                   ) -> torch.optim.Optimizer:
  """Adam with `gmp_jax.gmp_optimizer`'s learning rates."""
  groups = [{'params': list(model.parameters()), 'lr': 5e-4}]
  if prior is not None:
    groups += [{'params': [prior.nonzero_means], 'lr': 1e-4},
               {'params': [prior.log_precisions], 'lr': 3e-3},
               {'params': [prior.mixing_logits], 'lr': 3e-3}]
  return torch.optim.Adam(groups)


def train_step(objective: Objective, optimizer: torch.optim.Optimizer,
               batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
  """One optimiser step; returns the (detached) loss."""
  optimizer.zero_grad(set_to_none=True)
  loss, _, _ = objective(batch)
  loss.backward()
  optimizer.step()
  return loss.detach()
