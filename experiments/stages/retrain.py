"""The retrain stage: retraining with the mixture prior (poster eq. 1).

`run` retrains the student from the teacher's weights
(`teacher/params.gmpz`) and writes the weights and the learned mixture to
`retrain/state.gmpz` (`OUTPUTS`); `load_retrained` reads them back for the
later stages. Below, the modes and what a model must provide.

`MODES` maps `config.retrain.mode` to a builder
`(config, teacher_params, dataset) -> Retraining`: the optimiser, the pure
train step (`gmp_jax.make_train_step`) and the arrays it trains on.

What a model needs for each mode (register it with
`experiments.infra.registry.register_model` so that `models.get_model(name)`
finds it; its constructor gets the dataset's `registry.DatasetEntry`):

* ``'end_to_end'`` (poster Figure 2): any Flax module whose
  ``apply({'params': p}, x)`` maps a batch of the dataset's inputs to
  logits, with `models.init_params` able to initialise it from one example
  of the dataset (``(1, *input_shape)``). The student may be another
  architecture
  (``config.retrain.student``); it then starts from fresh weights (seed + 1)
  instead of the teacher's. The data loss is the distillation term on the
  teacher's logits plus the label cross-entropy, as weighted in the config.
* ``'layerwise'`` (poster Figure 1): the model must be a
  `models.SequentialNet` of `models.LayerSpec`s, because
  `models.layer_blocks` and `models.layer_io` split it into one block per
  parametric layer, and the student is the teacher's architecture (each
  block learns to reproduce the teacher's output of that block from the
  teacher's input to it).

The mixture covers the student's leaves that `retrain.filter` chooses (a
name in `gmp_jax.filters.FILTERS`; None: the library's default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import gmp_jax
from experiments.image import models
from experiments.infra import evaluation
from experiments.infra import loop
from experiments.infra import monitor
from experiments.infra import workdir_layout
from experiments.stages import student


class Retraining(NamedTuple):
  """What the retrain stage trains.

  Attributes:
    optimizer: from `gmp_jax.gmp_optimizer`.
    train_step: pure `(state, batch) -> (state, metrics)`.
    data: training arrays with a leading example axis (batches are rows).
  """
  optimizer: optax.GradientTransformation
  train_step: Callable[..., Any]
  data: dict[str, np.ndarray]


def initial_mixture(params, rc: ml_collections.ConfigDict
                    ) -> gmp_jax.GaussianMixture:
  """The retraining prior's initial mixture over `params` (None fields:
  `gmp_jax.init_mixture`'s defaults, from the weights' statistics)."""
  return gmp_jax.init_mixture(
      params, rc.num_components, filter_fn=rc.get('filter'),
      init_std=rc.get('init_std'),
      zero_proportion=rc.get('zero_proportion'),
      learn_zero_proportion=rc.get('learn_zero_proportion'),
      leaf_scale=rc.get('leaf_scale'), scale_groups=rc.get('scale_groups'))


def _pair(value) -> tuple[float, float] | None:
  return None if value is None else tuple(value)


def hyperpriors(rc: ml_collections.ConfigDict) -> gmp_jax.Hyperpriors:
  return gmp_jax.Hyperpriors(zero_gamma=_pair(rc.get('zero_gamma')),
                             gamma=_pair(rc.get('gamma')),
                             zero_beta=_pair(rc.get('zero_beta')))


def _check_lr_decay(rc: ml_collections.ConfigDict) -> None:
  decay_to = rc.get('lr_decay_to')
  if decay_to is not None and not 0.0 <= decay_to <= 1.0:
    raise ValueError(f'retrain.lr_decay_to must be in [0, 1] or None, got '
                     f'{decay_to!r}.')


def _check_tau_warmup(rc: ml_collections.ConfigDict) -> None:
  warmup = rc.get('tau_warmup_epochs')
  if warmup is not None and not (isinstance(warmup, int)
                                 and 0 < warmup <= rc.epochs):
    raise ValueError('retrain.tau_warmup_epochs must be None or an int in '
                     f'[1, retrain.epochs = {rc.epochs}], got {warmup!r}.')


def weights_schedule(rc: ml_collections.ConfigDict, lr_weights: float,
                     num_examples: int) -> optax.ScalarOrSchedule:
  """The weights' learning rate, constant unless `rc.lr_decay_to` is set.

  With it, a cosine decay from `lr_weights` to `lr_decay_to * lr_weights`
  over the retraining's steps; the mixture's learning rates stay constant.
  """
  _check_lr_decay(rc)
  decay_to = rc.get('lr_decay_to')
  if decay_to is None:
    return lr_weights
  return loop.cosine_schedule(lr_weights, decay_to, epochs=rc.epochs,
                         num_examples=num_examples,
                         batch_size=rc.batch_size)


def tau_schedule(rc: ml_collections.ConfigDict, num_examples: int, *,
                 tau: float | None = None) -> optax.ScalarOrSchedule:
  """`tau` (default `rc.tau`), ramped up linearly from 0 if
  `rc.tau_warmup_epochs` is set."""
  _check_tau_warmup(rc)
  tau = rc.tau if tau is None else tau
  warmup = rc.get('tau_warmup_epochs')
  if warmup is None:
    return tau
  return optax.linear_schedule(
      0.0, tau, loop.stage_steps(warmup, num_examples, rc.batch_size))


def _optimizer(rc: ml_collections.ConfigDict, lr_weights: float,
               num_examples: int):
  return gmp_jax.gmp_optimizer(
      weights=weights_schedule(rc, lr_weights, num_examples),
      means=rc.lr_means,
      log_precisions=rc.lr_log_precisions, mixing=rc.lr_mixing)


# Batches of the training split `calibrated_tau` measures the gradients on.
CALIBRATION_BATCHES = 8


def gradient_scales(config: ml_collections.ConfigDict, params, mixture,
                    teacher_params, dataset
                    ) -> tuple[gmp_jax.GradientScales, int]:
  """`(gmp_jax.gradient_scales, N)` of end-to-end retraining at `params`.

  The data term's gradient is measured on the first `CALIBRATION_BATCHES`
  batches of the training rows, with the teacher's logits of those
  batches; N is the step's `dataset_size`.
  """
  rc = config.retrain
  x, y = student.train_split(config, dataset)
  apply = student.apply_fn(student.student_name(config), config.data.name)
  teacher = jax.jit(student.apply_fn(config.model, config.data.name))
  data_loss = student.loss_options(rc).data_loss()
  batches = []
  for i in range(CALIBRATION_BATCHES):
    rows = slice(i * rc.batch_size, (i + 1) * rc.batch_size)
    if not len(x[rows]):
      break
    batch = {'x': jnp.asarray(x[rows])}
    if rc.distillation_weight > 0:
      batch['teacher_logits'] = teacher(teacher_params, batch['x'])
    if rc.label_weight > 0 or rc.distillation_weight <= 0:
      batch['label'] = jnp.asarray(y[rows])
    batches.append(batch)
  scales = gmp_jax.gradient_scales(
      lambda p, b: data_loss(apply(p, b['x']), b)[0], params, mixture,
      batches)
  return scales, student.dataset_size(config, x)


def calibrated_tau(config: ml_collections.ConfigDict, params, mixture,
                   teacher_params, dataset
                   ) -> tuple[float, gmp_jax.GradientScales]:
  """tau from `retrain.tau_ratio` by `gmp_jax.calibrate_tau` (end to end),
  and the `gradient_scales` it came from."""
  scales, n = gradient_scales(config, params, mixture, teacher_params,
                              dataset)
  tau = gmp_jax.calibrate_tau(scales, dataset_size=n,
                              ratio=config.retrain.tau_ratio)
  return tau, scales


def end_to_end(config: ml_collections.ConfigDict, teacher_params,
               dataset, *, tau: float | None = None) -> Retraining:
  """Distillation on the teacher's logits plus labels (poster eq. 2).

  `tau` (e.g. from `calibrated_tau`) replaces `retrain.tau`.
  """
  rc = config.retrain
  x, y = student.train_split(config, dataset)
  data, online = student.distillation_data(config, teacher_params, x, y)
  tx = _optimizer(rc, rc.lr_weights, len(x))
  step = gmp_jax.make_train_step(
      student.apply_fn(student.student_name(config), config.data.name), tx,
      tau=tau_schedule(rc, len(x), tau=tau),
      dataset_size=student.dataset_size(config, x),
      loss=student.loss_options(rc),
      hyperpriors=hyperpriors(rc),
      grad_ratio=rc.get('log_grad_ratio') is not False)
  if online:
    teacher = student.apply_fn(config.model, config.data.name)
    step = student.with_online_teacher(
        step, lambda xb: teacher(teacher_params, xb))
  return Retraining(tx, step, data)


def layerwise(config: ml_collections.ConfigDict, teacher_params,
              dataset, *, tau: float | None = None) -> Retraining:
  """Every layer trained at once, each on the teacher's input to it.

  The data loss is the sum over layers of the MSE between the student
  block's output and the teacher's, each divided by the mean square of the
  teacher's output so that layers of different scales count equally.
  """
  rc = config.retrain
  x, _ = dataset['train']
  net = models.get_model(config.model, config.data.name)
  blocks = models.layer_blocks(net)
  teacher_params = jax.device_put(teacher_params)

  def block_outputs(params, xb):
    io = models.layer_io(net, teacher_params, xb)
    outputs = {b.name: b.apply(params[b.name],
                               jax.lax.stop_gradient(io[b.name][0]))
               for b in blocks}
    targets = {name: jax.lax.stop_gradient(out) for name, (_, out) in
               io.items()}
    return outputs, targets

  def data_loss_fn(outputs, batch):
    del batch
    block_out, teacher_out = outputs
    metrics, total = {}, 0.0
    for name in block_out:
      scale = jnp.mean(jnp.square(teacher_out[name])) + 1e-8
      mse = gmp_jax.mse_loss(block_out[name], teacher_out[name]) / scale
      metrics[f'rel_mse_{name}'] = mse
      total = total + mse
    return total, metrics

  tx = _optimizer(rc, rc.layerwise_lr_weights, len(x))
  step = gmp_jax.make_train_step(
      block_outputs, tx, tau=tau_schedule(rc, len(x), tau=tau),
      dataset_size=len(x), grad_ratio=rc.get('log_grad_ratio') is not False,
      hyperpriors=hyperpriors(rc),
      loss=gmp_jax.LossOptions(data_loss_fn=data_loss_fn))
  return Retraining(tx, step, {'x': x})


MODES: Mapping[str, Callable[..., Retraining]] = {
    'end_to_end': end_to_end,
    'layerwise': layerwise,
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Rejects a retraining config the modes cannot run, before any training.

  Raises:
    ValueError: unknown mode, a layer-wise student that is not the
      teacher's architecture or not a `SequentialNet`, or a learning-rate
      decay or tau warm-up out of range.
  """
  _check_lr_decay(config.retrain)
  _check_tau_warmup(config.retrain)
  mode = config.retrain.mode
  ratio = config.retrain.get('tau_ratio')
  if ratio is not None:
    if not (isinstance(ratio, (int, float)) and ratio > 0):
      raise ValueError(f'retrain.tau_ratio must be a number > 0 or None, got '
                       f'{ratio!r}.')
    if mode != 'end_to_end':
      raise ValueError('retrain.tau_ratio calibrates end-to-end retraining; '
                       f'set retrain.tau for mode {mode!r}.')
  if mode not in MODES:
    raise ValueError(f'retrain.mode must be one of {tuple(MODES)}, got '
                     f'{mode!r}.')
  if mode == 'layerwise':
    if student.student_name(config) != config.model:
      raise ValueError(
          'Layer-wise distillation needs the teacher architecture for the '
          f'student; got student={config.retrain.student!r}.')
    if not isinstance(models.get_model(config.model, config.data.name),
                      models.SequentialNet):
      raise ValueError(
          f'Layer-wise distillation needs a SequentialNet of LayerSpecs; '
          f'{config.model!r} is not one.')


