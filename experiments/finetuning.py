"""Fine-tuning after quantisation (the pipeline's `finetune` stage).

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

Config (`config.postprocess`):
  finetune_epochs: epochs of training; None or 0 skips it.
  finetune_mode: a key of `MODES`; None = 'codebook'.
  finetune_learning_rate: Adam's learning rate (codebook and latents).
  finetune_batch_size: None = `retrain.batch_size`.
  finetune_per_leaf: every coded leaf trains its own copy of the codebook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import optax

import gmp_jax
from experiments import retraining


class CodebookTraining(NamedTuple):
  """What the finetune stage trains.

  Attributes:
    state: the initial state (`gmp_jax.CodebookState` or
      `gmp_jax.StraightThroughState`).
    train_step: pure `(state, batch) -> (state, metrics)`.
    data: training arrays with a leading example axis.
    params_of: `state -> params`, the quantised params tree of a state
      (`gmp_jax.quantized_params`, i.e. `state.quantized_params()`).
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


def mode(config: ml_collections.ConfigDict) -> str:
  """`postprocess.finetune_mode`, 'codebook' when unset."""
  name = config.postprocess.get('finetune_mode') or 'codebook'
  if name not in MODES:
    raise ValueError(f'postprocess.finetune_mode must be one of '
                     f'{sorted(MODES)}, got {name!r}.')
  return name


_loss_options = retraining.loss_options


def _all_values(codebook) -> np.ndarray:
  return np.concatenate([np.ravel(c) for c in
                         jax.tree.leaves(jax.device_get(codebook))])


def _codebook_mode(config, student, quantized, retrained, tx):
  del retrained  # Assignments come from the quantised tree.
  codebook, indices, _ = gmp_jax.codebook_from_quantized(quantized)
  if config.postprocess.get('finetune_per_leaf'):
    codebook, indices = gmp_jax.tiled_per_leaf_codebook(codebook, indices)
  state = gmp_jax.create_codebook_state(codebook, indices, tx,
                                        frozen=quantized)
  step = gmp_jax.make_codebook_step(
      retraining.apply_fn(student, config.data.name), tx,
      loss=_loss_options(config.retrain))
  return (state, step, gmp_jax.quantized_params,
          lambda s: _all_values(s.codebook))


def _straight_through_mode(config, student, quantized, retrained, tx):
  codebook, _, mask = gmp_jax.codebook_from_quantized(quantized)
  if config.postprocess.get('finetune_per_leaf'):
    codebook = gmp_jax.per_leaf_codebook_tree(codebook, mask)
  start = quantized if retrained is None else retrained
  state = gmp_jax.create_straight_through_state(
      gmp_jax.masked_latent(start, mask), codebook, mask, tx,
      frozen=quantized)
  step = gmp_jax.make_straight_through_step(
      retraining.apply_fn(student, config.data.name), tx,
      loss=_loss_options(config.retrain))
  return (state, step, gmp_jax.quantized_params,
          lambda s: _all_values(s.codebook))


# `postprocess.finetune_mode` -> `(config, student, quantized, retrained,
# optimizer) -> (state, step, params_of, codebook_of)`.
MODES = {
    'codebook': _codebook_mode,
    'straight_through': _straight_through_mode,
}


def setup(config: ml_collections.ConfigDict, student: str, quantized,
          teacher_params, dataset, retrained=None) -> CodebookTraining:
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
  """
  tx = optax.adam(config.postprocess.finetune_learning_rate)
  state, step, params_fn, codebook_fn = MODES[mode(config)](
      config, student, quantized, retrained, tx)
  data, online = retraining.distillation_data(
      config, teacher_params, *retraining.train_split(config, dataset))
  if online:
    teacher = retraining.apply_fn(config.model, config.data.name)
    step = retraining.with_online_teacher(
        step, lambda xb: teacher(teacher_params, xb))
  return CodebookTraining(state, step, data, params_fn, codebook_fn)


def epoch_metrics(evaluate, params_fn=None):
  """`state -> {metric: float}` for the finetune stage's epoch ends.

  `test_accuracy` and `test_cross_entropy` of the state's quantised params
  (`params_fn`, by default `gmp_jax.quantized_params`); `evaluate` is the
  run's `params -> {'accuracy', 'cross_entropy'}` (from
  `experiments.evaluation.TestSet.evaluator`), so no second program is built.
  """
  params_fn = params_fn or gmp_jax.quantized_params
  return lambda state: {f'test_{k}': v
                        for k, v in evaluate(params_fn(state)).items()}


def _measure(path: str, *, epochs: int, learning_rate: float,
             batch_size: int, seed: int) -> list[dict[str, float]]:
  """Label-only codebook fine-tuning of a committed compressed model.

  A committed run keeps no teacher, so this measures what the shared values
  alone recover against the labels (cross-entropy); the pipeline's stage
  also distils from the teacher. The steps run in `loop.train_loop`, the
  test set through `gmp_jax.evaluate`.
  """
  # pylint: disable=import-outside-toplevel
  import os
  import tempfile
  from experiments import data as data_lib
  from experiments import loop
  from experiments import monitor
  # pylint: enable=import-outside-toplevel
  params, metadata = gmp_jax.load_compressed(path, with_metadata=True)
  student = (metadata or {}).get('model', 'poster')
  dataset = data_lib.load_dataset('mnist', download=False)
  (x, y), (xt, yt) = dataset['train'], dataset['test']
  apply_fn = retraining.apply_fn(student)
  eval_step = gmp_jax.make_eval_step(apply_fn)
  evaluate = lambda p: gmp_jax.evaluate(eval_step, p, xt, yt)
  tx = optax.adam(learning_rate)
  codebook, indices, _ = gmp_jax.codebook_from_quantized(params)
  state = gmp_jax.create_codebook_state(codebook, indices, tx, frozen=params)
  step = gmp_jax.make_codebook_step(apply_fn, tx)
  before = evaluate(params)
  rows = [{'epoch': 0, **before}]
  with tempfile.TemporaryDirectory(prefix='gmp_jax_finetuning_') as tmp:
    log = monitor.MetricsLog(tmp)
    loop.train_loop(
        stage='finetune', state=state, train_step=step,
        data=jax.device_put({'x': x, 'label': y}), num_epochs=epochs,
        batch_size=batch_size, seed=[seed],
        checkpoint_dir=os.path.join(tmp, 'checkpoints'),
        options=loop.LoopOptions(kind=loop.default_kind(),
                                 checkpoint_interval_s=float('inf')),
        log=log, eval_fn=epoch_metrics(evaluate))
    for record in log.records():
      rows.append({'epoch': record['epoch'],
                   'accuracy': record['test_accuracy'],
                   'cross_entropy': record['test_cross_entropy']})
      print(f"{path}: epoch {record['epoch']}: test accuracy "
            f"{record['test_accuracy']:.4f} (before "
            f"{before['accuracy']:.4f})", flush=True)
  return rows


def main(argv=None) -> int:
  """What codebook fine-tuning recovers on committed models (labels only).

    python -m experiments.finetuning results/mnist/model.gmpz \\
        --epochs=2 --learning_rate=1e-4
  """
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog='python -m experiments.finetuning',
                                   description=main.__doc__)
  parser.add_argument('files', nargs='+')
  parser.add_argument('--epochs', type=int, default=2)
  parser.add_argument('--learning_rate', type=float, default=1e-4)
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  for path in args.files:
    _measure(path, epochs=args.epochs, learning_rate=args.learning_rate,
             batch_size=args.batch_size, seed=args.seed)
  return 0


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  sys.exit(main())
