"""Runs the poster's compression pipeline on MNIST.

  python -m experiments.mnist --config=experiments/configs/mnist.py \
      --workdir=workdir/mnist

Any config field can be overridden, e.g. `--config.retrain.tau=1e-2`. This
file is intentionally short: the logic lives in `experiments/pipeline.py`,
where it can be tested.

One process uses every device it sees (`config.mesh`). A run of P processes
starts each with the same command plus

  --coordinator_address=HOST:PORT --num_processes=P --process_id=I

(process 0 serves HOST:PORT), or with `--distributed` alone where JAX finds
the cluster itself (Cloud TPU VM, SLURM). All processes share the workdir;
process 0 writes the reports and files, all of them the checkpoints.
"""

import sys

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from experiments import distributed
from experiments import monitor
from experiments import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and reports.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 in a multi-process run.')
flags.DEFINE_integer('num_processes', None,
                     'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None,
                     'This process, 0 .. num_processes - 1.')
flags.DEFINE_bool('distributed', False,
                  'Start jax.distributed with the cluster JAX detects '
                  '(Cloud TPU VM, SLURM) when the three flags above are not '
                  'given.')
flags.DEFINE_integer('distributed_timeout_s',
                     distributed.DEFAULT_INIT_TIMEOUT_S,
                     'Seconds to wait for every process to join.')
flags.DEFINE_string('stop_after', None,
                    'Run the stages up to and including this one (e.g. '
                    'teacher), then stop; a later run resumes from there.')
config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. experiments/configs/mnist.py[:smoke].',
    lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if logging.get_verbosity() <= logging.INFO:  # -v 1 shows every log line.
    monitor.quiet_third_party_logs()  # Orbax logs each save at INFO.
  try:
    distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
        auto=FLAGS.distributed, timeout_s=FLAGS.distributed_timeout_s)
  except (ValueError, distributed.DistributedError) as e:
    sys.exit(f'error: {e}')
  try:
    pipeline.check_stage_name(FLAGS.stop_after)
  except ValueError as e:
    sys.exit(f'error: {e}')
  pipeline.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                              stop_after=FLAGS.stop_after)


if __name__ == '__main__':
  app.run(main)
