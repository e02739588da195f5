"""Shardings for data-parallel and FSDP-style training on a device mesh.

The library's functions contain no device placement: `jax.jit` partitions
them according to the shardings of their inputs. This module only says where
the inputs go. Two layouts over one mesh axis (``'data'`` by default):

* data parallel: every array of the train state replicated
  (`replicated_sharding`), the batch split along its first axis
  (`batch_sharding`);
* FSDP: in addition, the large arrays of the state split along their LAST
  axis (`fsdp_sharding`), so each device holds 1 / D of the weights and of
  their optimiser moments, and XLA gathers a weight where a layer needs it.

Why the last axis: the mixture prior (`gmp_jax.mixture_log_prob`) sees every
leaf as rows of its last axis and sums the rows first, then the last axis.
Split along the last axis, each device sums its own columns, and the whole
prior, value and gradients, communicates 3K + 1 floats per split leaf (the
per-component sums and the value), which XLA sends as one all-reduce. That
is the only cost of the prior under FSDP; the weights' own prior gradient
never leaves the device. `tests/sharding_test.py` checks this in the
compiled program.

The mesh axis must be of type `AxisType.Auto` (what `data_mesh` builds):
under `Explicit` axes, JAX asks model code for output shardings of some
operations (convolutions, for one), which a sharding-agnostic model does not
give.

Example::

  mesh = data_mesh()
  state_sharding = fsdp_sharding(state, mesh)
  state = jax.device_put(state, state_sharding)
  step = gmp_jax.compile_step(train_step, donate_state=True,
                              out_shardings=(state_sharding, None))
  state, metrics = step(state, jax.device_put(batch, batch_sharding(mesh)))

Pinning the output shardings keeps the state's layout from step to step:
left to itself, XLA may return some arrays split differently (a bias split
along its only axis, say), and the next call would compile again.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gmp_jax

__all__ = (
    'batch_sharding',
    'data_mesh',
    'DEFAULT_MIN_SIZE',
    'fsdp_sharding',
    'fsdp_spec',
    'process_batch_slice',
    'replicated_sharding',
)

# Arrays with fewer entries stay replicated under FSDP: a copy costs little
# memory, and a split one costs an all-gather per use.
DEFAULT_MIN_SIZE = 2**14


def data_mesh(devices=None, *, axis: str = 'data') -> Mesh:
  """A one-axis mesh over `devices` (default: every device of every process).

  The axis has type `AxisType.Auto`: XLA partitions the computation from
  the input shardings.

  Raises:
    ValueError: `devices` is empty or repeats a device.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError('data_mesh needs at least one device, got none.')
  if len({d.id for d in devices}) != len(devices):
    raise ValueError(f'data_mesh got a device twice: {devices}.')
  return Mesh(np.array(devices), (axis,),
              axis_types=(jax.sharding.AxisType.Auto,))


def _check_axis(mesh: Mesh, axis: str) -> int:
  if not isinstance(mesh, Mesh):
    raise TypeError(f'Expected a jax.sharding.Mesh, got {type(mesh).__name__}.')
  if axis not in mesh.shape:
    raise ValueError(
        f'The mesh has no axis {axis!r}; its axes are {tuple(mesh.shape)}.')
  return mesh.shape[axis]


def fsdp_spec(shape: tuple[int, ...], axis_size: int, *, axis: str = 'data',
              min_size: int = DEFAULT_MIN_SIZE) -> PartitionSpec:
  """The FSDP `PartitionSpec` of one array of shape `shape`.

  The last axis is split over `axis` when the array has at least `min_size`
  entries and its last axis is a multiple of `axis_size`; otherwise the
  array is replicated (`PartitionSpec()`).
  """
  if axis_size < 1:
    raise ValueError(f'axis_size must be >= 1, got {axis_size!r}.')
  shape = tuple(shape)
  if (not shape or math.prod(shape) < min_size
      or shape[-1] % axis_size or axis_size == 1):
    return PartitionSpec()
  return PartitionSpec(*([None] * (len(shape) - 1)), axis)


