"""The student plumbing that retraining and fine-tuning share.

Both stages train the student (`student_name`: `retrain.student`, else the
teacher's architecture) on the same rows (`train_split`) against the same
data loss (`loss_options`: distillation on the teacher's logits plus the
label cross-entropy, as weighted in `config.retrain`). `distillation_data`
builds the arrays a distilling step trains on, with the teacher's logits
computed once, or, when they would not fit, computed in each step by
`with_online_teacher`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import gmp_jax
from experiments.image import models
from experiments.infra import tasks


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
