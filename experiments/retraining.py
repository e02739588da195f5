"""Retraining with the mixture prior: the modes and what a model must provide.

`MODES` maps `config.retrain.mode` to a builder
`(config, teacher_params, dataset) -> Retraining`: the optimiser, the pure
train step (`gmp_jax.make_train_step`) and the arrays it trains on.

What a model needs for each mode (register it with
`experiments.registry.register_model` so that `models.get_model(name)`
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
from experiments import models


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


def apply_fn(model_name: str, dataset: str | None = None):
  """`(params, x) -> logits` of a registered model.

  Args:
    model_name: a registered model.
    dataset: the registered dataset it predicts (sizes its outputs); None:
      the model's default dataset.
  """
  model = models.get_model(model_name, dataset)
  return lambda params, x: model.apply({'params': params}, x)


def student_name(config: ml_collections.ConfigDict) -> str:
  """The student's architecture: `retrain.student`, else the teacher's."""
  return config.retrain.get('student') or config.model


def initial_params(config: ml_collections.ConfigDict, teacher_params):
  """The student's starting weights: the teacher's for the same model."""
  student = student_name(config)
  if student == config.model:
    return teacher_params
  return models.init_params(student, jax.random.key(config.seed + 1),
                            dataset=config.data.name)


def initial_mixture(params, rc: ml_collections.ConfigDict
                    ) -> gmp_jax.GaussianMixture:
  """The retraining prior's initial mixture over `params` (None fields:
  `gmp_jax.init_mixture`'s defaults, from the weights' statistics)."""
  return gmp_jax.init_mixture(
      params, rc.num_components, filter_fn=rc.get('filter'),
      init_std=rc.get('init_std'),
      zero_proportion=rc.get('zero_proportion'),
      learn_zero_proportion=rc.get('learn_zero_proportion'))


def _pair(value) -> tuple[float, float] | None:
  return None if value is None else tuple(value)


def hyperpriors(rc: ml_collections.ConfigDict) -> gmp_jax.Hyperpriors:
  return gmp_jax.Hyperpriors(zero_gamma=_pair(rc.get('zero_gamma')),
                             gamma=_pair(rc.get('gamma')),
                             zero_beta=_pair(rc.get('zero_beta')))


def stage_steps(epochs: int, num_examples: int, batch_size: int) -> int:
  """Train steps in `epochs` epochs (each epoch's remainder is dropped)."""
  return epochs * (num_examples // batch_size)


def cosine_schedule(learning_rate: float, decay_to: float, *, epochs: int,
                    num_examples: int, batch_size: int,
                    warmup_steps: int = 0) -> optax.Schedule:
  """Cosine decay from `learning_rate` to `decay_to * learning_rate` over
  the `stage_steps(epochs, num_examples, batch_size)` steps of a stage,
  after a linear warm-up from 0 over `warmup_steps` of them (if > 0)."""
  steps = stage_steps(epochs, num_examples, batch_size)
  if warmup_steps < 0:
    raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}.')
  if warmup_steps == 0:
    return optax.cosine_decay_schedule(learning_rate, max(steps, 1),
                                       alpha=decay_to)
  return optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps, max(steps, warmup_steps + 1),
      end_value=decay_to * learning_rate)


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
  return cosine_schedule(lr_weights, decay_to, epochs=rc.epochs,
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
      0.0, tau, stage_steps(warmup, num_examples, rc.batch_size))


def _optimizer(rc: ml_collections.ConfigDict, lr_weights: float,
               num_examples: int):
  return gmp_jax.gmp_optimizer(
      weights=weights_schedule(rc, lr_weights, num_examples),
      means=rc.lr_means,
      log_precisions=rc.lr_log_precisions, mixing=rc.lr_mixing)


# Examples per call when computing the teacher's logits over the training
# set (independent of `config.eval_batch_size`, so that the test batch can
# change without changing the retraining's targets in the last bit).
LOGITS_BATCH_SIZE = 1000


def teacher_logits(model_name: str, params, x: np.ndarray,
                   batch_size: int = LOGITS_BATCH_SIZE,
                   dataset: str | None = None) -> np.ndarray:
  """The model's logits on `x`, in batches of `batch_size`."""
  apply = jax.jit(apply_fn(model_name, dataset))
  return np.concatenate([np.asarray(apply(params, x[i:i + batch_size]))
                         for i in range(0, len(x), batch_size)])


# Teacher logits over the training split larger than this are computed in
# each step instead of once (a language model's (N, T, V) logits).
TEACHER_LOGITS_MAX_BYTES = 1 << 30


