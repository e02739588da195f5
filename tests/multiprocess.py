"""Runs P local processes of one `jax.distributed` job, for the tests.

Each process is a separate Python on this machine with its own CPU devices
(`JAX_NUM_CPU_DEVICES`), connected through a coordinator on a free localhost
port; collectives between processes go through gloo. The harness bounds
every wait, and on any failure or timeout kills every process it started
(each in its own process group, so their children go too) before raising.

Two ways to use it:

* `run(command, num_processes, ...)`: `command(process_id, address)` gives
  the argv of each process (e.g. ``python -m experiments.mnist ...
  --coordinator_address=address --process_id=i``); waits for all of them.
* `LocalCluster` for finer control, e.g. killing every process mid-run.

Run as a script, this file is a worker that initialises `jax.distributed`
and calls a function of a test module::

  python tests/multiprocess.py --coordinator_address=localhost:PORT \\
      --num_processes=2 --process_id=0 --target=multiprocess_test:some_fn \\
      --out=DIR

(`worker_command` builds that argv.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
import dataclasses
import importlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
# jax.distributed.initialize gives up after this long without all processes.
INIT_TIMEOUT_S = 60


class ProcessFailed(RuntimeError):
  """A process exited with an error or the run timed out (all were killed)."""


def free_port() -> int:
  """A TCP port free on localhost now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@dataclasses.dataclass
class _Process:
  process_id: int
  popen: subprocess.Popen
  log_path: pathlib.Path

  def output(self) -> str:
    try:
      return self.log_path.read_text(errors='replace')
    except OSError:
      return ''


class LocalCluster:
  """P processes of one distributed run on localhost.

  Args:
    command: `(process_id, coordinator_address) -> argv` of one process.
    num_processes: P.
    devices_per_process: CPU devices of each process (JAX_NUM_CPU_DEVICES).
    env: extra environment variables for every process.
    log_dir: where each process's combined stdout and stderr go
      (`process_<i>.log`); a temporary directory by default.
    port: the coordinator's port; a free one by default.
  """

  def __init__(self, command: Callable[[int, str], Sequence[str]],
               num_processes: int, *, devices_per_process: int = 2,
               env: Mapping[str, str] | None = None,
               log_dir: str | os.PathLike[str] | None = None,
               port: int | None = None):
    if num_processes < 1:
      raise ValueError(f'num_processes must be >= 1, got {num_processes}.')
    self.command = command
    self.num_processes = num_processes
    self.address = f'localhost:{port or free_port()}'
    self.env = dict(os.environ)
    # The parent's test settings (conftest.py) must not leak in.
    self.env.update({'JAX_NUM_CPU_DEVICES': str(devices_per_process),
                     'JAX_PLATFORMS': 'cpu',
                     'PYTHONPATH': os.pathsep.join(filter(None, [
                         str(REPO), self.env.get('PYTHONPATH')]))})
    self.env.update(env or {})
    self._tmp = None
    if log_dir is None:
      self._tmp = tempfile.TemporaryDirectory(prefix='gmp_multiprocess_')
      log_dir = self._tmp.name
    self.log_dir = pathlib.Path(log_dir)
    self.log_dir.mkdir(parents=True, exist_ok=True)
    self.processes: list[_Process] = []

  def start(self) -> LocalCluster:
    if self.processes:
      raise RuntimeError('This cluster was already started.')
    try:
      for i in range(self.num_processes):
        log_path = self.log_dir / f'process_{i}.log'
        with open(log_path, 'wb') as log:
          popen = subprocess.Popen(
              list(self.command(i, self.address)), cwd=REPO, env=self.env,
              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
              start_new_session=True)
        self.processes.append(_Process(i, popen, log_path))
    except BaseException:
      self.kill()
      raise
    return self

  def kill(self) -> None:
    """SIGKILLs every process group this cluster started and reaps them."""
    for p in self.processes:
      if p.popen.poll() is None:
        try:
          os.killpg(p.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
    for p in self.processes:
      try:
        p.popen.wait(timeout=30)
      except subprocess.TimeoutExpired:
        pass

  def outputs(self) -> list[str]:
    return [p.output() for p in self.processes]

  def _report(self, why: str) -> str:
    parts = [why]
    for p in self.processes:
      tail = p.output()[-3000:]
      parts.append(f'--- process {p.process_id} (exit code '
                   f'{p.popen.returncode}) ---\n{tail}')
    return '\n'.join(parts)

  def wait(self, timeout: float) -> list[str]:
    """Waits until every process exits; returns their outputs.

    Raises:
      ProcessFailed: a process exited with a non-zero code, or `timeout`
        seconds passed; every process still running has been killed.
    """
    deadline = time.monotonic() + timeout
    try:
      while True:
        codes = [p.popen.poll() for p in self.processes]
        failed = [p for p, c in zip(self.processes, codes) if c not in (None, 0)]
        if failed:
          self.kill()
          raise ProcessFailed(self._report(
              f'process {failed[0].process_id} exited with code '
              f'{failed[0].popen.returncode}; the others were killed.'))
        if all(c == 0 for c in codes):
          return self.outputs()
        if time.monotonic() > deadline:
          self.kill()
          raise ProcessFailed(self._report(
              f'timed out after {timeout:.0f} s; every process was killed.'))
        time.sleep(0.2)
    except BaseException:
      self.kill()
      raise

  def __enter__(self) -> LocalCluster:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.kill()
    if self._tmp is not None:
      self._tmp.cleanup()


def run(command: Callable[[int, str], Sequence[str]], num_processes: int, *,
        timeout: float, devices_per_process: int = 2,
        env: Mapping[str, str] | None = None,
        log_dir: str | os.PathLike[str] | None = None) -> list[str]:
  """Starts the processes, waits for all, returns their outputs.

  Raises:
    ProcessFailed: as `LocalCluster.wait`.
  """
  with LocalCluster(command, num_processes,
                    devices_per_process=devices_per_process, env=env,
                    log_dir=log_dir) as cluster:
    return cluster.wait(timeout)


def worker_command(target: str, out_dir: str | os.PathLike[str],
                   num_processes: int) -> Callable[[int, str], list[str]]:
  """argv builder running `module:function` in each process (see `main`)."""

  def command(process_id: int, address: str) -> list[str]:
    return [sys.executable, str(pathlib.Path(__file__).resolve()),
            f'--coordinator_address={address}',
            f'--num_processes={num_processes}',
            f'--process_id={process_id}', f'--target={target}',
            f'--out={out_dir}']

  return command


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--coordinator_address', required=True)
  parser.add_argument('--num_processes', type=int, required=True)
  parser.add_argument('--process_id', type=int, required=True)
  parser.add_argument('--target', required=True,
                      help='module:function in tests/, called with (out_dir)')
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(args.coordinator_address, args.num_processes,
                             args.process_id,
                             initialization_timeout=INIT_TIMEOUT_S)
  sys.path.insert(0, str(TESTS_DIR))
  module_name, function_name = args.target.split(':')
  getattr(importlib.import_module(module_name), function_name)(args.out)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main()
