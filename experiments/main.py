"""The pipeline's entry point: any registered model and dataset, by config.

  python -m experiments.main --config=experiments/configs/mnist.py \
      --workdir=workdir/mnist

`python -m experiments.mnist` is the same command (an alias kept for the
README, CI and the notebook). Any config field can be overridden, e.g.
`--config.retrain.tau=1e-2`; `--stop_after=teacher` stops after a stage.
This file is intentionally short: it calls `train_and_evaluate(config,
workdir)` of the stage runner (`experiments/stages/runner.py`), where the
logic can be tested. It checks the multi-process flags
(`experiments.infra.launch`) before it imports jax and the pipeline, so
bad ones fail at once.

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

from experiments.infra import launch

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
                     launch.DEFAULT_INIT_TIMEOUT_S,
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
  # Before jax and the pipeline are imported: bad flags and a coordinator
  # that never answers fail in about a second.
  try:
    plan = launch.check(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
        auto=FLAGS.distributed, timeout_s=FLAGS.distributed_timeout_s)
  except (ValueError, launch.DistributedError) as e:
    sys.exit(f'error: {e}')
  # pylint: disable=g-import-not-at-top
  from experiments.infra import distributed
  from experiments.infra import monitor
  from experiments.stages import runner
  # pylint: enable=g-import-not-at-top
  if logging.get_verbosity() <= logging.INFO:  # -v 1 shows every log line.
    monitor.quiet_third_party_logs()  # Orbax logs each save at INFO.
  try:
    distributed.join(plan)
  except distributed.DistributedError as e:
    sys.exit(f'error: {e}')
  try:
    runner.check_stage_name(FLAGS.stop_after)
  except ValueError as e:
    sys.exit(f'error: {e}')
  runner.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                            stop_after=FLAGS.stop_after)


if __name__ == '__main__':
  app.run(main)
