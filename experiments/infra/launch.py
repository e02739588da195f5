"""The multi-process flags of `experiments.main`, checked before jax starts.

`check` validates `--coordinator_address`, `--num_processes` and
`--process_id` and, in a process other than 0, waits until the coordinator
answers. It needs neither jax nor the pipeline, so `experiments.main`
calls it before importing them: bad flags and a coordinator that never
answers fail in about a second instead of after those imports.
`distributed.join` then starts `jax.distributed` from what it returns
(`distributed.initialize` does both).
"""

from __future__ import annotations

import dataclasses
import socket
import time

DEFAULT_INIT_TIMEOUT_S = 300


class DistributedError(RuntimeError):
  """A multi-process run could not start (bad flags, no coordinator)."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins a multi-process run (`check`'s result).

  Attributes:
    coordinator_address: ``host:port`` of process 0; None with `auto`.
    num_processes: P; None with `auto`.
    process_id: this process, in [0, P); None with `auto`.
    auto: let JAX detect the cluster (`--distributed`).
    timeout_s: the flag's wait for every process, from `started`.
    started: `time.monotonic()` when the wait began.
  """
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  auto: bool
  timeout_s: int
  started: float

  @property
  def deadline(self) -> float:
    return self.started + self.timeout_s


def check(*, coordinator_address: str | None, num_processes: int | None,
          process_id: int | None, auto: bool = False,
          timeout_s: int = DEFAULT_INIT_TIMEOUT_S) -> Launch | None:
  """Checks the flags; in a process other than 0, waits for the coordinator.

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator.
    num_processes: P.
    process_id: this process, in [0, P).
    auto: `--distributed`: let JAX detect the cluster (Cloud TPU, SLURM)
      when the three flags above are not given.
    timeout_s: how long to wait for every process to connect.

  Returns:
    None for a one-process run, else what `distributed.join` needs.

  Raises:
    ValueError: some but not all of the three flags, a bad process id or
      count, or a malformed address.
    DistributedError: the coordinator did not answer within `timeout_s`.
  """
  started = time.monotonic()
  given = {'--coordinator_address': coordinator_address,
           '--num_processes': num_processes, '--process_id': process_id}
  missing = [k for k, v in given.items() if v is None]
  if len(missing) == 3:
    if not auto:
      return None
    return Launch(None, None, None, True, timeout_s, started)
  if missing:
    raise ValueError(
        f'A multi-process run needs --coordinator_address, --num_processes '
        f'and --process_id together; missing {", ".join(missing)}.')
  if num_processes < 1:
    raise ValueError(f'--num_processes must be >= 1, got {num_processes}.')
  if not 0 <= process_id < num_processes:
    raise ValueError(
        f'--process_id must be in [0, {num_processes}) for '
        f'--num_processes={num_processes}, got {process_id}.')
  host, _, port = coordinator_address.rpartition(':')
  if not host or not port.isdigit():
    raise ValueError(f'--coordinator_address must be host:port, got '
                     f'{coordinator_address!r}.')
  launch = Launch(coordinator_address, num_processes, process_id, False,
                  timeout_s, started)
  if process_id != 0:
    # JAX aborts the process when the coordinator never answers; a plain
    # TCP probe first turns that case into a clear error.
    _wait_for_port(host, int(port), launch.deadline, what=(
        f'Process {process_id} of {num_processes}: no coordinator answered '
        f'at {coordinator_address} within {timeout_s} s. Start process 0 '
        'with the same --coordinator_address (it serves that port), or '
        'raise --distributed_timeout_s.'))
  return launch


def _wait_for_port(host: str, port: int, deadline: float, *, what: str
                   ) -> None:
  """Returns once `host:port` accepts a TCP connection; raises at `deadline`."""
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return
    except OSError:
      if time.monotonic() >= deadline:
        raise DistributedError(what) from None
      time.sleep(0.5)


__all__ = ('DEFAULT_INIT_TIMEOUT_S', 'DistributedError', 'Launch', 'check')