# ----------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------

STATE_FILE = 'retrain/state.gmpz'
OUTPUTS = (STATE_FILE,)


def mixture_summary(state: gmp_jax.TrainState) -> dict[str, Any]:
  """The mixture's means, standard deviations and proportions (JSON)."""
  mixture = jax.device_get(state.mixture)  # Replicated on a mesh.
  return {'mixture_means': np.asarray(mixture.means).tolist(),
          'mixture_stds': np.sqrt(np.asarray(mixture.variances)).tolist(),
          'mixture_pis': np.asarray(mixture.mixing_proportions).tolist()}


def load_retrained(ctx):
  """(student, params, mixture) from `retrain/state.gmpz`."""
  params, meta = workdir_layout.load_params(ctx.path(STATE_FILE))
  mixture = initial_mixture(params, ctx.config.retrain).replace(
      nonzero_means=jnp.asarray(meta['nonzero_means']),
      log_precisions=jnp.asarray(meta['log_precisions']),
      mixing_logits=jnp.asarray(meta['mixing_logits']))
  if 'leaf_scales' in meta:  # The retraining's scales, not the final weights'.
    mixture = mixture.replace(
        leaf_scales=tuple(float(s) for s in np.asarray(meta['leaf_scales'])))
  return ctx.results['retrain']['student'], params, mixture


