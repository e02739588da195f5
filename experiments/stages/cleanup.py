"""The cleanup stage: lossless structural cleanup of a pruned network.

`run` reads `finetune/quantized.gmpz`, zeroes the weights of dead and
unread units of a `SequentialNet` (`cleanup`; any other model, or
`postprocess.cleanup=False`, passes through unchanged) and writes
`cleanup/quantized.gmpz` (`OUTPUTS`). It computes nothing on the mesh
(`HOST_ONLY`). `python -m experiments.stages.cleanup FILE...` prints what
the cleanup removes from compressed model files.

Two kinds of units of a `SequentialNet` (experiments/image/models.py) can lose all
their weights without changing a single prediction:

* **dead** units, whose output is exactly zero for every input. A unit (a
  dense unit or a conv output channel) of layer j with all incoming weights
  pruned computes the constant b_c; after the layer's ReLU, if any, and its
  max-pool (the max of a constant), it outputs

    relu(b_c) = 0 when b_c <= 0   (layers with a ReLU), or
    b_c = 0   when b_c == 0       (layers without one).

  Every weight of layer j+1 that reads a dead unit multiplies an exact zero,
  so those outgoing weights are zeroed.
* **unread** units, whose every outgoing weight in layer j+1 is zero. Their
  output is multiplied by zero wherever it is used, so their incoming
  weights and bias are zeroed.

Zeroing outgoing weights can make units of the next layer dead, and zeroing
incoming weights can leave units of the previous layer unread, so the two
rules are applied layer by layer until nothing changes (a fixed point).

Which weights of layer j+1 read unit c of layer j: for a conv layer j+1,
the input-channel slice `kernel[:, :, c, :]`; for a dense layer j+1 after a
conv layer with C channels, the rows `c, c + C, c + 2C, ...` of its kernel
(the flatten is in NHWC order, row = (h W + w) C + c); after a dense layer,
row c.

Exactness: for finite inputs, every product that changes was ±0 before and
is +0 after, so the logits are equal (`jnp.array_equal`); only the sign of
an exact zero could in principle differ. The last layer's units (the logits)
are always read.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import os
from typing import Any

from absl import app
import jax
import numpy as np

import gmp_jax
from experiments.image import models
from experiments.infra import cli
from experiments.infra import monitor


@dataclasses.dataclass
class LayerCleanup:
  """What the cleanup found and removed in one layer (all passes).

  Attributes:
    units: the layer's output units (channels for conv layers).
    dead_units: units whose output is exactly zero in the input params.
    dead_units_final: units whose output is exactly zero at the fixed point
      (the dead ones plus those the cleanup emptied).
    dead_outgoing_weights: non-zero weights of the next layer that read a
      dead unit, zeroed.
    unread_units: units that no weight of the next layer reads and that had
      non-zero incoming weights or bias, which were zeroed.
    unread_kernel_weights: non-zero incoming weights of unread units, zeroed.
    unread_biases: non-zero biases of unread units, zeroed.
  """
  units: int
  dead_units: int = 0
  dead_units_final: int = 0
  dead_outgoing_weights: int = 0
  unread_units: int = 0
  unread_kernel_weights: int = 0
  unread_biases: int = 0


@dataclasses.dataclass
class CleanupReport:
  """Counts of a cleanup run.

  Attributes:
    layers: per-layer `LayerCleanup`, in layer order.
    passes: passes over the layers until the fixed point (the last one
      changes nothing).
    nonzero_before: non-zero entries of every leaf before.
    nonzero_after: non-zero entries after.
  """
  layers: dict[str, LayerCleanup]
  passes: int
  nonzero_before: int
  nonzero_after: int

  @property
  def removed(self) -> int:
    return self.nonzero_before - self.nonzero_after

  def to_dict(self) -> dict[str, Any]:
    return {'layers': {k: dataclasses.asdict(v)
                       for k, v in self.layers.items()},
            'passes': self.passes, 'nonzero_before': self.nonzero_before,
            'nonzero_after': self.nonzero_after, 'removed': self.removed}

  def summary(self) -> str:
    lines = [f'cleanup: {self.removed:,} of {self.nonzero_before:,} non-zeros '
             f'removed ({100 * self.removed / max(self.nonzero_before, 1):.2f}%)'
             f', {self.passes} passes']
    for name, r in self.layers.items():
      lines.append(
          f'  {name}: {r.dead_units} of {r.units} units dead, carrying '
          f'{r.dead_outgoing_weights} outgoing weights; {r.unread_units} '
          f'unread, holding {r.unread_kernel_weights} weights and '
          f'{r.unread_biases} biases; {r.dead_units_final} dead at the end')
    return '\n'.join(lines)


def _nonzero(tree) -> int:
  return sum(int(np.count_nonzero(x)) for x in jax.tree.leaves(tree))


def _incoming(kernel: np.ndarray) -> np.ndarray:
  """(units, fan_in) view of a kernel's incoming weights per output unit."""
  return kernel.reshape(-1, kernel.shape[-1]).T


