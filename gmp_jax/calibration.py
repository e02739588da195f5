r"""Choosing tau, and watching a retraining: gradient scales and diagnostics.

**The tau rule.** The retraining objective (poster eq. 1) is
:math:`\ell_{data} + (\tau / N)\,\mathcal L_{complexity}`. Its gradient on
the covered weights has two parts: the data term's :math:`g_d` and the
prior's :math:`(\tau / N) g_c` with :math:`g_c = \nabla_w [-\log p(w)]`.
Their scales depend on the model, the task and the weights' scale (the
prior's on the mixture's widths), so a tau tuned on MNIST means nothing for
a transformer. What transfers is their ratio at the start of retraining,

.. math::

  \rho = \frac{(\tau / N)\, \mathrm{RMS}(g_c)}{\mathrm{RMS}(g_d)},
  \qquad \mathrm{RMS}(g) = \sqrt{\tfrac{1}{n} \textstyle\sum_i g_i^2}

over the n covered weights, :math:`g_d` the gradient of one batch's mean
data loss (what the optimiser sees, noise included, averaged in square over
a few batches). `calibrate_tau` returns the tau that gives a chosen
:math:`\rho`:

.. math:: \tau = \rho\, N\, \mathrm{RMS}(g_d) / \mathrm{RMS}(g_c).

`DEFAULT_RATIO` is the rule's default (BUILD_NOTES, "The tau rule", has the
measurements behind it). N then only needs to be the one the train step
gets: tau and N enter as tau / N.

**Diagnostics.** `diagnose` reports what a retraining cannot show in its
loss: the fraction of covered weights that quantisation keeps, the quantised
model's metrics (with an `evaluate` function) and :math:`\rho`; it warns
when quantisation would prune almost everything or :math:`\rho` is off by
orders of magnitude.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import math
from typing import Any, NamedTuple
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from gmp_jax import prior as prior_lib
from gmp_jax import quantize as quantize_lib

# rho of the tau rule (see the module docstring).
DEFAULT_RATIO = 0.05
# `diagnose` warns outside these.
PRUNE_WARNING = 0.99  # Fraction of covered weights pruned.
RATIO_WARNING = (1e-2, 1e2)


class GradientScales(NamedTuple):
  """RMS over the covered weights of the two gradients of eq. 1.

  Attributes:
    data_rms: of the data loss's gradient, root-mean-square over batches.
    prior_rms: of :math:`\\nabla_w[-\\log p(w)]` (tau / N = 1).
    num_weights: the covered weights n.
  """
  data_rms: float
  prior_rms: float
  num_weights: int

  def ratio(self, tau: float, dataset_size: int) -> float:
    """rho at this tau and N: (tau / N) prior_rms / data_rms."""
    if self.data_rms == 0.0:
      return math.inf
    return tau / dataset_size * self.prior_rms / self.data_rms


def _covered_sq_sum(tree, mixture) -> jax.Array:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
             for x in prior_lib.mixture_leaves(tree, mixture))


def gradient_scales(data_loss_fn: Callable[[Any, Any], jax.Array], params,
                    mixture: prior_lib.GaussianMixture,
                    batches: Iterable[Any]) -> GradientScales:
  """Measures the data and prior gradient scales at `params`.

  Args:
    data_loss_fn: `(params, batch) -> scalar` mean data loss of one batch
      (the step's data term, e.g. the cross-entropy of the model's logits).
    params: the weights retraining starts from.
    mixture: the initial mixture (`init_mixture(params)`).
    batches: a few training batches (4 to 16 are plenty), each passed to
      `data_loss_fn` as is.

  Raises:
    ValueError: no batch, or a non-finite gradient.
  """
  n = sum(math.prod(s) for _, s, _ in mixture.signature)
  data_grad = jax.jit(lambda p, b: _covered_sq_sum(
      jax.grad(data_loss_fn)(p, b), mixture))
  squares = [float(data_grad(params, b)) for b in batches]
  if not squares:
    raise ValueError('gradient_scales needs at least one batch.')
  prior_sq = float(jax.jit(lambda p: _covered_sq_sum(jax.grad(
      lambda q: -prior_lib.mixture_log_prob(q, mixture))(p), mixture))(
          params))
  if not all(math.isfinite(s) for s in (*squares, prior_sq)):
    raise ValueError('A gradient is not finite; check the model and the '
                     'batches.')
  return GradientScales(data_rms=math.sqrt(np.mean(squares) / max(n, 1)),
                        prior_rms=math.sqrt(prior_sq / max(n, 1)),
                        num_weights=n)


def calibrate_tau(scales: GradientScales, *, dataset_size: int,
                  ratio: float = DEFAULT_RATIO) -> float:
  """The tau at which the prior's gradient is `ratio` times the data's.

  .. math:: \\tau = \\rho\\, N\\, \\mathrm{RMS}(g_d) / \\mathrm{RMS}(g_c)

  Args:
    scales: from `gradient_scales`.
    dataset_size: N, as the train step gets it.
    ratio: rho > 0.

  Raises:
    ValueError: ratio <= 0, N <= 0, or a zero prior gradient (the weights
      already sit on the means).
  """
  if not (isinstance(ratio, (int, float)) and ratio > 0
          and math.isfinite(ratio)):
    raise ValueError(f'ratio must be a finite number > 0, got {ratio!r}.')
  if not (isinstance(dataset_size, (int, np.integer)) and dataset_size > 0):
    raise ValueError(f'dataset_size must be a positive int, got '
                     f'{dataset_size!r}.')
  if scales.prior_rms == 0.0:
    raise ValueError('The prior gradient is zero: there is nothing to '
                     'calibrate against.')
  return float(ratio * dataset_size * scales.data_rms / scales.prior_rms)


class Diagnostics(NamedTuple):
  """What `diagnose` found.

  Attributes:
    nonzero_fraction: covered weights that `quantize` keeps.
    quantized_metrics: `evaluate(quantize(params, mixture))`, or None.
    grad_ratio: rho, or None without `scales` and tau.
    warnings: the warning messages issued.
  """
  nonzero_fraction: float
  quantized_metrics: Mapping[str, float] | None
  grad_ratio: float | None
  warnings: tuple[str, ...]


def diagnose(params, mixture: prior_lib.GaussianMixture, *,
             evaluate: Callable[[Any], Mapping[str, float]] | None = None,
             scales: GradientScales | None = None,
             tau: float | None = None, dataset_size: int | None = None,
             warn: bool = True) -> Diagnostics:
  """Quantised metrics, kept fraction and gradient ratio, with warnings.

  Call it before retraining (on the teacher's weights and the initial
  mixture) and at epoch ends. It warns (`UserWarning`) when quantising would
  prune more than `PRUNE_WARNING` of the covered weights, or (a mixture
  without `leaf_scales`) of one covered leaf, and when rho lies outside
  `RATIO_WARNING`.

  Args:
    params: the current weights.
    mixture: the current mixture.
    evaluate: `params -> metrics` of a whole tree (e.g. accuracy or bits per
      byte on held-out data); called on the quantised weights.
    scales: `gradient_scales` at these weights, for rho.
    tau, dataset_size: the step's, for rho.
    warn: issue the warnings (they are returned either way).
  """
  quantized = quantize_lib.quantize(params, mixture)
  covered = prior_lib.mixture_leaves(quantized, mixture)
  kept_by_leaf = [int(jnp.count_nonzero(x)) for x in covered]
  total = sum(int(x.size) for x in covered)
  kept = sum(kept_by_leaf)
  fraction = kept / total if total else 0.0
  ratio = None
  if scales is not None and tau is not None and dataset_size is not None:
    ratio = scales.ratio(tau, dataset_size)
  messages = []
  if total and 1.0 - fraction > PRUNE_WARNING:
    pruned = (f'quantize would prune {100 * (1 - fraction):.2f}% of the '
              'covered weights')
    if mixture.zero_proportion is not None:
      # The published recipe starts every weight in the zero component.
      messages.append(
          f'{pruned}, as expected at the start under a fixed pi_0 = '
          f'{mixture.zero_proportion:g} (the published recipe: retraining '
          'draws out the weights the data needs). If the quantised model '
          'stays poor after retraining, the mixture is too wide for these '
          'weights: init_mixture\'s defaults start from their statistics.')
    else:
      messages.append(
          f'{pruned}; the mixture is too wide or pi_0 too large for these '
          'weights (init_mixture\'s defaults start from their statistics).')
  elif total and mixture.leaf_scales is None:
    # One mixture over leaves of different scales prunes the small ones;
    # only leaves holding a tenth of the weights or more are reported.
    lost = [p for (p, _, _), x, k in zip(mixture.signature, covered,
                                         kept_by_leaf)
            if x.size >= 0.1 * total and 1.0 - k / x.size > PRUNE_WARNING]
    if lost:
      messages.append(
          f'quantize would prune more than {100 * PRUNE_WARNING:g}% of leaf '
          f'{lost[0]}' + (f' and {len(lost) - 1} more' if len(lost) > 1
                          else '') + ' while keeping '
          f'{100 * fraction:.2f}% of all covered weights. If the leaves\' '
          'scales differ, init_mixture\'s default leaf_scale=\'rms\' puts '
          'the prior on each leaf\'s weights over its own scale.')
  if ratio is not None and not RATIO_WARNING[0] <= ratio <= RATIO_WARNING[1]:
    messages.append(
        f'The prior gradient is {ratio:.3g} times the data gradient; '
        f'outside [{RATIO_WARNING[0]:g}, {RATIO_WARNING[1]:g}] one term '
        'drowns the other. gmp_jax.calibrate_tau picks tau for a ratio.')
  if warn:
    for m in messages:
      warnings.warn(m, UserWarning, stacklevel=2)
  metrics = None if evaluate is None else dict(evaluate(quantized))
  return Diagnostics(fraction, metrics, ratio, tuple(messages))


__all__ = ('DEFAULT_RATIO', 'Diagnostics', 'GradientScales', 'calibrate_tau',
           'diagnose', 'gradient_scales')
