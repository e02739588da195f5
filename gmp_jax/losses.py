"""Data losses and the soft weight-sharing objective (poster eqs. 1 and 2).

All losses are pure functions of arrays, so they compose into any jitted
train step. Each returns the mean over the batch; their normalisations are
given in the docstrings because tau must be tuned against them.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from gmp_jax import prior as prior_lib


def check_temperature(temperature) -> None:
  """Raises ValueError unless the temperature T is > 0.

  Python numbers and concrete arrays are checked; tracers pass unchecked.
  """
  if isinstance(temperature, numbers.Real) and not temperature > 0:
    raise ValueError(f'temperature must be > 0, got {temperature!r}.')
  try:
    value = float(temperature)  # Concrete arrays; tracers raise below.
  except (TypeError, jax.errors.ConcretizationTypeError):
    return
  if not value > 0:
    raise ValueError(f'temperature must be > 0, got {value!r}.')


def _check_same_shape(student_logits, teacher_logits) -> None:
  if jnp.shape(student_logits) != jnp.shape(teacher_logits):
    raise ValueError(
        f'student_logits and teacher_logits must have the same shape, got '
        f'{jnp.shape(student_logits)} and {jnp.shape(teacher_logits)}.')


def tempered_softmax(logits: jax.Array, temperature) -> jax.Array:
  """softmax(z / T) over the last axis (poster eq. 2)."""
  check_temperature(temperature)
  return jax.nn.softmax(logits / temperature, axis=-1)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature) -> jax.Array:
  """Teacher-student MSE between temperature-softened outputs (eqs. 1, 2).

  .. math::

    \\hat y_i = \\frac{\\exp(z_i / T)}{\\sum_j \\exp(z_j / T)}, \\qquad
    \\ell = \\frac{1}{B C} \\sum_{b=1}^{B} \\sum_{c=1}^{C}
           (\\hat y^S_{bc} - \\hat y^T_{bc})^2

  Normalisation: the mean over every element, i.e. over the C classes and
  the B examples (Keras' ``mse``; the poster's 1/n). Leading axes other
  than the class axis are all averaged.

  Args:
    student_logits: (..., C) student logits.
    teacher_logits: (..., C) teacher logits, same shape. No gradient flows
      into them.
    temperature: T > 0; larger T softens both distributions.

  Returns:
    A scalar.

  Raises:
    ValueError: T <= 0 or the logits' shapes differ.

  References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    2015. https://arxiv.org/abs/1503.02531
  """
  _check_same_shape(student_logits, teacher_logits)
  p_s = tempered_softmax(student_logits, temperature)
  p_t = jax.lax.stop_gradient(tempered_softmax(teacher_logits, temperature))
  return jnp.mean(jnp.square(p_s - p_t))


def kl_distillation_loss(student_logits: jax.Array,
                         teacher_logits: jax.Array, temperature) -> jax.Array:
  """Hinton's distillation: T^2 KL(p_T || p_S) at temperature T.

  .. math::

    \\ell = \\frac{T^2}{B} \\sum_b \\sum_c \\hat y^T_{bc}
           (\\log \\hat y^T_{bc} - \\log \\hat y^S_{bc})

  The T^2 factor keeps gradient magnitudes comparable across temperatures.
  Normalisation: summed over classes, averaged over examples.

  References:
    Hinton, Vinyals & Dean, 2015. https://arxiv.org/abs/1503.02531
  """
  _check_same_shape(student_logits, teacher_logits)
  check_temperature(temperature)
  log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  log_p_t = jax.lax.stop_gradient(
      jax.nn.log_softmax(teacher_logits / temperature, axis=-1))
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return temperature**2 * jnp.mean(kl)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy with integer labels, averaged over examples."""
  if jnp.shape(logits)[:-1] != jnp.shape(labels):
    raise ValueError(
        f'labels of shape {jnp.shape(labels)} do not match logits of shape '
        f'{jnp.shape(logits)}; expected integer labels of shape '
        f'{jnp.shape(logits)[:-1]}.')
  log_p = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32),
                               axis=-1)
  return -jnp.mean(picked)


def mse_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over every element (layer-wise distillation)."""
  _check_same_shape(prediction, target)
  return jnp.mean(jnp.square(prediction - jax.lax.stop_gradient(target)))


def gmp_objective(data_loss: jax.Array, params, mixture, *, tau: float,
                  dataset_size: int,
                  hyperpriors: prior_lib.Hyperpriors | None = (
                      prior_lib.Hyperpriors())
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Poster eq. 1: data loss plus tau times the complexity loss.

  .. math::

    \\mathcal L = \\ell_{data} + \\frac{\\tau}{N}
      \\Big[-\\sum_i \\log \\sum_k \\pi_k \\mathcal N(w_i|\\mu_k,\\sigma_k^2)
            - \\log p(\\lambda, \\pi_0)\\Big]

  Normalisation: `data_loss` is a per-example mean, so the complexity term
  is divided by the dataset size N. This makes the sum over the epoch equal
  to the variational free energy of Ullrich et al. (sum of data terms plus
  tau times the prior), and keeps tau independent of the batch size.

  Args:
    data_loss: scalar per-example data loss (distillation, cross-entropy, ...).
    params: the weights the mixture covers.
    mixture: a `GaussianMixture`.
    tau: trade-off between accuracy and compression (>= 0).
    dataset_size: N, the number of training examples (> 0).
    hyperpriors: Gamma/Beta hyperpriors, or None.

  Returns:
    `(loss, aux)` where aux holds `data_loss` and `complexity_loss`.
  """
  if isinstance(tau, numbers.Real) and tau < 0:
    raise ValueError(f'tau must be >= 0, got {tau!r}.')
  if isinstance(dataset_size, numbers.Real) and not dataset_size > 0:
    raise ValueError(f'dataset_size must be > 0, got {dataset_size!r}.')
  complexity = prior_lib.complexity_loss(params, mixture,
                                         hyperpriors=hyperpriors)
  loss = data_loss + (tau / dataset_size) * complexity
  return loss, {'data_loss': data_loss, 'complexity_loss': complexity}