def run(ctx) -> dict[str, Any]:
  """Retraining with the mixture prior (poster eq. 1)."""
  config, rc = ctx.config, ctx.config.retrain
  teacher_params, _ = workdir_layout.load_params(
      ctx.path(workdir_layout.TEACHER_PARAMS))
  if ctx.runtime is not None:  # Layer-wise steps close over the teacher.
    teacher_params = ctx.runtime.put(teacher_params)
  student_model = student.student_name(config)
  params = student.initial_params(config, teacher_params)
  mixture = initial_mixture(params, rc)
  record = {'tau': rc.tau}
  scales = n = None
  if rc.mode == 'end_to_end':  # The gradient ratio at the start (rho).
    scales, n = ctx.timer.run('retrain', 'data', gradient_scales,
                              config, params, mixture, teacher_params,
                              ctx.dataset)
    if rc.get('tau_ratio') is not None:
      record.update(tau=gmp_jax.calibrate_tau(scales, dataset_size=n,
                                              ratio=rc.tau_ratio),
                    tau_ratio=rc.tau_ratio)
    record.update(grad_data_rms=scales.data_rms,
                  grad_prior_rms=scales.prior_rms,
                  initial_grad_ratio=scales.ratio(record['tau'], n))
    monitor.log_info('retrain: tau %.4g, gradient ratio %.3g at the start '
                     '(RMS: data %.3g, prior %.3g per unit tau / N)',
                     record['tau'], record['initial_grad_ratio'],
                     scales.data_rms, scales.prior_rms)
  start = gmp_jax.diagnose(params, mixture, scales=scales, tau=record['tau'],
                           dataset_size=n, warn=False)
  record['initial_nonzero_fraction'] = start.nonzero_fraction
  for message in start.warnings:
    monitor.log_info('retrain: warning: %s', message)
  setup = ctx.timer.run('retrain', 'data', MODES[rc.mode], config,
                        teacher_params, ctx.dataset, tau=record['tau'])
  state = gmp_jax.create_train_state(params, mixture, setup.optimizer)
  state = ctx.train('retrain', state, setup.train_step, setup.data,
                    epochs=rc.epochs, batch_size=rc.batch_size,
                    eval_fn=ctx.task.epoch_metrics(
                        ctx.evaluator(student_model), pruned=True,
                        raw=rc.get('eval_raw_each_epoch', False),
                        merge=evaluation.merge_options(config)),
                    summary_fn=mixture_summary, teacher_params=teacher_params)
  test = ctx.evaluator(student_model)(state.params)
  mixture = jax.device_get(state.mixture)
  ctx.save_params(ctx.path(STATE_FILE), state.params, metadata={
      'nonzero_means': np.asarray(mixture.nonzero_means),
      'log_precisions': np.asarray(mixture.log_precisions),
      'mixing_logits': np.asarray(mixture.mixing_logits),
      **({} if mixture.leaf_scales is None else
         {'leaf_scales': np.asarray(mixture.leaf_scales, np.float64)})})
  monitor.log_info('retrain (%s): test %s before pruning %.4f', rc.mode,
                   ctx.metric, test[ctx.metric])
  return {f'test_{ctx.metric}': test[ctx.metric], 'student': student_model,
          'mode': rc.mode, **ctx.valid_record(student_model, state.params),
          **record}
