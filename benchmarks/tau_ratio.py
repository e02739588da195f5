"""The gradient ratio rho of a config's tau, at its teacher (the tau rule).

  python -m benchmarks.tau_ratio --config=experiments/configs/mnist.py \\
      --workdir=workdir/mnist

reads the teacher of a run (``teacher/params.gmpz``, e.g. after
``python -m experiments.mnist ... --stop_after=teacher``), builds the
retraining's initial mixture from the config, measures the data and prior
gradient scales on the first `retrain.CALIBRATION_BATCHES` batches
(`gmp_jax.gradient_scales`) and prints

  rho = (tau / N) RMS(grad[-log p]) / RMS(grad data)

for the config's `retrain.tau` (or the tau its `retrain.tau_ratio` gives),
with `--json PATH` writing the figures. A tau tuned on one model maps to a
rho that `retrain.tau_ratio` (`gmp_jax.calibrate_tau`) carries to another.
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
from ml_collections import config_flags

import gmp_jax
from experiments.infra import jsonio
from experiments.infra import cli
from experiments.infra import monitor
from experiments.infra import workdir_layout
from experiments.stages import retrain
from experiments.stages import runner
from experiments.stages import student

FLAGS = flags.FLAGS


def measure(config, workdir: str) -> dict:
  """The figures of the module docstring, as a dict."""
  ctx = runner.Context(config, workdir, monitor.StageTimer())
  teacher, _ = workdir_layout.load_params(
      ctx.path(workdir_layout.TEACHER_PARAMS))
  params = student.initial_params(config, teacher)
  mixture = retrain.initial_mixture(params, config.retrain)
  rc = config.retrain.to_dict()
  probe = config.copy_and_resolve_references()
  with probe.unlocked():
    probe.retrain.tau_ratio = 1.0
  tau_at_one, scales = retrain.calibrated_tau(probe, params, mixture,
                                              teacher, ctx.dataset)
  n = student.dataset_size(config, student.train_split(
      config, ctx.dataset)[0])
  tau = rc['tau'] if rc.get('tau_ratio') is None else (
      rc['tau_ratio'] * tau_at_one)
  start = gmp_jax.diagnose(params, mixture, warn=False)
  return {'model': config.model, 'dataset': config.data.name,
          'tau': tau, 'dataset_size': n, 'rho': scales.ratio(tau, n),
          'tau_at_rho_1': tau_at_one, 'grad_data_rms': scales.data_rms,
          'grad_prior_rms': scales.prior_rms,
          'covered_weights': scales.num_weights,
          'initial_nonzero_fraction': start.nonzero_fraction}



def _define_flags() -> None:
  """The command line's flags (defined only when run as a program, so that
  importing this module next to another absl program defines none)."""
  flags.DEFINE_string('workdir', None, 'A run whose teacher stage is done.')
  flags.DEFINE_string('json', None, 'Write the figures here too.')
  config_flags.DEFINE_config_file('config', None, "The run's config.",
                                  lock_config=True)
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  out = measure(FLAGS.config, FLAGS.workdir)
  print(json.dumps(out, indent=2))
  if FLAGS.json:
    jsonio.write_json_atomic(FLAGS.json, out)
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
