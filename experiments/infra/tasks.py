"""Tasks: what the pipeline computes for a kind of problem.

A `Task` bundles what differs between, say, image classification and
language modelling, so that the pipeline's stages call it instead of
assuming labels of shape (B,) and logits of shape (B, classes):

* `train_arrays`: the arrays a training stage steps over (rows are
  examples), e.g. ``{'x': images, 'label': classes}`` or
  ``{'x': tokens (N, T), 'label': next tokens (N, T)}``;
* `data_loss_fn`: the teacher's data term, `(outputs, batch) -> (loss,
  metrics)`, or None for `gmp_jax.make_train_step`'s label cross-entropy
  (which already averages over every axis of (B, T, V) logits);
* `eval_step` and `summarize`: the sums of one test batch and the metrics
  from their totals, e.g. accuracy, or bits per byte
  :math:`\\mathrm{bpb} = \\sum_{b,t} -\\ln p(y_{bt}) / (N_{\\mathrm{bytes}}
  \\ln 2)`;
* `metric`: the headline metric's key (records store it as
  ``test_<metric>``), and whether higher is better;
* `test_set`, `evaluator` and `epoch_metrics`: the test split on the
  device, `params -> metrics` as one compiled call, and a training
  stage's epoch-end metrics.

Image classification is registered as ``'classification'``, every built-in
dataset's task; a language-model task registers itself with
`registry.register_task` and datasets name it
(`registry.register_dataset(..., task=...)`) or the config does
(`config.task`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from experiments.infra import evaluation
from experiments.infra import registry

Metrics = dict[str, float]


class Task:
  """The task interface; subclasses give `eval_step` and `summarize`.

  Attributes:
    name: the registered name.
    metric: key of the headline metric in `summarize`'s output.
    higher_is_better: whether a larger `metric` is better.
  """
  name = ''
  metric = 'accuracy'
  higher_is_better = True

  def check_dataset(self, info: registry.DatasetEntry) -> None:
    """Raises ValueError if this task cannot run on the dataset."""

  def train_arrays(self, split: tuple[np.ndarray, np.ndarray]
                   ) -> dict[str, np.ndarray]:
    """The arrays of a training split that a train step's batches hold."""
    x, y = split
    return {'x': x, 'label': y}

  def dataset_size(self, x: np.ndarray) -> int:
    """N of the prior's tau / N: the examples the data loss averages over."""
    return len(x)

  def data_loss_fn(self) -> Callable[..., Any] | None:
    """The teacher's data term; None: `gmp_jax`'s label cross-entropy."""
    return None

  def eval_step(self, apply_fn: Callable[[Any, Any], Any]
                ) -> Callable[[Any, Mapping[str, Any]], dict[str, Any]]:
    """Pure `(params, {'x', 'label'}) -> sums` over one test batch."""
    raise NotImplementedError

  def summarize(self, totals: Mapping[str, Any]) -> Metrics:
    """Host-float metrics from the sums over the test set."""
    raise NotImplementedError

  def test_set(self, x: np.ndarray, y: np.ndarray, *, batch_size: int,
               place: Callable[[Any], Any] | None = None):
    """The test split on the device (`evaluation.TestSet`, one program)."""
    return evaluation.TestSet(x, y, batch_size=batch_size, kind='scan',
                              place=place)

  def evaluator(self, test_set, apply_fn: Callable[[Any, Any], Any]
                ) -> Callable[[Any], Metrics]:
    """`params -> metrics` on the test set, one compiled call.

    The sums of `eval_step` over the test set's batches, then `summarize`
    (`gmp_jax.evaluate` with `metrics_fn=self.summarize`).
    """
    import gmp_jax  # pylint: disable=import-outside-toplevel
    eval_step = self.eval_step(apply_fn)

    def evaluate(params) -> Metrics:
      return gmp_jax.evaluate(eval_step, test_set.place(params), test_set.x,
                              test_set.labels, batch_size=test_set.batch_size,
                              kind=test_set.kind, metrics_fn=self.summarize)

    return evaluate

  def epoch_metrics(self, evaluate: Callable[[Any], Metrics], *,
                    pruned: bool, raw: bool = True,
                    merge: Mapping[str, Any] | None = None
                    ) -> Callable[[Any], Metrics]:
    """`state -> metrics` at a training stage's epoch ends
    (`evaluation.epoch_metrics` with this task's headline metric).

    With `raw`, ``test_<key>`` of every metric of the weights; with
    `pruned`, ``test_pruned_<metric>`` of their quantised copy
    (`gmp_jax.quantize` with the state's mixture, merged by
    `gmp_jax.merge_components` as post-processing will, with the keyword
    arguments `merge`: `evaluation.merge_options(config)`) and its
    ``nonzero_fraction``.
    """
    return evaluation.epoch_metrics(evaluate, pruned=pruned, raw=raw,
                                    metric=self.metric, merge=merge)


class Classification(Task):
  r"""Labels of shape (B,), logits (B, classes): accuracy, cross-entropy.

  The evaluation is `evaluation.TestSet.evaluator` and
  `evaluation.epoch_metrics` (through `Task.epoch_metrics`), the programs
  the pipeline has always run.

  .. math::

    \mathrm{accuracy} = \frac{1}{n} \sum_b [\arg\max_c z_{bc} = y_b],
    \qquad \mathrm{cross\_entropy} = -\frac{1}{n} \sum_b
    \log \mathrm{softmax}(z_b)_{y_b}
  """
  name = 'classification'
  metric = 'accuracy'
  higher_is_better = True

  def check_dataset(self, info: registry.DatasetEntry) -> None:
    if info.num_classes is None:
      raise ValueError(f'The classification task needs a dataset with '
                       f'classes; {info.name!r} has none (a vocabulary of '
                       f'{info.vocab_size}).')

  def eval_step(self, apply_fn):
    import gmp_jax  # pylint: disable=import-outside-toplevel
    return gmp_jax.make_eval_step(apply_fn)

  def summarize(self, totals):
    count = float(totals['count'])
    return {'accuracy': float(totals['correct']) / count,
            'cross_entropy': float(totals['cross_entropy_sum']) / count}

  def evaluator(self, test_set, apply_fn):
    return test_set.evaluator(apply_fn)


CLASSIFICATION = registry.register_task('classification', Classification())
register_task = registry.register_task


def for_config(config) -> Task:
  """The config's task: `config.task`, else its dataset's."""
  name = config.get('task') or registry.dataset(config.data.name).task
  return registry.task(name)


__all__ = ('CLASSIFICATION', 'Classification', 'Task', 'for_config',
           'register_task')
