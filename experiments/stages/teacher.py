"""The teacher stage: trains the model on the task's data loss.

`run` trains `config.model` from a fresh initialisation (`config.seed`)
with the label cross-entropy (or the task's data term) and no prior, and
writes its weights exactly (raw float leaves) to `teacher/params.gmpz`
(`OUTPUTS`), where the retrain, finetune and report stages read them.

By default it trains `teacher.epochs` epochs and keeps the last weights,
with the test metrics at epoch ends (`config.loop.eval_every_epochs`).
With `teacher.patience` (an int >= 1; the dataset needs a validation
split) it stops early on the validation split instead
(`experiments.infra.early_stopping`): it evaluates the validation split at
every epoch end (``valid_<metric>`` in the metrics log; the test split is
not looked at during training), stops once `patience` epochs have passed
without a strictly better value of the task's headline metric
(`Task.metric`, in the task's direction `Task.higher_is_better`), or after
`teacher.epochs` (the maximum; the learning rate's cosine decay still
spans it), and keeps the best epoch's weights. The test metrics are then
computed once, on those weights. Its state (`teacher/early_stopping/`)
survives a kill, so the stage resumes as the loop does.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

import gmp_jax
from experiments.image import models
from experiments.infra import early_stopping
from experiments.infra import loop
from experiments.infra import monitor
from experiments.infra import registry
from experiments.infra import workdir_layout

OUTPUTS = (workdir_layout.TEACHER_PARAMS,)
EARLY_STOPPING_DIR = os.path.join('teacher', 'early_stopping')


def check_config(config: ml_collections.ConfigDict,
                 info: registry.DatasetEntry) -> None:
  """Raises ValueError naming a bad `teacher.patience` or `data.num_valid`.

  Both need a dataset with a validation split (`info.validation`).
  """
  patience = config.teacher.get('patience')
  early_stopping.check_patience(patience, name='teacher.patience')
  if patience is not None and not info.validation:
    raise ValueError(
        f'teacher.patience={patience} stops the teacher on the validation '
        f'split, but dataset {info.name!r} has none (train and test only); '
        'use None (train all teacher.epochs) or a dataset with one.')
  num_valid = config.data.get('num_valid')
  if num_valid is not None:
    if isinstance(num_valid, bool) or not (isinstance(num_valid, int)
                                           and num_valid >= 1):
      raise ValueError('data.num_valid must be None (every validation '
                       f'window) or an int >= 1, got {num_valid!r}.')
    if not info.validation:
      raise ValueError(f'data.num_valid={num_valid}, but dataset '
                       f'{info.name!r} has no validation split; use None.')


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
  if tc.get('patience') is not None:
    return _run_early_stopping(ctx, state, step, data)
  state = ctx.train('teacher', state, step, data,
                    epochs=tc.epochs, batch_size=tc.batch_size,
                    eval_fn=ctx.task.epoch_metrics(
                        ctx.evaluator(config.model), pruned=False))
  test = ctx.evaluator(config.model)(state.params)
  ctx.save_params(ctx.path(workdir_layout.TEACHER_PARAMS), state.params)
  monitor.log_info('teacher: test %s %.4f', ctx.metric, test[ctx.metric])
  return {**{f'test_{k}': v for k, v in test.items()},
          **ctx.valid_record(config.model, state.params)}


def valid_metrics(validate):
  """`state -> {'valid_<key>': value}` of `validate(state.params)`, the
  epoch-end metrics of a teacher that stops on the validation split."""
  return lambda state: {f'valid_{k}': v
                        for k, v in validate(state.params).items()}


def _run_early_stopping(ctx, state, step, data) -> dict[str, Any]:
  """`run` with `teacher.patience`: stops on the validation split and
  keeps the best epoch's weights; their test metrics, once."""
  config, tc = ctx.config, ctx.config.teacher
  validate = ctx.valid_evaluator(config.model)
  # On a mesh every process makes a stopper and reads the same state; the
  # validation metrics it decides on are replicated (the same on every
  # process), so all stop at the same epoch and gather the same params.
  stopper = early_stopping.Stopper(
      ctx.path(EARLY_STOPPING_DIR), key=f'valid_{ctx.metric}',
      higher_is_better=ctx.task.higher_is_better, patience=tc.patience,
      host_params=ctx.host_params, write_params=ctx.write_host_params,
      is_writer=ctx.is_writer)
  if not stopper.finished(tc.epochs):  # Else a rerun after it stopped.
    ctx.train('teacher', state, step, data, epochs=tc.epochs,
              batch_size=tc.batch_size, eval_fn=valid_metrics(validate),
              stop_fn=stopper)
  params = stopper.best_params()
  test = ctx.evaluator(config.model)(params)
  ctx.write_host_params(ctx.path(workdir_layout.TEACHER_PARAMS), params)
  epochs_run = len(stopper.values)
  monitor.log_info(
      'teacher: best valid %s %.4f at epoch %d of %d run (max %d); test '
      '%s %.4f', ctx.metric, stopper.best_value, stopper.best_epoch,
      epochs_run, tc.epochs, ctx.metric, test[ctx.metric])
  best = {f'best_{k}': v for k, v in stopper.best_record.items()
          if k.startswith('valid_')}
  return {**{f'test_{k}': v for k, v in test.items()},
          'patience': tc.patience, 'max_epochs': tc.epochs,
          'epochs_run': epochs_run, 'stopped_early': epochs_run < tc.epochs,
          'best_epoch': stopper.best_epoch, **best,
          f'valid_{ctx.metric}': stopper.best_value,
          'valid_history': list(stopper.values),
          'train_wall_time_s': stopper.elapsed_s}
