"""Runs on a device mesh, in one process or several (`jax.distributed`).

`initialize` starts this process's part of a multi-process run from the
`experiments.mnist` flags (`launch` checks them without jax; `join` starts
`jax.distributed`). `Runtime` is what the pipeline and the train loop
need to know about the mesh (`config.mesh`):

* where arrays go: the train state replicated (data parallel) or split
  FSDP-style (`sharding.fsdp_sharding`), every global batch split over the
  ``data`` axis;
* the data path: for every epoch, each process gathers only its own rows of
  every batch on the host and the epoch's batches become one global
  `(steps, batch, ...)` array through `jax.make_array_from_process_local_data`;
* who writes: process 0 writes every file of the workdir except the Orbax
  checkpoints, which all processes write together; `barrier` lets the
  others read what it wrote.

The global batch is the configured one whatever the number of devices, and
the batches and their order depend only on the seed, so a run on 1 device
and one on 4 train on the same batches.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from experiments.infra import launch as launch_lib
from experiments.infra import sharding

DEFAULT_INIT_TIMEOUT_S = launch_lib.DEFAULT_INIT_TIMEOUT_S
DistributedError = launch_lib.DistributedError


def initialize(*, coordinator_address: str | None,
               num_processes: int | None, process_id: int | None,
               auto: bool = False,
               timeout_s: int = DEFAULT_INIT_TIMEOUT_S) -> bool:
  """Calls `jax.distributed.initialize` when the flags ask for it.

  `launch.check` then `join`; `experiments.main` calls the two apart, the
  check before it imports jax. The arguments and errors are `launch.check`'s.

  Returns:
    Whether this is a distributed run.
  """
  return join(launch_lib.check(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, auto=auto, timeout_s=timeout_s))


def join(launch: launch_lib.Launch | None) -> bool:
  """Starts this process's part of the run `launch_lib.check` returned.

  Waits for every process until the flag's timeout, counted from the check.

  Returns:
    Whether this is a distributed run (False for `launch` None).

  Raises:
    DistributedError: not every process joined in time.
  """
  if launch is None:
    return False
  remaining = max(1, int(launch.deadline - time.monotonic()))
  if launch.auto:
    try:
      jax.distributed.initialize(initialization_timeout=remaining)
    except Exception as e:  # pylint: disable=broad-except
      raise DistributedError(
          f'--distributed: jax.distributed.initialize() found no cluster or '
          f'could not connect within {launch.timeout_s} s: {e}') from e
    return True
  logging.info('Joining a %d-process run at %s as process %d (waiting up '
               'to %d s for every process).', launch.num_processes,
               launch.coordinator_address, launch.process_id,
               launch.timeout_s)
  try:
    jax.distributed.initialize(
        launch.coordinator_address, launch.num_processes, launch.process_id,
        initialization_timeout=remaining)
  except Exception as e:  # pylint: disable=broad-except
    raise DistributedError(
        f'Process {launch.process_id} of {launch.num_processes} could not '
        f'join the run at {launch.coordinator_address} within '
        f'{launch.timeout_s} s (is process 0 running and reachable, and are '
        f'all {launch.num_processes} processes started?): {e}') from e
  return True


@dataclasses.dataclass(frozen=True)
class Runtime:
  """The mesh of a run and how arrays are laid out on it.

  Attributes:
    mesh: one ``data`` axis over the run's devices.
    fsdp: split the large arrays of the train state (else replicate).
    fsdp_min_size: arrays smaller than this stay replicated under FSDP.
  """
  mesh: jax.sharding.Mesh
  fsdp: bool = False
  fsdp_min_size: int = sharding.DEFAULT_MIN_SIZE

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def epoch_sharding(self) -> NamedSharding:
    """(steps, batch, ...) arrays: each step's batch split over ``data``."""
    return NamedSharding(self.mesh, P(None, 'data'))

  @property
  def is_writer(self) -> bool:
    return jax.process_index() == 0

  def describe(self) -> dict[str, int]:
    return {'num_processes': jax.process_count(),
            'num_devices': self.num_devices}

  def state_sharding(self, state) -> Any:
    if self.fsdp:
      return sharding.fsdp_sharding(state, self.mesh,
                                    min_size=self.fsdp_min_size)
    return sharding.replicated_sharding(state, self.mesh)

  def put(self, tree, shardings=None) -> Any:
    """Global arrays from a tree every process holds whole (host or local).

    Args:
      tree: arrays every process holds whole, or arrays already on the mesh.
      shardings: a tree of `NamedSharding`s on this mesh; None: keep arrays
        already on the mesh and replicate the others.
    """
    keep_on_mesh = shardings is None
    if shardings is None:
      shardings = jax.tree.map(lambda _: self.replicated, tree)

    def place(x, s):
      if isinstance(x, jax.Array):
        on_mesh = (isinstance(x.sharding, NamedSharding)
                   and x.sharding.mesh == self.mesh)
        if x.sharding == s or (keep_on_mesh and on_mesh):
          return x
        if on_mesh:  # A global array: let JAX move its shards.
          return jax.device_put(x, s)
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, s,
                                          lambda idx: host[idx])

    return jax.tree.map(place, tree, shardings)

  def check_batch_size(self, batch_size: int, what: str) -> None:
    if batch_size % self.num_devices:
      raise ValueError(
          f'{what} is {batch_size}, which does not split evenly over the '
          f'{self.num_devices} devices of the mesh; use a multiple of '
          f'{self.num_devices} (the global batch stays the configured one '
          'whatever the device count).')

  def epoch_batches(self, data: Mapping[str, np.ndarray],
                    order: np.ndarray) -> dict[str, jax.Array]:
    """The batches of one epoch as global `(steps, batch, ...)` arrays.

    Args:
      data: the training arrays on the host (leading example axis).
      order: `(steps, batch)` example indices, the same in every process.

    Each process gathers only the columns of `order` its devices hold.
    """
    steps, batch = order.shape
    self.check_batch_size(batch, 'The batch size')
    rows = sharding.process_batch_slice(
        batch, NamedSharding(self.mesh, P('data')))
    local = order[:, rows]
    return {k: jax.make_array_from_process_local_data(
        self.epoch_sharding, np.asarray(v)[local],
        (steps, batch, *np.shape(v)[1:])) for k, v in data.items()}

  def gather(self, tree) -> Any:
    """Host NumPy copies of global arrays (every process must call it)."""
    if jax.process_count() == 1:
      return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)

  def barrier(self, name: str) -> None:
    """Waits until every process gets here (a no-op in one process)."""
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(name)


