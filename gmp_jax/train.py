"""Train and eval steps for retraining with the mixture prior.

Every `make_*` constructor returns a pure, un-jitted function; `compile_step`
is the one place that jits. A pure step composes: it can be wrapped by
`make_multi_step`, `jax.jit`, `shard_map` or a custom loop.

`make_train_step` turns any `apply_fn(params, x) -> outputs` into a
`(state, batch) -> (state, metrics)` step. The batch is a dict; the keys
present choose the data loss:

* ``{'x', 'label'}``: label cross-entropy;
* ``{'x', 'teacher_logits'}``: teacher-student distillation;
* ``{'x', 'label', 'teacher_logits'}``: both, weighted.

A custom `data_loss_fn(outputs, batch) -> (loss, metrics)` replaces these
(layer-wise distillation uses it). The step contains no `pmap` and no device
placement, so inputs sharded with `jax.sharding.NamedSharding` run unchanged
and the output follows the input shardings.

Models with state (BatchNorm statistics, dropout) pass `stateful=True` and an
`apply_fn(params, model_state, x, *, train, rng) -> (outputs,
new_model_state)`; the state rides in `TrainState.model_state`, outside the
prior and the optimiser, and each step's `rng` is
`jax.random.fold_in(jax.random.key(seed), state.step)`.

`make_multi_step` runs several steps per call, drawing batches from a
dataset kept on the device. `make_eval_step` counts correct predictions and
sums the cross-entropy; `evaluate` runs it over a dataset.

  step = compile_step(make_train_step(apply_fn, tx, tau=5e-3,
                                      dataset_size=60_000))
  state, metrics = step(state, {'x': x, 'label': y})

`compile_step` compiles with `default_compiler_options()` unless given
`compiler_options` (`{}` for XLA's own defaults).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gmp_jax import _nonparams
from gmp_jax import losses
from gmp_jax import prior as prior_lib

Batch = Mapping[str, jax.Array]
DataLossFn = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]

# XLA:CPU options `compile_step` uses by default (measured with
# jax 0.10.2, poster network, batch 128; BUILD_NOTES.md). YNNPACK fusions are
# switched off: they take the convolutions, whose weight gradients then run
# about half as fast as with XLA's own convolutions (data loss forward and
# backward 55-57 ms vs 29 ms; the whole plain step 64 vs 38 ms). 512-bit
# vectors speed up the prior's exponentials by about 30% on AVX-512 CPUs;
# LLVM never uses wider vectors than the CPU has.
CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': '',
    'xla_cpu_prefer_vector_width': 512,
}


@functools.cache
def _supported_cpu_options() -> tuple[tuple[str, Any], ...]:
  # Option names change between XLA versions; keep those this one accepts.
  supported = []
  for name, value in CPU_COMPILER_OPTIONS.items():
    try:
      jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(
          jnp.zeros((), jnp.float32)).compile()
    except Exception:  # pylint: disable=broad-except
      continue
    supported.append((name, value))
  return tuple(supported)


def default_compiler_options() -> dict[str, Any]:
  """Compiler options `compile_step` uses when given none.

  `CPU_COMPILER_OPTIONS` (those this XLA accepts) on the CPU backend, and
  none elsewhere.
  """
  if jax.default_backend() != 'cpu':
    return {}
  return dict(_supported_cpu_options())


def compile_step(fn: Callable[..., Any], *, donate_state: bool = False,
                 compiler_options: Mapping[str, Any] | None = None,
                 out_shardings: Any = None):
  """`jax.jit` of a step from one of the `make_*` constructors.

  Args:
    fn: a pure step; its first argument is the state (or the params).
    donate_state: donate the first argument's buffers (saves memory; the
      old state must not be used afterwards).
    compiler_options: XLA options for `jax.jit`; None uses
      `default_compiler_options()`, `{}` none at all.
    out_shardings: passed to `jax.jit`; None lets XLA choose. On a mesh,
      `(state_shardings, None)` returns the state laid out as it came in,
      so a sharded state keeps its layout and the step compiles once
      (`gmp_jax.sharding`).

  Returns:
    The jitted function. It compiles once per distinct input shapes (and
    shardings).
  """
  options = (default_compiler_options() if compiler_options is None
             else dict(compiler_options))
  kwargs = {} if out_shardings is None else {'out_shardings': out_shardings}
  return jax.jit(fn, donate_argnums=(0,) if donate_state else (),
                 compiler_options=options or None, **kwargs)


def _is_compiled(fn) -> bool:
  return hasattr(fn, 'lower')  # What `jax.jit` returns.


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


def _leaf_table(tree) -> dict[str, Any]:
  return {jax.tree_util.keystr(p): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _apply_stateful(apply_fn, params, model_state, x, *, train, rng):
  """Calls a stateful `apply_fn`; returns outputs and the checked new state.

  The new state is put back into the old state's tree structure, so the
  `TrainState` keeps one structure across steps.
  """
  out = apply_fn(params, model_state, x, train=train, rng=rng)
  if not (isinstance(out, tuple) and len(out) == 2):
    raise TypeError(
        'With stateful=True, apply_fn must return (outputs, new_model_state); '
        f'it returned a {type(out).__name__}.')
  outputs, new_state = out
  old, new = _leaf_table(model_state), _leaf_table(new_state)
  added = [p for p in new if p not in old]
  if added:
    raise ValueError(
        'apply_fn returned model state that was not passed in: '
        f'{", ".join(added[:6])}{" ..." if len(added) > 6 else ""}. Give the '
        "model's initial state (e.g. Linen {'batch_stats': "
        "variables['batch_stats']}) to create_train_state(..., "
        'model_state=...).')
  dropped = [p for p in old if p not in new]
  if dropped:
    raise ValueError(
        'apply_fn did not return these model state leaves: '
        f'{", ".join(dropped[:6])}{" ..." if len(dropped) > 6 else ""}; a '
        "stateful apply_fn returns the whole state (Linen: mutable=[...] must "
        'name every collection passed in).')
  for p, a in old.items():
    b = new[p]
    if (jnp.shape(a), jnp.result_type(a)) != (jnp.shape(b),
                                              jnp.result_type(b)):
      raise ValueError(
          f'apply_fn changed model state leaf {p} from {jnp.shape(a)} '
          f'{jnp.result_type(a)} to {jnp.shape(b)} {jnp.result_type(b)}.')
  new_state = jax.tree.unflatten(jax.tree.structure(model_state),
                                 [new[p] for p in old])
  return outputs, new_state


def mixture_summary(mixture: prior_lib.GaussianMixture) -> dict[str, Any]:
  return {'means': mixture.means, 'variances': mixture.variances,
          'mixing_proportions': mixture.mixing_proportions}


def default_data_loss(*, temperature, distillation, distillation_weight,
                      label_weight) -> DataLossFn:
  """The data term of `make_train_step`: distillation and/or labels.

  `(logits, batch) -> (loss, metrics)`: `distillation_weight` times the
  'mse' (poster eq. 2) or 'kl' distillation term on `batch['teacher_logits']`
  at `temperature`, plus the label cross-entropy on `batch['label']`
  (weighted by `label_weight` next to a teacher, by 1 alone).
  """
  distill_fn = {'mse': losses.distillation_loss,
                'kl': losses.kl_distillation_loss}[distillation]

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
      ce = losses.cross_entropy_loss(logits, batch['label'])
      metrics['cross_entropy'] = ce
      metrics['accuracy'] = jnp.mean(
          jnp.argmax(logits, -1) == batch['label'])
      loss = loss + (label_weight if has_teacher else 1.0) * ce
    return loss, metrics

  return data_loss_fn


def make_train_step(apply_fn: Callable[[Any, Any], Any],
                    optimizer: optax.GradientTransformation, *,
                    tau: float | Callable[[jax.Array], jax.Array],
                    dataset_size: int,
                    temperature: float = 1.0,
                    distillation: str = 'mse',
                    distillation_weight: float = 1.0,
                    label_weight: float = 1.0,
                    hyperpriors: prior_lib.Hyperpriors | None = (
                        prior_lib.Hyperpriors()),
                    use_prior: bool = True,
                    data_loss_fn: DataLossFn | None = None,
                    stateful: bool = False,
                    seed: int = 0):
  """Builds a pure `(state, batch) -> (state, metrics)` train step.

  The loss is poster eq. 1, `data + tau / N * complexity`
  (`gmp_jax.gmp_objective`). The step is not jitted: pass it to
  `compile_step` (or to `make_multi_step` first).

  Args:
    apply_fn: `(params, x) -> outputs`, e.g. `lambda p, x: model.apply(
      {'params': p}, x)`; with `stateful=True`,
      `(params, model_state, x, *, train, rng) -> (outputs, new_model_state)`
      (see `stateful`).
    optimizer: from `gmp_jax.gmp_optimizer`.
    tau: prior strength: a number, or a schedule `step -> tau` called with
      `state.step`, e.g. a warm-up `optax.linear_schedule(0.0, tau, steps)`.
    dataset_size: N, the number of training examples.
    temperature: T of the distillation softmax.
    distillation: 'mse' (poster eq. 2) or 'kl' (Hinton's T^2 KL).
    distillation_weight: weight of the distillation term.
    label_weight: weight of the label cross-entropy when a teacher is also
      present (alone, the cross-entropy has weight 1).
    hyperpriors: `gmp_jax.Hyperpriors` or None.
    use_prior: False trains on the data loss alone (the mixture stays put).
    data_loss_fn: custom `(outputs, batch) -> (loss, metrics)`.
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
      `experiments/stateful.py`.
    seed: seed of the per-step key (stateful steps only).

  Returns:
    The pure step. Metrics hold `loss`, `data_loss`, `complexity_loss`,
    the individual data terms, `accuracy` when labels are present, and the
    mixture's `means`, `variances` and `mixing_proportions`.

  Raises:
    ValueError: unknown `distillation`, T <= 0, N <= 0 or tau < 0. When
      the step is first traced: a stateful `apply_fn` returned state leaves
      that were not passed in (e.g. a Linen collection missing from
      `model_state`), or dropped some; the error names them.
  """
  if distillation not in ('mse', 'kl'):
    raise ValueError(
        f"distillation must be 'mse' or 'kl', got {distillation!r}.")
  losses.check_temperature(temperature)
  if not dataset_size > 0:
    raise ValueError(f'dataset_size must be > 0, got {dataset_size!r}.')
  if not callable(tau) and tau < 0:
    raise ValueError(f'tau must be >= 0, got {tau!r}.')
  tau_at = tau if callable(tau) else lambda step: tau
  if data_loss_fn is None:
    data_loss_fn = default_data_loss(
        temperature=temperature, distillation=distillation,
        distillation_weight=distillation_weight, label_weight=label_weight)

  def loss_fn(params, mixture, batch, model_state, rng, tau_now):
    if stateful:
      outputs, model_state = _apply_stateful(
          apply_fn, params, model_state, batch['x'], train=True, rng=rng)
    else:
      outputs = apply_fn(params, batch['x'])
    data_loss, metrics = data_loss_fn(outputs, batch)
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

  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

  def train_step(state: TrainState, batch: Batch):
    rng = (jax.random.fold_in(jax.random.key(seed), state.step)
           if stateful else None)
    (_, (metrics, model_state)), grads = grad_fn(
        state.params, state.mixture, batch, state.model_state, rng,
        tau_at(state.step))
    updates, opt_state = optimizer.update(
        grads, state.opt_state, (state.params, state.mixture))
    params, mixture = optax.apply_updates((state.params, state.mixture),
                                          updates)
    metrics.update(mixture_summary(mixture))
    return TrainState(state.step + 1, params, mixture, opt_state,
                      jax.lax.stop_gradient(model_state)), metrics

  return train_step


def make_multi_step(train_step: Callable[[TrainState, Batch], Any]):
  """Runs several train steps per call on a dataset held on the device.

  The steps are unrolled into one program instead of a `lax.scan` loop: on
  CPU, XLA runs convolutions inside a while-loop body several times slower
  (measured 350-490 ms vs 41-60 ms per step for the poster network, see
  BUILD_NOTES.md). Each distinct number of steps per call compiles once, so
  keep it small (1-10) and constant.

  Args:
    train_step: a pure step from `make_train_step`.

  Returns:
    A pure `(state, data, indices) -> (state, metrics)`; compile it with
    `compile_step`. `data` is a dict of arrays with a leading example axis
    (kept on the device across calls), `indices` an int array of shape
    (num_steps, batch_size); step t trains on `data[indices[t]]`. Metrics
    are stacked along a leading step axis.
  """

  def multi_step(state, data, indices):
    history = []
    for t in range(indices.shape[0]):  # Static unroll, see above.
      batch = jax.tree.map(lambda a: jnp.take(a, indices[t], axis=0), data)
      state, metrics = train_step(state, batch)
      history.append(metrics)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs), *history)

  return multi_step


def make_eval_step(apply_fn: Callable[..., Any], *, stateful: bool = False):
  """Pure `(params, batch) -> {'correct', 'cross_entropy_sum', 'count'}`.

  With `stateful=True`, `apply_fn` is as for `make_train_step` and the step
  is `(params, batch, model_state=None)`; it calls
  `apply_fn(params, model_state, x, train=False, rng=None)` and ignores the
  returned state (BatchNorm uses its running averages, dropout is off).

  Sums rather than means, so batches of any size accumulate exactly:

  .. math::

    \\mathrm{correct} = \\sum_b [\\arg\\max_c z_{bc} = y_b], \\qquad
    \\mathrm{cross\\_entropy\\_sum} =
      -\\sum_b \\log \\mathrm{softmax}(z_b)_{y_b}
  """

  def eval_step(params, batch, model_state=None):
    if stateful:
      logits, _ = apply_fn(params, model_state, batch['x'], train=False,
                           rng=None)
    else:
      logits = apply_fn(params, batch['x'])
    labels = batch['label']
    log_p = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32),
                               axis=-1)
    return {'correct': jnp.sum(jnp.argmax(logits, -1) == labels),
            'cross_entropy_sum': jnp.sum(nll),
            'count': jnp.asarray(labels.shape[0])}

  return eval_step


def evaluate(eval_step, params, x, labels, *, batch_size: int = 1000,
             model_state: Any = None) -> dict[str, float]:
  """Accuracy and mean cross-entropy of `params` on `(x, labels)`.

  `model_state` (e.g. `state.model_state`) is passed to a stateful eval step
  when given.

  A host loop over batches of `batch_size`. `eval_step` comes from
  `make_eval_step`, pure (it is then compiled with `compile_step`; jax
  caches the compilation, so repeated calls compile once) or already
  compiled.
  """
  if len(x) != len(labels):
    raise ValueError(f'x has {len(x)} examples but labels has {len(labels)}.')
  if len(x) == 0:
    raise ValueError('Cannot evaluate on an empty dataset.')
  if not batch_size > 0:
    raise ValueError(f'batch_size must be > 0, got {batch_size!r}.')
  if not _is_compiled(eval_step):
    eval_step = compile_step(eval_step)
  totals = None
  for start in range(0, len(x), batch_size):
    batch = {'x': x[start:start + batch_size],
             'label': labels[start:start + batch_size]}
    out = (eval_step(params, batch) if model_state is None
           else eval_step(params, batch, model_state))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  count = float(totals['count'])
  return {'accuracy': float(totals['correct']) / count,
          'cross_entropy': float(totals['cross_entropy_sum']) / count}
