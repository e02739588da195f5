"""The teacher stage: trains the model on the task's data loss.

`run` trains `config.model` from a fresh initialisation (`config.seed`)
with the label cross-entropy (or the task's data term) and no prior, and
writes its weights exactly (raw float leaves) to `teacher/params.gmpz`
(`OUTPUTS`), where the retrain, finetune and report stages read them.
"""

from __future__ import annotations

from typing import Any

import jax

import gmp_jax
from experiments.image import models
from experiments.infra import loop
from experiments.infra import monitor
from experiments.infra import workdir_layout

OUTPUTS = (workdir_layout.TEACHER_PARAMS,)


def run(ctx) -> dict[str, Any]:
  """Trains the teacher on the task's data loss (label cross-entropy)."""
  config, tc = ctx.config, ctx.config.teacher
  data = ctx.task.train_arrays(ctx.dataset['train'])
  x = data['x']
  params = models.init_params(config.model, jax.random.key(config.seed),
                              dataset=ctx.checked.dataset)
  schedule = loop.cosine_schedule(
      tc.learning_rate, tc.decay_to, epochs=tc.epochs, num_examples=len(x),
      batch_size=tc.batch_size, warmup_steps=tc.get('warmup_steps') or 0)
  tx = gmp_jax.gmp_optimizer(weights=schedule, means=0.0, log_precisions=0.0,
                             mixing=0.0)
  mixture = gmp_jax.init_mixture(params, 2)  # Unused: the prior is off.
  state = gmp_jax.create_train_state(params, mixture, tx)
  step = gmp_jax.make_train_step(ctx.apply_fn(config.model), tx,
                                 tau=0.0, dataset_size=len(x),
                                 use_prior=False,
                                 loss=gmp_jax.LossOptions(
                                     data_loss_fn=ctx.task.data_loss_fn()))
  state = ctx.train('teacher', state, step, data,
                    epochs=tc.epochs, batch_size=tc.batch_size,
                    eval_fn=ctx.task.epoch_metrics(
                        ctx.evaluator(config.model), pruned=False))
  test = ctx.evaluator(config.model)(state.params)
  ctx.save_params(ctx.path(workdir_layout.TEACHER_PARAMS), state.params)
  monitor.log_info('teacher: test %s %.4f', ctx.metric, test[ctx.metric])
  return {f'test_{k}': v for k, v in test.items()}