def _reads(kernel: np.ndarray, spec: models.LayerSpec, units: int
           ) -> np.ndarray:
  """(units, ...) view of the weights of `kernel` that read each input unit.

  A view into `kernel` (which must be C-contiguous), so writes go through.
  """
  if spec.kind == 'conv':
    return np.moveaxis(kernel, 2, 0)  # (units, kh, kw, out)
  fan_in = kernel.shape[0]
  if fan_in % units:
    raise ValueError(f'{spec.name}: {fan_in} inputs is not a multiple of the '
                     f'previous layer\'s {units} units.')
  # Row (h W + w) C + c reads channel c: rows reshape to (HW, C, out).
  return np.moveaxis(kernel.reshape(fan_in // units, units, -1), 1, 0)


def _dead(kernel: np.ndarray, bias: np.ndarray, spec: models.LayerSpec
          ) -> np.ndarray:
  """Units whose output is exactly zero for every (finite) input."""
  no_input = ~np.any(_incoming(kernel) != 0, axis=1)
  zero_out = (bias <= 0) if spec.relu else (bias == 0)
  return no_input & zero_out


def cleanup(params: Mapping[str, Any], model: str | models.SequentialNet
            ) -> tuple[dict[str, Any], CleanupReport]:
  """Zeroes the weights of dead and unread units until a fixed point.

  Args:
    params: the (pruned, quantised) parameter dict of `model`, e.g. loaded
      from a compressed file; a `{'params': ...}` wrapper is accepted.
    model: a model name accepted by `models.get_model`, or a model.

  Returns:
    `(params, report)`: a new dict of NumPy arrays (same dtypes and shapes;
    the input is not modified) with bit-identical predictions, and the
    `CleanupReport`.

  Raises:
    ValueError: the params do not fit the model's layers.
  """
  if set(params) == {'params'}:
    params = params['params']
  net = model if isinstance(model, models.SequentialNet) else (
      models.get_model(model))
  if not isinstance(net, models.SequentialNet):
    raise ValueError(f'{model!r} is not a SequentialNet of LayerSpecs.')
  specs = tuple(net.layers)
  names = [s.name for s in specs]
  if set(params) != set(names):
    raise ValueError(f'params have layers {sorted(params)}, the model has '
                     f'{names}.')
  out = {name: {k: np.array(jax.device_get(v), copy=True, order='C')
                for k, v in params[name].items()} for name in names}
  for s in specs:
    layer = out[s.name]
    if set(layer) != {'kernel', 'bias'}:
      raise ValueError(f'{s.name}: expected kernel and bias, got '
                       f'{sorted(layer)}.')
    kernel, bias = layer['kernel'], layer['bias']
    if kernel.shape[-1] != s.features or bias.shape != (s.features,):
      raise ValueError(f'{s.name}: kernel {kernel.shape} and bias '
                       f'{bias.shape} do not have {s.features} units.')
    if not (np.all(np.isfinite(kernel)) and np.all(np.isfinite(bias))):
      raise ValueError(f'{s.name}: non-finite weights.')
  stats = {s.name: LayerCleanup(units=s.features) for s in specs}
  for s in specs:
    stats[s.name].dead_units = int(
        _dead(out[s.name]['kernel'], out[s.name]['bias'], s).sum())
  unread_seen = {s.name: np.zeros(s.features, bool) for s in specs}
  before = _nonzero(out)
  passes = 0
  changed = True
  while changed:
    changed = False
    passes += 1
    for j in range(len(specs) - 1):
      spec, nxt = specs[j], specs[j + 1]
      layer, nlayer = out[spec.name], out[nxt.name]
      st = stats[spec.name]
      units = spec.features
      reads = _reads(nlayer['kernel'], nxt, units)
      # Dead units: zero the weights reading them.
      dead = _dead(layer['kernel'], layer['bias'], spec)
      outgoing = int(np.count_nonzero(reads[dead]))
      if outgoing:
        reads[dead] = 0
        st.dead_outgoing_weights += outgoing
        changed = True
      # Unread units: zero their incoming weights and bias.
      unread = ~np.any(reads.reshape(units, -1) != 0, axis=1)
      kernel_nz = np.count_nonzero(_incoming(layer['kernel'])[unread], axis=1)
      bias_nz = layer['bias'][unread] != 0
      if kernel_nz.sum() or bias_nz.sum():
        emptied = np.flatnonzero(unread)[(kernel_nz > 0) | bias_nz]
        unread_seen[spec.name][emptied] = True
        st.unread_kernel_weights += int(kernel_nz.sum())
        st.unread_biases += int(bias_nz.sum())
        layer['kernel'].reshape(-1, units)[:, unread] = 0
        layer['bias'][unread] = 0
        changed = True
  for s in specs:
    stats[s.name].unread_units = int(unread_seen[s.name].sum())
    stats[s.name].dead_units_final = int(
        _dead(out[s.name]['kernel'], out[s.name]['bias'], s).sum())
  return out, CleanupReport(layers=stats, passes=passes,
                            nonzero_before=before,
                            nonzero_after=_nonzero(out))


# ----------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------

QUANTIZED_FILE = 'cleanup/quantized.gmpz'
OUTPUTS = (QUANTIZED_FILE,)
HOST_ONLY = True


def run(ctx) -> dict[str, Any]:
  """Zeroes the weights of dead and unread units (predictions unchanged)."""
  student = ctx.results['retrain']['student']
  info = gmp_jax.load_compressed_with_info(
      ctx.path('finetune', 'quantized.gmpz'))
  quantized, meta = info.params, info.metadata
  key = f'test_{ctx.metric}'
  record = {key: ctx.results['finetune'][key]}
  enabled = ctx.config.postprocess.get('cleanup', True)
  net = models.get_model(student, ctx.checked.dataset)
  if enabled and isinstance(net, models.SequentialNet):
    quantized, found = cleanup(quantized, net)
    record.update(found.to_dict())
    monitor.log_info('%s', found.summary())
  else:
    record['skipped'] = 'disabled' if not enabled else 'not a SequentialNet'
  gmp_jax.save_compressed(ctx.path(QUANTIZED_FILE), quantized,
                          codebook_dtype='float32', metadata=meta)
  return record


def main(argv: list[str]) -> int:
  """Prints what the cleanup removes from compressed model files.

    python -m experiments.stages.cleanup results/mnist/model.gmpz [...]

  Also the file's size as it is, re-encoded in the current format with the
  model name as its only metadata (what the pipeline's save stage writes),
  and the same after the cleanup.
  """
  from gmp_jax import codec  # pylint: disable=import-outside-toplevel
  if len(argv) < 2:
    raise app.UsageError('expected one or more .gmpz files')
  for path in argv[1:]:
    info = codec.load_compressed_with_info(path)
    params, metadata = info.params, info.metadata
    model = (metadata or {}).get('model', 'poster')
    cleaned, report = cleanup(params, model)
    print(f'{path} ({model}):')
    print(report.summary())
    lean = {'model': model}
    sizes = (os.path.getsize(path),
             len(codec.to_bytes(params, metadata=lean)),
             len(codec.to_bytes(cleaned, metadata=lean)))
    print(f'  file: {sizes[0]:,} bytes as committed; format version '
          f'{codec.FORMAT_VERSION} with only the model name: {sizes[1]:,}; '
          f'after the cleanup: {sizes[2]:,}')
  return 0


def _define_flags() -> None:
  """No flags: the command line is the files."""


if __name__ == '__main__':
  cli.run(_define_flags, main)
