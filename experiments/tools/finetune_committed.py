"""What codebook fine-tuning recovers on committed models (labels only).

  python -m experiments.tools.finetune_committed results/mnist/model.gmpz \\
      --epochs=2 --learning_rate=1e-4

A committed run keeps no teacher, so this measures what the shared values
alone recover against the labels (cross-entropy); the pipeline's finetune
stage (`experiments.stages.finetune`) also distils from the teacher.
"""

from __future__ import annotations

import os
import tempfile

from absl import app
from absl import flags
import jax
import optax

import gmp_jax
from experiments.image import data as data_lib
from experiments.infra import cli
from experiments.infra import evaluation
from experiments.infra import loop
from experiments.infra import monitor
from experiments.stages import student as student_lib


def measure(path: str, *, epochs: int, learning_rate: float,
            batch_size: int, seed: int, dataset: str = 'mnist'
            ) -> list[dict[str, float]]:
  """Label-only codebook fine-tuning of a committed compressed model.

  The steps run in `loop.train_loop`, the test set through
  `gmp_jax.evaluate`; `dataset` is the registered dataset the model was
  trained on.
  """
  info = gmp_jax.load_compressed_with_info(path)
  params, metadata = info.params, info.metadata
  model = (metadata or {}).get('model', 'poster')
  data = data_lib.load_dataset(dataset, download=False)
  (x, y), (xt, yt) = data['train'], data['test']
  apply_fn = student_lib.apply_fn(model, dataset)
  eval_step = gmp_jax.make_eval_step(apply_fn)
  evaluate = lambda p: gmp_jax.evaluate(eval_step, p, xt, yt)  # pylint: disable=unnecessary-lambda-assignment
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
        log=log, eval_fn=evaluation.epoch_metrics(
            evaluate, pruned=False,
            params_of=lambda state: state.quantized_params()))
    for record in log.records():
      rows.append({'epoch': record['epoch'],
                   'accuracy': record['test_accuracy'],
                   'cross_entropy': record['test_cross_entropy']})
      print(f"{path}: epoch {record['epoch']}: test accuracy "
            f"{record['test_accuracy']:.4f} (before "
            f"{before['accuracy']:.4f})", flush=True)
  return rows


def _define_flags() -> None:
  flags.DEFINE_string('dataset', 'mnist',
                      'The registered dataset the models were trained on.')
  flags.DEFINE_integer('epochs', 2, 'Fine-tuning epochs.')
  flags.DEFINE_float('learning_rate', 1e-4, 'Adam learning rate.')
  flags.DEFINE_integer('batch_size', 256, 'Training batch.')
  flags.DEFINE_integer('seed', 0, 'Shuffling seed.')


def main(argv: list[str]) -> int:
  """What codebook fine-tuning recovers on committed models (labels only)."""
  if len(argv) < 2:
    raise app.UsageError('expected one or more .gmpz files')
  args = flags.FLAGS
  for path in argv[1:]:
    measure(path, epochs=args.epochs, learning_rate=args.learning_rate,
            batch_size=args.batch_size, seed=args.seed, dataset=args.dataset)
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
