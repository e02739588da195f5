"""Retraining with the mixture prior: `TrainState` and `make_train_step`.

`make_train_step` turns any `apply_fn(params, x) -> outputs` into a pure,
un-jitted `(state, batch) -> (state, metrics)` step; `compile_step` jits it,
`make_multi_step` runs several per call. The batch is a dict; the keys
present choose the data loss (`LossOptions.data_loss`):

* ``{'x', 'label'}``: label cross-entropy;
* ``{'x', 'teacher_logits'}``: teacher-student distillation;
* ``{'x', 'label', 'teacher_logits'}``: both, weighted.

A custom `LossOptions(data_loss_fn=...)`, `(outputs, batch) -> (loss,
metrics)`, replaces these (layer-wise distillation uses it). The step contains no `pmap` and no device
placement, so inputs sharded with `jax.sharding.NamedSharding` run unchanged
and the output follows the input shardings.

Models with state (BatchNorm statistics, dropout) pass `stateful=True` and an
`apply_fn(params, model_state, x, *, train, rng) -> (outputs,
new_model_state)`; the state rides in `TrainState.model_state`, outside the
prior and the optimiser, and each step's `rng` is
`jax.random.fold_in(jax.random.key(seed), state.step)`.

  step = compile_step(make_train_step(apply_fn, tx, tau=5e-3,
                                      dataset_size=60_000))
  state, metrics = step(state, {'x': x, 'label': y})

Its peers are `finetune.make_codebook_step` and
`finetune.make_straight_through_step`; all three take the same
`loss=losses.LossOptions(...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gmp_jax import _nonparams
from gmp_jax import losses
from gmp_jax import optim
from gmp_jax import prior as prior_lib

Batch = losses.Batch
DataLossFn = losses.DataLossFn


class TrainState(NamedTuple):
  """Everything a train step updates; a pytree, so it checkpoints as is.

  `model_state` holds a model's non-parameter state (Linen collections such
  as `batch_stats`, an NNX model's `BatchStat` and RNG variables), or None.
  The prior never covers it, the optimiser never updates it and `quantize`
  never sees it; only a `stateful=True` step's `apply_fn` changes it.
  """
  step: jax.Array
  params: Any
  mixture: prior_lib.GaussianMixture
  opt_state: optax.OptState
  model_state: Any = None


def create_train_state(params, mixture: prior_lib.GaussianMixture,
                       optimizer: optax.GradientTransformation, *,
                       model_state: Any = None) -> TrainState:
  """Initial state; the optimiser is built by `gmp_jax.gmp_optimizer`.

  Args:
    params: the trainable parameters (all of them go to the optimiser).
    mixture: from `gmp_jax.init_mixture(params, ...)`.
    optimizer: from `gmp_jax.gmp_optimizer`.
    model_state: the model's non-parameter state, e.g. Linen
      `{'batch_stats': variables['batch_stats']}` or the rest of
      `nnx.split(model, nnx.Param, ...)`; None for a model without state.

  Raises:
    ValueError: the mixture was built for another tree, or `params` holds
      model state (BatchNorm statistics, RNG keys or counters); the error
      names the leaf.
  """
  prior_lib.mixture_leaves(params, mixture)  # Validates the pairing.
  _nonparams.check_no_state_leaves(
      params, what='params',
      hint='Pass model state as create_train_state(..., model_state=...) '
      'and train with make_train_step(..., stateful=True).')
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    mixture=mixture,
                    opt_state=optimizer.init((params, mixture)),
                    model_state=model_state)


def mixture_summary(mixture: prior_lib.GaussianMixture) -> dict[str, Any]:
  return {'means': mixture.means, 'variances': mixture.variances,
          'mixing_proportions': mixture.mixing_proportions}


def make_train_step(apply_fn: Callable[[Any, Any], Any],
                    optimizer: optax.GradientTransformation, *,
                    tau: float | Callable[[jax.Array], jax.Array],
                    dataset_size: int,
                    loss: losses.LossOptions | None = None,
                    hyperpriors: prior_lib.Hyperpriors | None = (
                        prior_lib.Hyperpriors()),
                    use_prior: bool = True,
                    stateful: bool = False,
                    seed: int = 0,
                    grad_ratio: bool = False):
  """Builds a pure `(state, batch) -> (state, metrics)` train step.

  The loss is poster eq. 1 (`gmp_jax.gmp_objective`),

  .. math:: \\mathcal L = \\ell_{data} + \\frac{\\tau}{N}\\,
     \\mathcal L_{complexity},

  with the data loss a mean over the batch's examples (over its tokens for
  `(B, T, V)` logits). The step is not jitted: pass it to `compile_step`
  (or to `make_multi_step` first).

  Args:
    apply_fn: `(params, x) -> outputs`, e.g. `lambda p, x: model.apply(
      {'params': p}, x)`; with `stateful=True`,
      `(params, model_state, x, *, train, rng) -> (outputs, new_model_state)`
      (see `stateful`).
    optimizer: from `gmp_jax.gmp_optimizer`.
    tau: prior strength, a real number >= 0, or a schedule `step -> tau`
      called with `state.step`, e.g. a warm-up
      `optax.linear_schedule(0.0, tau, steps)`.
    dataset_size: N, a positive int: the number of training examples the
      data loss averages over in one epoch. For a token-level language
      model, the number of training tokens (sequences times tokens each).
    loss: the data-loss options (`gmp_jax.LossOptions`: temperature,
      distillation, distillation_weight, label_weight, data_loss_fn).
    hyperpriors: `gmp_jax.Hyperpriors` or None.
    use_prior: False trains on the data loss alone (the mixture stays put).
    stateful: the model has non-parameter state or needs randomness. The
      step calls `apply_fn(params, state.model_state, x, train=True,
      rng=jax.random.fold_in(jax.random.key(seed), state.step))` and stores
      the returned state in `TrainState.model_state` (no gradient flows into
      it). A Linen model, for example::

        def apply_fn(params, model_state, x, *, train, rng):
          return model.apply({'params': params, **model_state}, x,
                             train=train, mutable=list(model_state),
                             rngs={'dropout': rng} if train else {})

      The returned state must have the leaves passed in, with the same
      shapes and dtypes. Ready-made adapters for Flax Linen and NNX are in
      `gmp_jax.flax`.
    seed: seed of the per-step key (stateful steps only).
    grad_ratio: also report `grad_ratio`, the RMS over the covered weights
      of the prior's gradient (tau / N) grad[-log p(w)] over that of the
      rest (the data term's), the rho of `gmp_jax.calibrate_tau`. The step
      then differentiates the data term and the prior apart and adds the
      two gradients, at the cost of one combined gradient.

  Returns:
    The pure step. Metrics hold `loss`, `data_loss`, `complexity_loss`,
    the individual data terms, `accuracy` when labels are present, and the
    mixture's `means`, `variances` and `mixing_proportions`.

  Raises:
    ValueError: unknown `distillation`, T <= 0, N <= 0 or tau < 0. When
      the step is first traced: a stateful `apply_fn` returned state leaves
      that were not passed in (e.g. a Linen collection missing from
      `model_state`), or dropped some; the error names them.
    TypeError: tau not a real number (nor a schedule), or N not an int.
  """
  data_loss_fn = (losses.LossOptions() if loss is None else loss).data_loss()
  losses.check_dataset_size(dataset_size)
  if not callable(tau):
    losses.check_tau(tau)
  tau_at = tau if callable(tau) else lambda step: tau

  def data_fn(params, batch, model_state, rng):
    if stateful:
      outputs, model_state = _nonparams.apply_stateful(
          apply_fn, params, model_state, batch['x'], train=True, rng=rng)
    else:
      outputs = apply_fn(params, batch['x'])
    data_loss, metrics = data_loss_fn(outputs, batch)
    return data_loss, (metrics, model_state)

  def loss_fn(params, mixture, batch, model_state, rng, tau_now):
    data_loss, (metrics, model_state) = data_fn(params, batch, model_state,
                                                rng)
    if use_prior:
      loss, aux = losses.gmp_objective(
          data_loss, params, mixture, tau=tau_now, dataset_size=dataset_size,
          hyperpriors=hyperpriors)
      metrics.update(aux)
    else:
      loss = data_loss
      metrics['data_loss'] = data_loss
    metrics['loss'] = loss
    return loss, (metrics, model_state)

  def prior_fn(params, mixture, tau_now):
    # Eq. 1's penalty alone: gmp_objective with a zero data term.
    return losses.gmp_objective(
        jnp.zeros((), jnp.float32), params, mixture, tau=tau_now,
        dataset_size=dataset_size, hyperpriors=hyperpriors)

  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
  data_grad_fn = jax.value_and_grad(data_fn, has_aux=True)
  prior_grad_fn = jax.value_and_grad(prior_fn, argnums=(0, 1), has_aux=True)

  def split_grads(state, batch, rng, tau_now):
    """The gradient as data part + prior part, each computed once."""
    (data_loss, (metrics, model_state)), data_grads = data_grad_fn(
        state.params, batch, state.model_state, rng)
    (penalty, aux), (prior_grads, mixture_grads) = prior_grad_fn(
        state.params, state.mixture, tau_now)
    metrics.update(aux, data_loss=data_loss, loss=data_loss + penalty)
    metrics['grad_ratio'] = _grad_ratio(data_grads, prior_grads,
                                        state.mixture)
    grads = (jax.tree.map(jnp.add, data_grads, prior_grads), mixture_grads)
    return metrics, model_state, grads

  def train_step(state: TrainState, batch: Batch):
    rng = (jax.random.fold_in(jax.random.key(seed), state.step)
           if stateful else None)
    if grad_ratio and use_prior:
      metrics, model_state, grads = split_grads(state, batch, rng,
                                                tau_at(state.step))
    else:
      (_, (metrics, model_state)), grads = grad_fn(
          state.params, state.mixture, batch, state.model_state, rng,
          tau_at(state.step))
    (params, mixture), opt_state = optim.apply_optimizer(
        optimizer, grads, state.opt_state, (state.params, state.mixture))
    metrics.update(mixture_summary(mixture))
    return TrainState(state.step + 1, params, mixture, opt_state,
                      jax.lax.stop_gradient(model_state)), metrics

  return train_step


def _grad_ratio(data_grads, prior_grads, mixture) -> jax.Array:
  """RMS of the prior's gradient over RMS of the data term's, covered leaves."""
  prior_sq = data_sq = 0.0
  for g, gp in zip(prior_lib.mixture_leaves(data_grads, mixture),
                   prior_lib.mixture_leaves(prior_grads, mixture)):
    g, gp = g.astype(jnp.float32), gp.astype(jnp.float32)
    prior_sq = prior_sq + jnp.sum(jnp.square(gp))
    data_sq = data_sq + jnp.sum(jnp.square(g))
  return jnp.sqrt(prior_sq / jnp.maximum(data_sq, jnp.finfo(jnp.float32).tiny))