def train_split(config: ml_collections.ConfigDict, dataset
                ) -> tuple[np.ndarray, np.ndarray]:
  """The training rows retraining and fine-tuning step over: the first
  `retrain.num_train` of the split (None: all)."""
  x, y = dataset['train']
  num = config.retrain.get('num_train')
  if num is not None:
    if num < 1:
      raise ValueError(f'retrain.num_train must be >= 1 or None, got {num}.')
    x, y = x[:num], y[:num]
  return x, y


def dataset_size(config: ml_collections.ConfigDict, x: np.ndarray) -> int:
  """N of tau / N: the task's count of what the data loss averages over
  (examples; tokens for a language model)."""
  from experiments import tasks  # pylint: disable=import-outside-toplevel
  return tasks.for_config(config).dataset_size(x)


def distillation_data(config: ml_collections.ConfigDict, teacher_params,
                      x: np.ndarray, y: np.ndarray
                      ) -> tuple[dict[str, np.ndarray], bool]:
  """The arrays a distilling step trains on, and whether it is *online*.

  With `retrain.distillation_weight > 0` the teacher's logits on `x`
  become `'teacher_logits'`, computed once, unless they would take more
  than `TEACHER_LOGITS_MAX_BYTES`: then the data holds none and the step
  must compute them (`with_online_teacher`; online is True). Labels are
  kept when weighted or when there is no teacher.
  """
  rc = config.retrain
  data, online = {'x': x}, False
  if rc.distillation_weight > 0:
    out = jax.eval_shape(apply_fn(config.model, config.data.name),
                         teacher_params, jnp.asarray(x[:1]))
    if len(x) * out.size * 4 > TEACHER_LOGITS_MAX_BYTES:
      online = True
    else:
      data['teacher_logits'] = teacher_logits(
          config.model, teacher_params, x, dataset=config.data.name)
  if rc.label_weight > 0 or rc.distillation_weight <= 0:
    data['label'] = y
  return data, online


def with_online_teacher(train_step, teacher_fn):
  """`train_step` on batches whose `'teacher_logits'` it computes first."""

  def step(state, batch):
    batch = dict(batch, teacher_logits=jax.lax.stop_gradient(
        teacher_fn(batch['x'])))
    return train_step(state, batch)

  return step


def loss_options(rc: ml_collections.ConfigDict) -> gmp_jax.LossOptions:
  """The data-loss options of `config.retrain` (retraining, fine-tuning)."""
  return gmp_jax.LossOptions(temperature=rc.temperature,
                             distillation=rc.distillation,
                             distillation_weight=rc.distillation_weight,
                             label_weight=rc.label_weight)


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
  x, y = train_split(config, dataset)
  apply = apply_fn(student_name(config), config.data.name)
  teacher = jax.jit(apply_fn(config.model, config.data.name))
  data_loss = gmp_jax.default_data_loss(loss_options(rc))
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
  return scales, dataset_size(config, x)


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
  x, y = train_split(config, dataset)
  data, online = distillation_data(config, teacher_params, x, y)
  tx = _optimizer(rc, rc.lr_weights, len(x))
  step = gmp_jax.make_train_step(
      apply_fn(student_name(config), config.data.name), tx,
      tau=tau_schedule(rc, len(x), tau=tau),
      dataset_size=dataset_size(config, x), loss=loss_options(rc),
      hyperpriors=hyperpriors(rc),
      grad_ratio=rc.get('log_grad_ratio') is not False)
  if online:
    teacher = apply_fn(config.model, config.data.name)
    step = with_online_teacher(step, lambda xb: teacher(teacher_params, xb))
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
    student, teacher = outputs
    metrics, total = {}, 0.0
    for name in student:
      scale = jnp.mean(jnp.square(teacher[name])) + 1e-8
      mse = gmp_jax.mse_loss(student[name], teacher[name]) / scale
      metrics[f'rel_mse_{name}'] = mse
      total = total + mse
    return total, metrics

  tx = _optimizer(rc, rc.layerwise_lr_weights, len(x))
  step = gmp_jax.make_train_step(
      block_outputs, tx, tau=tau_schedule(rc, len(x), tau=tau),
      dataset_size=len(x), grad_ratio=rc.get('log_grad_ratio') is not False,
      hyperpriors=hyperpriors(rc), data_loss_fn=data_loss_fn)
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
    if student_name(config) != config.model:
      raise ValueError(
          'Layer-wise distillation needs the teacher architecture for the '
          f'student; got student={config.retrain.student!r}.')
    if not isinstance(models.get_model(config.model, config.data.name),
                      models.SequentialNet):
      raise ValueError(
          f'Layer-wise distillation needs a SequentialNet of LayerSpecs; '
          f'{config.model!r} is not one.')
