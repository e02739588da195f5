"""Optimiser with separate partitions for weights and mixture parameters.

The optimised tree is `(params, mixture)`. `optax.partition` gives each of
four groups its own transformation: the network weights, the non-zero means,
the log-precisions and the mixing logits.

Default learning rates are those of the published recipe (Adam; 5e-4 for
weights, 1e-4 for means, 3e-3 for log-precisions and for mixing logits):
Ullrich, Meeds & Welling, "Soft Weight-Sharing for Neural Network
Compression", ICLR 2017, and their companion tutorial.

`promotion_safe` and `apply_optimizer` are how every train step runs an
optax transformation, so that it also works where dtype promotion is
'strict'.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from gmp_jax import prior as prior_lib

WEIGHTS = 'weights'
MEANS = 'means'
LOG_PRECISIONS = 'log_precisions'
MIXING = 'mixing'
LABELS = (WEIGHTS, MEANS, LOG_PRECISIONS, MIXING)

ScalarOrSchedule = float | optax.Schedule


def partition_labels(tree):
  """Labels for a `(params, mixture)` tree, one of `LABELS` per leaf."""
  params, mixture = tree
  if not isinstance(mixture, prior_lib.GaussianMixture):
    raise TypeError('Expected a (params, GaussianMixture) tuple, got a '
                    f'{type(mixture).__name__} as second element.')
  return (jax.tree.map(lambda _: WEIGHTS, params),
          mixture.replace(nonzero_means=MEANS, log_precisions=LOG_PRECISIONS,
                          mixing_logits=MIXING))


def promotion_safe(tx: optax.GradientTransformation
                   ) -> optax.GradientTransformationExtraArgs:
  """`tx` traced under standard dtype promotion.

  optax's transformations rely on implicit promotion (Adam's bias
  correction raises a Python float to an int32 step count), which raises
  under `jax_numpy_dtype_promotion='strict'`. Tracing them under the
  standard rules keeps the optimiser usable by code that runs strict.
  """

  def init_fn(params):
    with jax.numpy_dtype_promotion('standard'):
      return tx.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    with jax.numpy_dtype_promotion('standard'):
      if isinstance(tx, optax.GradientTransformationExtraArgs):
        return tx.update(updates, state, params, **extra_args)
      return tx.update(updates, state, params)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def apply_optimizer(tx: optax.GradientTransformation, grads, opt_state,
                    params):
  """`(params, opt_state)` after one update of `tx` with `grads`.

  .. math:: (u, s') = \\mathrm{tx.update}(g, s, w), \\qquad w' = w + u

  The update is traced under standard promotion (`promotion_safe`).
  """
  updates, opt_state = promotion_safe(tx).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def gmp_optimizer(*,
                  weights: ScalarOrSchedule = 5e-4,
                  means: ScalarOrSchedule = 1e-4,
                  log_precisions: ScalarOrSchedule = 3e-3,
                  mixing: ScalarOrSchedule = 3e-3,
                  make: Callable[[ScalarOrSchedule],
                                 optax.GradientTransformation] = optax.adam,
                  weights_tx: optax.GradientTransformation | None = None,
                  ) -> optax.GradientTransformation:
  """Builds `optax.partition` over `(params, mixture)`.

  Args:
    weights: learning rate (or schedule) of the network weights.
    means: learning rate of the non-zero component means.
    log_precisions: learning rate of the log-precisions log(1/sigma^2).
    mixing: learning rate of the mixing logits.
    make: `learning_rate -> GradientTransformation`, Adam by default.
    weights_tx: a complete transformation for the weights (for example with
      clipping or weight decay); overrides `weights` and `make` for them.

  Returns:
    An optax transformation to `init` on `(params, mixture)`. A learning
    rate of 0 freezes its group. It traces optax under standard dtype
    promotion, so it also works where `jax_numpy_dtype_promotion` is
    'strict'.
  """
  for name, lr in (('weights', weights), ('means', means),
                   ('log_precisions', log_precisions), ('mixing', mixing)):
    if isinstance(lr, (int, float)) and lr < 0:
      raise ValueError(f'learning rate {name} must be >= 0, got {lr!r}.')
  transforms = {
      WEIGHTS: weights_tx if weights_tx is not None else make(weights),
      MEANS: make(means),
      LOG_PRECISIONS: make(log_precisions),
      MIXING: make(mixing),
  }
  return promotion_safe(optax.partition(transforms, partition_labels))
