"""The smoke pipeline as 2 processes x 2 CPU devices, against one process.

`python -m experiments.mnist ... --coordinator_address=localhost:PORT
--num_processes=2 --process_id=I` runs in two processes on localhost
(`tests/multiprocess.py`: free port, bounded waits, both killed on any
failure). Checked here:

* both processes, killed mid-retraining (SIGKILL) and restarted with the
  same command, resume from the checkpoint and finish with the tables of
  the 1-process, 1-device run, within 0.01 (the exact equality of a
  resumed and an uninterrupted run is checked in one process,
  `tests/pipeline_test.py`);
* `report.json` records `"distributed": {"num_processes": 2,
  "num_devices": 4}`;
* process 1 writes no file in the workdir outside the checkpoints, in
  either launch (an audit hook records every file the Python code opens
  for writing);
* bad input fails fast with a clear message: a process id out of range,
  half the flags, a coordinator that never answers (these three before
  jax is imported), a mesh that does not match the devices, a batch that
  does not split over them.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import pytest

from experiments.infra import distributed
from experiments.stages import runner as pipeline
from experiments.configs import mnist as mnist_config
import multiprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # Two processes compiling on a busy 2-core machine.
RETRAIN_EPOCHS = 2  # Room to kill the run between its two checkpoints.

# Runs experiments.mnist with an audit hook that appends every path opened
# for writing (or renamed onto) under the workdir, outside checkpoints/, to
# a log file outside the workdir.
_AUDITED_MAIN = '''
import os, runpy, sys
LOG, ROOT = {log!r}, os.path.realpath({workdir!r})
_busy = []
def _record(path):
  if not isinstance(path, (str, bytes, os.PathLike)):
    return
  p = os.path.realpath(os.fsdecode(path))
  if not p.startswith(ROOT + os.sep):
    return
  if 'checkpoints' in os.path.relpath(p, ROOT).split(os.sep):
    return
  _busy.append(1)
  try:
    with open(LOG, 'a') as f:
      f.write(p + '\\n')
  finally:
    _busy.pop()
def _hook(event, args):
  if _busy:
    return
  if event == 'open':
    path, mode, flags = args
    writes = (isinstance(mode, str) and any(c in mode for c in 'wax+')) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
    if writes:
      _record(path)
  elif event == 'os.rename':
    _record(args[1])
sys.addaudithook(_hook)
runpy.run_module('experiments.mnist', run_name='__main__', alter_sys=True)
'''


def _smoke_config():
  config = mnist_config.get_config('smoke')
  config.retrain.epochs = RETRAIN_EPOCHS
  return config


def _command(workdir, audit_dir=None, extra=()):
  def command(process_id, address):
    args = ['--config=experiments/configs/mnist.py:smoke',
            f'--config.retrain.epochs={RETRAIN_EPOCHS}',
            f'--workdir={workdir}', f'--coordinator_address={address}',
            '--num_processes=2', f'--process_id={process_id}',
            '--distributed_timeout_s=120', *extra]
    if audit_dir is None:
      return [sys.executable, '-m', 'experiments.mnist', *args]
    log = os.path.join(audit_dir, f'writes_{process_id}.txt')
    return [sys.executable, '-c',
            _AUDITED_MAIN.format(log=log, workdir=str(workdir)), *args]
  return command


def _writes(audit_dir, process_id):
  path = os.path.join(audit_dir, f'writes_{process_id}.txt')
  if not os.path.exists(path):
    return []
  return pathlib.Path(path).read_text().split()


def _assert_tables_close(got, want, tol=0.01):
  for key, value in want['table2'].items():
    assert abs(got['table2'][key] - value) <= tol, (key, got['table2'], value)
  assert [r['layer'] for r in got['table1']] == [
      r['layer'] for r in want['table1']]
  for g, w in zip(got['table1'], want['table1']):
    assert g['parameters'] == w['parameters']
    assert abs(g['sparsity'] - w['sparsity']) <= tol, (g, w)
  assert abs(got['nonzero_fraction'] - want['nonzero_fraction']) <= tol


@pytest.fixture(scope='module')
def cache_env(tmp_path_factory):
  """The environment of a persistent compilation cache for this module.

  The later runs load the first one's programs instead of compiling them
  (jax reads and writes the cache in process 0 only; process 1 compiles).
  It holds XLA's output for the same programs, so the numbers are as
  without it.
  """
  return {'JAX_COMPILATION_CACHE_DIR':
              str(tmp_path_factory.mktemp('compilation_cache')),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
  """The reference: one process, one device (no mesh)."""
  config = _smoke_config()
  config.mesh.num_devices = 1
  workdir = tmp_path_factory.mktemp('one_process')
  report = pipeline.train_and_evaluate(config, str(workdir))
  assert report['distributed'] == {'num_processes': 1, 'num_devices': 1}
  return report


def _kill_after_first_checkpoint(cluster, ckpts):
  """SIGKILL to every process once a retraining checkpoint exists."""
  with cluster:
    deadline = time.monotonic() + TIMEOUT_S
    while not (ckpts.is_dir() and any(d.isdigit()
                                      for d in os.listdir(ckpts))):
      codes = [p.popen.poll() for p in cluster.processes]
      if any(c is not None for c in codes):
        pytest.fail(f'a process ended before it could be killed ({codes}):\n'
                    + '\n'.join(o[-2000:] for o in cluster.outputs()))
      if time.monotonic() > deadline:
        pytest.fail('no retraining checkpoint appeared')
      time.sleep(0.05)
    cluster.kill()


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory, cache_env):
  """Two processes from scratch, both killed mid-retraining, then resumed.

  Both launches run under the audit hook. Returns the workdir, the audit
  directory, the resumed launch's outputs and its report.
  """
  root = tmp_path_factory.mktemp('two_processes')
  workdir, audit = root / 'workdir', root / 'audit'
  audit.mkdir()
  command = _command(workdir, audit)
  _kill_after_first_checkpoint(
      multiprocess.LocalCluster(command, 2, env=cache_env,
                                log_dir=root / 'logs_killed'),
      workdir / 'retrain' / 'checkpoints')
  assert not (workdir / 'retrain' / 'done.json').exists()
  outputs = multiprocess.run(command, 2, timeout=TIMEOUT_S, env=cache_env,
                             log_dir=root / 'logs_resumed')
  report = json.loads((workdir / 'report.json').read_text())
  return workdir, audit, outputs, report


@pytest.mark.slow
def test_killed_and_resumed_processes_give_the_one_process_tables(
    two_processes, one_process):
  _, _, outputs, report = two_processes
  assert report['distributed'] == {'num_processes': 2, 'num_devices': 4}
  _assert_tables_close(report, one_process)
  for out in outputs:  # Both resumed and finished retraining on the mesh.
    assert 'teacher: finished earlier' in out
    assert 'retrain: resuming from step' in out
    assert f'retrain epoch {RETRAIN_EPOCHS}/{RETRAIN_EPOCHS}' in out


def test_only_process_0_writes_the_workdir(two_processes):
  workdir, audit, _, _ = two_processes
  assert _writes(audit, 1) == []
  written = {os.path.relpath(p, os.path.realpath(workdir))
             for p in _writes(audit, 0)}
  # The audit sees process 0's files (written atomically via a temp name).
  assert {'report.json', 'report.md', 'model.gmpz',
          os.path.join('teacher', 'params.gmpz'),
          os.path.join('retrain', 'state.gmpz')} <= written
  assert any(p.startswith('figures') for p in written)
  # All processes wrote the checkpoints together.
  ckpts = workdir / 'retrain' / 'checkpoints'
  assert [d for d in os.listdir(ckpts) if d.isdigit()]


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def _cli(*args, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='1')
  return subprocess.run(
      [sys.executable, '-m', 'experiments.mnist',
       '--config=experiments/configs/mnist.py:smoke', *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_process_id_out_of_range(tmp_path):
  out = _cli(f'--workdir={tmp_path}', '--coordinator_address=localhost:1234',
             '--num_processes=2', '--process_id=2')
  assert out.returncode != 0
  assert '--process_id must be in [0, 2)' in out.stderr
  assert not os.listdir(tmp_path)


def test_half_the_flags(tmp_path):
  out = _cli(f'--workdir={tmp_path}', '--num_processes=2')
  assert out.returncode != 0
  assert 'missing --coordinator_address, --process_id' in out.stderr


def test_coordinator_that_never_answers(tmp_path):
  # Process 1 of 2 with no process 0: a clear error after the timeout.
  port = multiprocess.free_port()
  out = _cli(f'--workdir={tmp_path}', f'--coordinator_address=localhost:{port}',
             '--num_processes=2', '--process_id=1',
             '--distributed_timeout_s=1', timeout=60)
  assert out.returncode != 0
  assert f'no coordinator answered at localhost:{port} within 1 s' in (
      out.stderr)


def test_mesh_that_does_not_match_the_devices():
  config = _smoke_config()
  config.mesh.num_devices = jax.device_count() + 1
  with pytest.raises(ValueError, match='does not match the devices'):
    distributed.make_runtime(config)
  config.mesh.num_devices = 0
  with pytest.raises(ValueError, match='does not match the devices'):
    distributed.make_runtime(config)


def test_global_batch_that_does_not_split(tmp_path):
  if jax.device_count() < 4:
    pytest.skip('needs 4 devices (conftest.py)')
  config = _smoke_config()
  config.mesh.num_devices = 4
  config.retrain.batch_size = 66
  with pytest.raises(ValueError, match=r'config.retrain.batch_size is 66, '
                     r'which does not split evenly over the 4 devices'):
    pipeline.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)  # Rejected before anything ran.