def fsdp_sharding(tree: Any, mesh: Mesh, *, axis: str = 'data',
                  min_size: int = DEFAULT_MIN_SIZE) -> Any:
  """`NamedSharding`s for `tree` (params or a whole train state), FSDP-style.

  Every array leaf gets `fsdp_spec(leaf.shape, mesh.shape[axis])`; a
  `GaussianMixture` anywhere in the tree is replicated whatever its size,
  since every device needs the whole mixture for its share of the prior.
  Optimiser moments have the shapes of the weights, so they are split like
  them.

  Args:
    tree: a pytree of arrays (or of `jax.ShapeDtypeStruct`).
    mesh: the device mesh.
    axis: the mesh axis to split over.
    min_size: arrays with fewer entries are replicated.

  Returns:
    A pytree of `NamedSharding` with the structure of `tree`, for
    `jax.device_put` or `jax.jit(..., in_shardings=...)`.

  Raises:
    ValueError: the mesh has no axis `axis`, or `min_size` < 1.
    TypeError: `mesh` is not a `jax.sharding.Mesh`.
  """
  size = _check_axis(mesh, axis)
  if min_size < 1:
    raise ValueError(f'min_size must be >= 1, got {min_size!r}.')
  replicated = NamedSharding(mesh, PartitionSpec())

  def leaf_sharding(leaf):
    if isinstance(leaf, gmp_jax.GaussianMixture):
      return jax.tree.map(lambda _: replicated, leaf)
    return NamedSharding(mesh, fsdp_spec(
        getattr(leaf, 'shape', ()), size, axis=axis, min_size=min_size))

  return jax.tree.map(
      leaf_sharding, tree,
      is_leaf=lambda x: isinstance(x, gmp_jax.GaussianMixture))


def replicated_sharding(tree: Any, mesh: Mesh) -> Any:
  """A replicated `NamedSharding` for every leaf of `tree` (data parallel)."""
  if not isinstance(mesh, Mesh):
    raise TypeError(f'Expected a jax.sharding.Mesh, got {type(mesh).__name__}.')
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(lambda _: replicated, tree)


def batch_sharding(mesh: Mesh, *, axis: str = 'data') -> NamedSharding:
  """Splits an array's first (example) axis over `axis`, e.g. a batch."""
  _check_axis(mesh, axis)
  return NamedSharding(mesh, PartitionSpec(axis))


def process_batch_slice(batch_size: int, sharding: NamedSharding) -> slice:
  """The rows of a global batch that this process holds under `sharding`.

  In a multi-process run each process loads only these rows of every global
  batch and passes them to `jax.make_array_from_process_local_data(sharding,
  rows)`, which assembles the global `(batch_size, ...)` array.

  Args:
    batch_size: the global batch size.
    sharding: how the batch's first axis is split, e.g. `batch_sharding`.

  Returns:
    A `slice(start, stop)` of the global batch (all of it when the batch is
    replicated).

  Raises:
    ValueError: `batch_size` does not split evenly over the devices, or this
      process's rows are not one contiguous block.
  """
  if not isinstance(sharding, NamedSharding):
    raise TypeError(
        f'Expected a NamedSharding, got {type(sharding).__name__}.')
  spec = tuple(sharding.spec)
  if spec and spec[0] is not None:
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    parts = math.prod(sharding.mesh.shape[a] for a in axes)
    if batch_size % parts:
      raise ValueError(
          f'The global batch of {batch_size} examples does not split evenly '
          f'over {parts} devices (mesh axes {axes}); use a batch size that '
          f'is a multiple of {parts}.')
  rows = sorted({(s[0].start or 0, batch_size if s[0].stop is None
                  else s[0].stop) for s in
                 sharding.addressable_devices_indices_map(
                     (batch_size,)).values()})
  start, stop = rows[0][0], rows[0][1]
  for lo, hi in rows[1:]:
    if lo > stop:
      raise ValueError(
          f'This process holds rows {rows} of the batch, not one block; '
          'order the mesh devices by process.')
    stop = max(stop, hi)
  return slice(start, stop)
