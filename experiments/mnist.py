"""Runs the poster's compression pipeline on MNIST.

  python -m experiments.mnist --config=experiments/configs/mnist.py \
      --workdir=workdir/mnist

Any config field can be overridden, e.g. `--config.retrain.tau=1e-2`. This
file is intentionally short: the logic lives in `experiments/pipeline.py`,
where it can be tested.
"""

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from experiments import monitor
from experiments import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and reports.')
config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. experiments/configs/mnist.py[:smoke].',
    lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if logging.get_verbosity() <= logging.INFO:  # -v 1 shows every log line.
    monitor.quiet_third_party_logs()  # Orbax logs each save at INFO.
  pipeline.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
