"""The finetune stage: fine-tuning after quantisation (optional).

The pruning mask stays fixed; `MODES` maps `postprocess.finetune_mode` to
what is trained, against the same data loss as end-to-end retraining
(distillation on the teacher's logits plus the label cross-entropy, as
weighted in `config.retrain`):

* ``'codebook'``: only the shared values, every weight's cluster
  fixed (`gmp_jax.make_codebook_step`). The file's position and index
  streams do not change.
* ``'straight_through'`` (the configs' default): the shared values and a latent float per kept
  weight, started from the retrained weights; each weight reads its nearest
  shared value, so weights may change cluster
  (`gmp_jax.make_straight_through_step`). Only the position stream is kept.

`run` reads `postprocess/quantized.gmpz` and writes
`finetune/quantized.gmpz` (`OUTPUTS`), the post-processed weights unchanged
when the stage is off. `setup` and `train` also serve the k-means +
fine-tuning baseline (`experiments.tools.baselines`), with the same budget
and loss on a tree quantised leaf by leaf (`setup`'s `leaf_values`).

Config (`config.postprocess`):
  finetune_epochs: epochs of training; None or 0 skips it.
  finetune_mode: a key of `MODES`; None = 'codebook'.
  finetune_learning_rate: Adam's learning rate (codebook and latents).
  finetune_batch_size: None = `retrain.batch_size`.
  finetune_per_leaf: every coded leaf trains its own copy of the codebook.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
import functools
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import optax

import gmp_jax
from experiments.infra import evaluation
from experiments.infra import monitor
from experiments.infra import workdir_layout
from experiments.stages import retrain
from experiments.stages import student as student_lib


class CodebookTraining(NamedTuple):
  """What the finetune stage trains.

  Attributes:
    state: the initial state (`gmp_jax.CodebookState` or
      `gmp_jax.StraightThroughState`).
    train_step: pure `(state, batch) -> (state, metrics)`.
    data: training arrays with a leading example axis.
    params_of: `state -> params`, the quantised params tree of a state
      (`state.quantized_params()`).
    codebook_of: `state -> (n,) array`, every trained shared value.
  """
  state: Any
  train_step: Any
  data: dict[str, np.ndarray]
  params_of: Callable[[Any], Any]
  codebook_of: Callable[[Any], np.ndarray]


def epochs(config: ml_collections.ConfigDict) -> int:
  """`postprocess.finetune_epochs`, 0 when unset."""
  value = config.postprocess.get('finetune_epochs') or 0
  if value < 0:
    raise ValueError(f'postprocess.finetune_epochs must be >= 0, got '
                     f'{value!r}.')
  return int(value)


def batch_size(config: ml_collections.ConfigDict) -> int:
  return (config.postprocess.get('finetune_batch_size')
          or config.retrain.batch_size)


def check_config(config: ml_collections.ConfigDict) -> tuple[int, str]:
  """Validates `postprocess.finetune_*`; returns (epochs, mode).

  Raises:
    ValueError: negative epochs or an unknown mode.
  """
  return epochs(config), mode(config)


def mode(config: ml_collections.ConfigDict) -> str:
  """`postprocess.finetune_mode`, 'codebook' when unset."""
  name = config.postprocess.get('finetune_mode') or 'codebook'
  if name not in MODES:
    raise ValueError(f'postprocess.finetune_mode must be one of '
                     f'{sorted(MODES)}, got {name!r}.')
  return name


def _all_values(codebook) -> np.ndarray:
  return np.concatenate([np.ravel(c) for c in
                         jax.tree.leaves(jax.device_get(codebook))])


def _codebook_mode(config, student, quantized, retrained, tx):
  del retrained  # Assignments come from the quantised tree.
  codebook, indices, _ = gmp_jax.codebook_from_quantized(
      quantized, filter_fn=config.retrain.get('filter'))
  if config.postprocess.get('finetune_per_leaf'):
    codebook, indices = gmp_jax.tiled_per_leaf_codebook(codebook, indices)
  state = gmp_jax.create_codebook_state(codebook, indices, tx,
                                        frozen=quantized)
  step = gmp_jax.make_codebook_step(
      student_lib.apply_fn(student, config.data.name), tx,
      loss=student_lib.loss_options(config.retrain))
  return (state, step, gmp_jax.CodebookState.quantized_params,
          lambda s: _all_values(s.codebook))


def _straight_through_mode(config, student, quantized, retrained, tx,
                           leaves=None):
  if leaves is None:
    # Per-leaf scales give each leaf its own values: each leaf then snaps
    # to its own only.
    own_values = bool(config.retrain.get('leaf_scale'))
    codebook, _, mask = gmp_jax.codebook_from_quantized(
        quantized, filter_fn=config.retrain.get('filter'),
        per_leaf=own_values)
    if config.postprocess.get('finetune_per_leaf') and not own_values:
      codebook = gmp_jax.per_leaf_codebook_tree(codebook, mask)
  else:
    codebook, _, mask = gmp_jax.codebook_from_quantized(
        quantized, per_leaf=True,
        filter_fn=lambda path, _: jax.tree_util.keystr(path) in leaves)
  start = quantized if retrained is None else retrained
  state = gmp_jax.create_straight_through_state(
      gmp_jax.masked_latent(start, mask), codebook, mask, tx,
      frozen=quantized)
  step = gmp_jax.make_straight_through_step(
      student_lib.apply_fn(student, config.data.name), tx,
      loss=student_lib.loss_options(config.retrain))
  return (state, step, gmp_jax.StraightThroughState.quantized_params,
          lambda s: _all_values(s.codebook))


# `postprocess.finetune_mode` -> `(config, student, quantized, retrained,
# optimizer) -> (state, step, params_of, codebook_of)`.
MODES = {
    'codebook': _codebook_mode,
    'straight_through': _straight_through_mode,
}


def setup(config: ml_collections.ConfigDict, student: str, quantized,
          teacher_params, dataset, retrained=None, *,
          leaf_values: Collection[str] | None = None) -> CodebookTraining:
  """The fine-tuning state, its pure step and the data it trains on.

  Args:
    config: the run's config.
    student: the student's model name (the quantised params' model).
    quantized: the quantised params (exact zeros are pruned).
    teacher_params: the teacher's params, for the distillation targets.
    dataset: the dataset dict (`'train'` split used).
    retrained: the retrained (unquantised) params, where the
      'straight_through' mode starts its latent weights; None starts them
      at the quantised values.
    leaf_values: optional leaf paths (`jax.tree_util.keystr`) of a tree
      quantised leaf by leaf (per-leaf k-means): whatever
      `finetune_mode`, straight-through training of these leaves, each
      with its own distinct values as its codebook
      (`gmp_jax.codebook_from_quantized(..., per_leaf=True)`).
  """
  tx = optax.adam(config.postprocess.finetune_learning_rate)
  build = (MODES[mode(config)] if leaf_values is None else
           functools.partial(_straight_through_mode, leaves=leaf_values))
  state, step, params_fn, codebook_fn = build(config, student, quantized,
                                              retrained, tx)
  data, online = student_lib.distillation_data(
      config, teacher_params, *student_lib.train_split(config, dataset))
  if online:
    teacher = student_lib.apply_fn(config.model, config.data.name)
    step = student_lib.with_online_teacher(
        step, lambda xb: teacher(teacher_params, xb))
  return CodebookTraining(state, step, data, params_fn, codebook_fn)


def train(ctx, name: str, student: str, training: CodebookTraining,
          teacher_params):
  """`training` (`setup`) for `postprocess.finetune_epochs` epochs at
  `finetune_batch_size`, as training stage `name` of `ctx` (`ctx.train`:
  its seeds, checkpoints and epoch records), with the test metrics of
  `student` at epoch ends; returns the trained state."""
  return ctx.train(name, training.state, training.train_step, training.data,
                   epochs=epochs(ctx.config),
                   batch_size=batch_size(ctx.config),
                   eval_fn=evaluation.epoch_metrics(
                       ctx.evaluator(student), pruned=False,
                       params_of=training.params_of),
                   teacher_params=teacher_params)


# ----------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------

QUANTIZED_FILE = 'finetune/quantized.gmpz'
OUTPUTS = (QUANTIZED_FILE,)


def run(ctx) -> dict[str, Any]:
  """Trains the shared values, mask and assignment fixed (optional)."""
  config, metric = ctx.config, ctx.metric
  num_epochs = ctx.checked.finetune_epochs
  student_model = ctx.results['retrain']['student']
  info = gmp_jax.load_compressed_with_info(
      ctx.path('postprocess', 'quantized.gmpz'))
  quantized, meta = info.params, info.metadata
  pruned = ctx.results['postprocess'][f'test_{metric}']
  record = {'epochs': num_epochs, f'pruned_{metric}': pruned,
            f'test_{metric}': pruned}
  valid_key = f'valid_{metric}'
  if valid_key in ctx.results['postprocess']:
    record[valid_key] = ctx.results['postprocess'][valid_key]
  if num_epochs and not any(np.any(x) for x in jax.tree.leaves(quantized)):
    record['epochs'], record['skipped'] = 0, 'no non-zero weight'
  elif num_epochs:
    teacher_params, _ = workdir_layout.load_params(
        ctx.path(workdir_layout.TEACHER_PARAMS))
    finetune_mode = ctx.checked.finetune_mode
    retrained = (retrain.load_retrained(ctx)[1]
                 if finetune_mode == 'straight_through' else None)
    training = ctx.timer.run('finetune', 'data', setup, config,
                             student_model, quantized, teacher_params,
                             ctx.dataset, retrained)
    evaluate = ctx.evaluator(student_model)
    start = evaluate(training.params_of(training.state))[metric]
    state = train(ctx, 'finetune', student_model, training, teacher_params)
    record['mode'] = finetune_mode
    record[f'start_{metric}'] = start
    record['codebook_before'] = training.codebook_of(training.state).tolist()
    record['codebook_after'] = training.codebook_of(state).tolist()
    quantized = jax.device_get(training.params_of(state))
    record[f'test_{metric}'] = evaluate(quantized)[metric]
    record.update(ctx.valid_record(student_model, quantized))
    monitor.log_info('finetune (%s): %d epochs, test %s %.4f -> %.4f',
                     finetune_mode, num_epochs, metric, pruned,
                     record[f'test_{metric}'])
  if ctx.is_writer:
    gmp_jax.save_compressed(ctx.path(QUANTIZED_FILE), quantized,
                            codebook_dtype='float32', metadata=meta)
  return record
