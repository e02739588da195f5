"""Data losses and the soft weight-sharing objective (poster eqs. 1 and 2).

All losses are pure functions of arrays, so they compose into any jitted
train step. Each returns the mean over the batch; their normalisations are
given in the docstrings because tau must be tuned against them.

Logits may carry sequence axes: `(B, T, V)` logits go with `(B, T)` labels
(or `(B, T, V)` teacher logits), and every loss averages over all the
leading axes, i.e. over the B T tokens.

`LossOptions` holds the data-loss arguments the three train steps share
(`make_train_step`, `make_codebook_step`, `make_straight_through_step`,
each as `loss=LossOptions(...)`), and `LossOptions.data_loss()` builds
their data term from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmp_jax import prior as prior_lib

Batch = Mapping[str, jax.Array]
DataLossFn = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]
DISTILLATIONS = ('mse', 'kl')


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


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _real_scalar(name: str, value, what: str):
  """`value` as a concrete float, None for a tracer; TypeError otherwise."""
  if isinstance(value, (bool, np.bool_)) or not (
      isinstance(value, numbers.Real) or hasattr(value, 'dtype')):
    raise TypeError(f'{name} must be {what}, got {type(value).__name__} '
                    f'{value!r}.')
  if hasattr(value, 'dtype'):
    dtype = jnp.result_type(value)
    if not (jnp.issubdtype(dtype, jnp.integer)
            or jnp.issubdtype(dtype, jnp.floating)) or jnp.ndim(value) != 0:
      raise TypeError(f'{name} must be {what}, got an array of shape '
                      f'{jnp.shape(value)} and dtype {dtype}.')
    if not _is_concrete(value):
      return None
  return float(value)


def check_tau(tau) -> None:
  """Raises unless tau is a real number >= 0 (tracers: type only).

  Raises:
    TypeError: tau is not a real scalar (e.g. a string, a bool or None).
    ValueError: tau is negative or NaN.
  """
  value = _real_scalar('tau', tau, 'a real number >= 0 (the prior strength)')
  if value is not None and not value >= 0:
    raise ValueError(f'tau must be >= 0, got {tau!r}.')


def check_dataset_size(dataset_size) -> None:
  """Raises unless N is a positive integer (tracers: type only).

  Raises:
    TypeError: N is not an integer (a float, a string, a bool, ...).
    ValueError: N <= 0.
  """
  what = ('a positive int (N, the number of examples, or of tokens, the data '
          'loss averages over in one epoch)')
  value = _real_scalar('dataset_size', dataset_size, what)
  integral = (isinstance(dataset_size, numbers.Integral) if not hasattr(
      dataset_size, 'dtype') else jnp.issubdtype(jnp.result_type(
          dataset_size), jnp.integer))
  if not integral:
    raise TypeError(f'dataset_size must be {what}, got '
                    f'{type(dataset_size).__name__} {dataset_size!r}.')
  if value is not None and not value > 0:
    raise ValueError(f'dataset_size must be > 0, got {dataset_size!r}.')


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


def check_labels(logits, labels) -> None:
  """Raises ValueError unless `labels` has the shape of `logits[..., 0]`.

  `(B, V)` logits take `(B,)` labels, `(B, T, V)` logits `(B, T)` labels;
  the error names the axis (batch or sequence) that differs.
  """
  want, got = tuple(jnp.shape(logits)[:-1]), tuple(jnp.shape(labels))
  if want == got:
    return
  where = ''
  if len(want) == len(got):
    axis = next(i for i, (a, b) in enumerate(zip(want, got)) if a != b)
    where = (f' (axis {axis}, the {"batch" if axis == 0 else "sequence"} '
             f'axis: {want[axis]} logits vs {got[axis]} labels)')
  raise ValueError(
      f'labels of shape {got} do not match logits of shape '
      f'{tuple(jnp.shape(logits))}{where}; expected integer labels of shape '
      f'{want}.')


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy with integer labels, averaged over examples.

  With `(B, T, V)` logits and `(B, T)` labels the mean is over the B T
  tokens.

  Raises:
    ValueError: the labels' shape is not the logits' without the last axis.
  """
  check_labels(logits, labels)
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

  Normalisation: the objective is the data loss's mean plus tau times the
  complexity over N, where N counts the terms that mean runs over in one
  epoch. `data_loss` is a per-example mean, so N is the number of training
  examples; the sum over the epoch is then the variational free energy of
  Ullrich et al. (sum of data terms plus tau times the prior), and tau does
  not depend on the batch size. For sequences the losses average over
  tokens (`(B, T, V)` logits, `(B, T)` labels), so a token-level language
  model passes N = the number of training tokens (sequences times tokens
  each), and tau keeps the same meaning per token.

  Args:
    data_loss: scalar per-example data loss (distillation, cross-entropy, ...).
    params: the weights the mixture covers.
    mixture: a `GaussianMixture`.
    tau: trade-off between accuracy and compression, a real number >= 0.
    dataset_size: N, a positive int: the number of training examples (of
      tokens, for token-level losses).
    hyperpriors: Gamma/Beta hyperpriors, or None.

  Returns:
    `(loss, aux)` where aux holds `data_loss` and `complexity_loss`.

  Raises:
    TypeError: tau is not a real number, or N not an int.
    ValueError: tau < 0 (or NaN), or N <= 0.
  """
  check_tau(tau)
  check_dataset_size(dataset_size)
  complexity = prior_lib.complexity_loss(params, mixture,
                                         hyperpriors=hyperpriors)
  loss = data_loss + (tau / dataset_size) * complexity
  return loss, {'data_loss': data_loss, 'complexity_loss': complexity}


class LossOptions(NamedTuple):
  """The data-loss arguments every train step takes.

  `make_train_step`, `make_codebook_step` and `make_straight_through_step`
  take them as `loss=LossOptions(...)`.

  Attributes:
    temperature: T > 0 of the distillation softmax.
    distillation: 'kl' (Hinton's T^2 KL, the default) or 'mse' (poster
      eq. 2). Eq. 2's MSE between softmaxes shrinks with the number of
      classes (5.2e-5 against 1.0 for KL on standard-normal (4, 8, 256)
      logits at T = 1), so it suits few classes (the MNIST configs pin it).
    distillation_weight: weight of the distillation term.
    label_weight: weight of the label cross-entropy when a teacher is also
      present (alone, the cross-entropy has weight 1).
    data_loss_fn: a custom `(outputs, batch) -> (loss, metrics)` replacing
      the default data term (the other fields are then unused but still
      checked).
  """
  temperature: float = 1.0
  distillation: str = 'kl'
  distillation_weight: float = 1.0
  label_weight: float = 1.0
  data_loss_fn: DataLossFn | None = None

  def check(self) -> None:
    """Raises ValueError for an unknown distillation or T <= 0."""
    if self.distillation not in DISTILLATIONS:
      raise ValueError(
          f"distillation must be 'mse' or 'kl', got {self.distillation!r}.")
    check_temperature(self.temperature)

  def data_loss(self) -> DataLossFn:
    """The data term `(outputs, batch) -> (loss, metrics)`.

    `data_loss_fn` if given; else `distillation_weight` times the 'mse'
    (poster eq. 2) or 'kl' distillation term on `batch['teacher_logits']` at
    `temperature`, plus the label cross-entropy on `batch['label']`
    (weighted by `label_weight` next to a teacher, by 1 alone):

    .. math::

      \\ell = w_d\\,\\ell_{distill}(z, z^T; T) + w_l\\,\\ell_{CE}(z, y)

    Raises:
      ValueError: from `check`.
    """
    self.check()
    if self.data_loss_fn is not None:
      return self.data_loss_fn
    return _default_data_loss(self)


def _default_data_loss(options: LossOptions) -> DataLossFn:
  """`LossOptions.data_loss` without a `data_loss_fn` (options checked)."""
  distill_fn = {'mse': distillation_loss,
                'kl': kl_distillation_loss}[options.distillation]
  temperature = options.temperature
  distillation_weight = options.distillation_weight
  label_weight = options.label_weight

  def data_loss_fn(logits, batch):
    has_teacher = 'teacher_logits' in batch
    has_label = 'label' in batch
    if not (has_teacher or has_label):
      raise ValueError(
          "The batch needs 'label', 'teacher_logits' or both; it has keys "
          f'{sorted(batch)}.')
    metrics, loss = {}, 0.0
    if has_teacher:
      d = distill_fn(logits, batch['teacher_logits'], temperature)
      metrics['distillation_loss'] = d
      loss = loss + distillation_weight * d
    if has_label:
      ce = cross_entropy_loss(logits, batch['label'])
      metrics['cross_entropy'] = ce
      metrics['accuracy'] = jnp.mean(
          jnp.argmax(logits, -1) == batch['label'])
      loss = loss + (label_weight if has_teacher else 1.0) * ce
    return loss, metrics

  return data_loss_fn
