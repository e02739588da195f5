"""`make_multi_step`: several train steps per compiled call.

The one way the library, the experiments' loop and the benchmarks run more
than one step per call, for any of the three train steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

KINDS = ('unroll', 'scan')


def make_multi_step(train_step: Callable[[Any, Any], Any], *,
                    kind: str = 'unroll', indexed: bool = True):
  """Runs several train steps per call.

  `kind` chooses how the steps run:

  * 'unroll' (the CPU choice): the steps are unrolled into one program. On
    CPU, XLA runs convolutions inside a while-loop body several times
    slower (measured 350-490 ms vs 41-60 ms per step for the poster
    network, see BUILD_NOTES.md). Each distinct number of steps per call
    compiles once, so keep it small (1-10) and constant.
  * 'scan' (GPU and TPU): one `lax.scan` over the steps; any number of
    steps compiles to one loop body.

  Args:
    train_step: a pure `(state, batch) -> (state, metrics)` step
      (`make_train_step`, `make_codebook_step`,
      `make_straight_through_step`).
    kind: 'unroll' or 'scan'.
    indexed: True: the call is `(state, data, indices)`, where `data` is a
      dict of arrays with a leading example axis (kept on the device
      across calls) and `indices` an int array of shape
      `(num_steps, batch_size)`; step t trains on `data[indices[t]]`.
      False: the call is `(state, batches)` with `(num_steps, batch, ...)`
      arrays, already gathered (e.g. laid out over a mesh); step t trains
      on `batches[t]`.

  Returns:
    The pure multi-step; compile it with `compile_step`. Metrics are
    stacked along a leading step axis.

  Raises:
    ValueError: an unknown `kind`.
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}.')
  if indexed and kind == 'unroll':

    def multi_step(state, data, indices):
      history = []
      for t in range(indices.shape[0]):  # Static unroll, see above.
        batch = jax.tree.map(lambda a: jnp.take(a, indices[t], axis=0), data)
        state, metrics = train_step(state, batch)
        history.append(metrics)
      return state, jax.tree.map(lambda *xs: jnp.stack(xs), *history)

  elif indexed:

    def multi_step(state, data, indices):
      def body(state, idx):
        return train_step(state, jax.tree.map(
            lambda a: jnp.take(a, idx, axis=0), data))
      return jax.lax.scan(body, state, indices)

  elif kind == 'unroll':

    def multi_step(state, batches):
      history = []
      for t in range(jax.tree.leaves(batches)[0].shape[0]):
        state, metrics = train_step(state, jax.tree.map(lambda a: a[t],
                                                        batches))
        history.append(metrics)
      return state, jax.tree.map(lambda *xs: jnp.stack(xs), *history)

  else:

    def multi_step(state, batches):
      return jax.lax.scan(train_step, state, batches)

  return multi_step
