"""The pipeline's test set, held on the device, evaluated by `gmp_jax.evaluate`.

`TestSet.evaluator` gives `params -> {'accuracy', 'cross_entropy'}`, one
compiled call of `gmp_jax.evaluate` (the batches in a `lax.map` for 'scan',
the pipeline's choice on every backend, or unrolled for 'unroll'), compiled
once per model; `epoch_metrics` builds a training stage's per-epoch test
metrics from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gmp_jax
from experiments.infra import loop


class TestSet:
  """A test split on the device, evaluated in batches inside one program.

  Attributes:
    x: images, on the device.
    labels: int labels, on the device.
    batch_size: examples per batch (the last batch may be smaller).
    kind: 'unroll' or 'scan' (`loop.KINDS`), how the batches run.
    place: on a mesh, `tree -> tree` putting arrays every process holds
      whole on every device (`distributed.Runtime.put`); the test set and
      the evaluated params go through it. None: the default device.
  """

  def __init__(self, x: np.ndarray, labels: np.ndarray, *, batch_size: int,
               kind: str, place: Callable[[Any], Any] | None = None):
    if len(x) != len(labels):
      raise ValueError(f'x has {len(x)} examples but labels has '
                       f'{len(labels)}.')
    if len(x) == 0:
      raise ValueError('Cannot evaluate on an empty dataset.')
    if kind not in loop.KINDS:
      raise ValueError(f'kind must be one of {loop.KINDS}, got {kind!r}.')
    self.place = place or (lambda tree: tree)
    self.x, self.labels = (jax.device_put((x, labels)) if place is None
                           else place((x, labels)))
    self.batch_size = int(batch_size)
    self.kind = kind

  def evaluator(self, apply_fn: Callable[[Any, Any], Any]):
    """`params -> {'accuracy', 'cross_entropy'}` (host floats)."""
    eval_step = gmp_jax.make_eval_step(apply_fn)

    def evaluate(params) -> dict[str, float]:
      return gmp_jax.evaluate(eval_step, self.place(params), self.x,
                              self.labels, batch_size=self.batch_size,
                              kind=self.kind)

    return evaluate


def merge_options(config) -> dict[str, Any]:
  """`gmp_jax.merge_components`' keyword arguments from a pipeline config.

  The postprocess stage merges with them, and so do the retraining's
  per-epoch pruned metrics. A config without `postprocess.max_components`
  (written before the field existed) merges without a cap, as it did then.

  Raises:
    ValueError: a `postprocess.max_components` that is neither None nor an
      int >= 2 (checked before any stage runs, `config_check`).
  """
  pc = config.postprocess
  cap = pc.get('max_components')
  if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)
                          or cap < 2):
    raise ValueError('postprocess.max_components must be None (no cap) or '
                     'an int >= 2 (the zero value and one other), got '
                     f'{cap!r}.')
  return {'threshold': pc.merge_threshold, 'max_components': cap}


def epoch_metrics(evaluate: Callable[[Any], dict[str, float]], *,
                  pruned: bool, raw: bool = True, metric: str = 'accuracy',
                  params_of: Callable[[Any], Any] | None = None,
                  merge: Mapping[str, Any] | None = None
                  ) -> Callable[[Any], dict[str, float]]:
  """`state -> {metric: float}` for a training stage's epoch ends.

  With `raw`, ``test_<key>`` of every metric of the weights (`params_of`
  of the state, by default its `params`: the finetune stage passes the
  quantised params of its state); with `pruned`, ``test_pruned_<metric>``
  of their quantised copy (`gmp_jax.quantize` with the state's mixture,
  merged by `gmp_jax.merge_components` with the keyword arguments `merge`,
  the postprocess stage's `merge_options`; None = the library's defaults)
  and its `nonzero_fraction`.
  Every evaluation is one call of `evaluate` (from `TestSet.evaluator` or
  a task's `evaluator`), so the epoch metrics reuse the program that
  evaluates the final weights. Each is one pass over the test set (0.43 s
  for the poster network's 10,000 images on 2 CPU cores, 11% of a
  retraining epoch's steps there).
  """
  if not (raw or pruned):
    raise ValueError('epoch_metrics needs raw or pruned (or both).')
  params_of = params_of or (lambda state: state.params)
  merge = dict(merge or {})

  def metrics(state: gmp_jax.TrainState) -> dict[str, float]:
    out = {}
    if raw:
      out.update({f'test_{k}': v
                  for k, v in evaluate(params_of(state)).items()})
    if pruned:
      # Merged first, as post-processing will: an unmerged component next
      # to 0 would hold weights that the file prunes.
      q = gmp_jax.quantize(state.params,
                           gmp_jax.merge_components(state.mixture, **merge))
      out[f'test_pruned_{metric}'] = evaluate(q)[metric]
      leaves = jax.tree.leaves(q)
      nonzero = sum(int(jnp.count_nonzero(w)) for w in leaves)
      out['nonzero_fraction'] = nonzero / sum(w.size for w in leaves)
    return out

  return metrics
