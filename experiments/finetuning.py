"""Codebook fine-tuning after quantisation (the pipeline's `finetune` stage).

With the pruning mask and every weight's cluster fixed, only the shared
values are trained (`gmp_jax.make_codebook_step`), against the same data
loss as end-to-end retraining: distillation on the teacher's logits plus
the label cross-entropy, as weighted in `config.retrain`. The zero pattern
and the number of distinct values do not change, so neither do the
compressed file's position and index streams.

Config (`config.postprocess`):
  finetune_epochs: epochs of codebook training; None or 0 skips it.
  finetune_learning_rate: Adam's learning rate for the codebook.
  finetune_batch_size: None = `retrain.batch_size`.
  finetune_per_leaf: every coded leaf trains its own copy of the codebook.
"""

from __future__ import annotations

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
    state: the initial `gmp_jax.CodebookState`.
    train_step: pure `(state, batch) -> (state, metrics)`.
    data: training arrays with a leading example axis.
  """
  state: gmp_jax.CodebookState
  train_step: Any
  data: dict[str, np.ndarray]


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


def setup(config: ml_collections.ConfigDict, student: str, quantized,
          teacher_params, dataset) -> CodebookTraining:
  """The codebook state, its pure step and the data it trains on.

  Args:
    config: the run's config.
    student: the student's model name (the quantised params' model).
    quantized: the quantised params (exact zeros are pruned).
    teacher_params: the teacher's params, for the distillation targets.
    dataset: the dataset dict (`'train'` split used).
  """
  rc = config.retrain
  x, y = dataset['train']
  data = {'x': x}
  if rc.distillation_weight > 0:
    data['teacher_logits'] = retraining.teacher_logits(
        config.model, teacher_params, x)
  if rc.label_weight > 0 or 'teacher_logits' not in data:
    data['label'] = y
  tx = optax.adam(config.postprocess.finetune_learning_rate)
  codebook, indices, _ = gmp_jax.codebook_from_quantized(quantized)
  if config.postprocess.get('finetune_per_leaf'):
    codebook, indices = gmp_jax.per_leaf_codebook(codebook, indices)
  state = gmp_jax.create_codebook_state(codebook, indices, tx,
                                        frozen=quantized)
  step = gmp_jax.make_codebook_step(
      retraining.apply_fn(student), tx, temperature=rc.temperature,
      distillation=rc.distillation,
      distillation_weight=rc.distillation_weight,
      label_weight=rc.label_weight)
  return CodebookTraining(state, step, data)


def epoch_metrics(evaluate):
  """`state -> {metric: float}` for the finetune stage's epoch ends.

  `test_accuracy` and `test_cross_entropy` of the expanded codebook state;
  `evaluate` is the run's `params -> {'accuracy', 'cross_entropy'}` (from
  `experiments.evaluation.TestSet.evaluator`), so no second program is built.
  """
  return lambda state: {f'test_{k}': v
                        for k, v in evaluate(params_of(state)).items()}


def params_of(state: gmp_jax.CodebookState):
  """The params tree of a codebook state."""
  return gmp_jax.expand_codebook(state.codebook, state.indices, state.frozen)


def host_params(state: gmp_jax.CodebookState):
  return jax.device_get(params_of(state))


def _measure(path: str, *, epochs: int, learning_rate: float,
             batch_size: int, seed: int) -> list[dict[str, float]]:
  """Label-only codebook fine-tuning of a committed compressed model.

  A committed run keeps no teacher, so this measures what the shared values
  alone recover against the labels (cross-entropy); the pipeline's stage
  also distils from the teacher.
  """
  from experiments import data as data_lib  # pylint: disable=import-outside-toplevel
  params, metadata = gmp_jax.load_compressed(path, with_metadata=True)
  student = (metadata or {}).get('model', 'poster')
  dataset = data_lib.load_dataset('mnist', download=False)
  (x, y), (xt, yt) = dataset['train'], dataset['test']
  eval_step = gmp_jax.compile_step(gmp_jax.make_eval_step(
      retraining.apply_fn(student)))
  tx = optax.adam(learning_rate)
  codebook, indices, _ = gmp_jax.codebook_from_quantized(params)
  state = gmp_jax.create_codebook_state(codebook, indices, tx, frozen=params)
  step = gmp_jax.make_codebook_step(retraining.apply_fn(student), tx)
  multi = gmp_jax.compile_step(gmp_jax.make_multi_step(step))
  data = jax.device_put({'x': x, 'label': y})
  rows = [{'epoch': 0, **gmp_jax.evaluate(eval_step, params, xt, yt)}]
  per_call = 5
  for epoch in range(epochs):
    order = np.random.default_rng([seed, epoch]).permutation(len(x))
    steps = len(x) // batch_size
    order = order[:steps * batch_size].reshape(steps, batch_size)
    for start in range(0, steps - steps % per_call, per_call):
      state, _ = multi(state, data, order[start:start + per_call])
    rows.append({'epoch': epoch + 1,
                 **gmp_jax.evaluate(eval_step, params_of(state), xt, yt)})
    print(f"{path}: epoch {epoch + 1}: test accuracy "
          f"{rows[-1]['accuracy']:.4f} (before {rows[0]['accuracy']:.4f})",
          flush=True)
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