def make_runtime(config: ml_collections.ConfigDict) -> Runtime | None:
  """The run's `Runtime` from `config.mesh`; None for one device.

  One device in one process keeps the single-device path (the dataset on
  the device, no mesh). `config.mesh.num_devices` None means every device
  of every process.

  Raises:
    ValueError: the mesh does not match the devices: more devices asked
      for than there are, fewer than all in a multi-process run, or a batch
      size that does not split over them.
  """
  mc = config.get('mesh') or ml_collections.ConfigDict()
  available = jax.device_count()
  wanted = mc.get('num_devices')
  if wanted is None:
    wanted = available
  if not 1 <= wanted <= available:
    raise ValueError(
        f'config.mesh.num_devices={wanted} does not match the devices: this '
        f'run has {available} ({jax.process_count()} process(es) x '
        f'{jax.local_device_count()}; on CPU JAX_NUM_CPU_DEVICES sets the '
        'count per process).')
  if jax.process_count() > 1 and wanted != available:
    raise ValueError(
        f'config.mesh.num_devices={wanted} does not match the devices: a '
        f'multi-process run uses all {available} devices of its '
        f'{jax.process_count()} processes.')
  if wanted == 1:
    return None
  runtime = Runtime(
      sharding.data_mesh(jax.devices()[:wanted]), fsdp=bool(mc.get('fsdp')),
      fsdp_min_size=mc.get('fsdp_min_size') or sharding.DEFAULT_MIN_SIZE)
  for path in ('teacher.batch_size', 'retrain.batch_size'):
    section, key = path.split('.')
    runtime.check_batch_size(config[section][key], f'config.{path}')
  return runtime


__all__ = ('DEFAULT_INIT_TIMEOUT_S', 'DistributedError', 'Runtime',
           'initialize', 'join', 'make_runtime')
