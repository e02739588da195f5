"""The README's Flax example: weights cluster and quantise to <= K values."""

import pytest

from experiments.tools import quickstart


@pytest.mark.xla_optimized
def test_quickstart_clusters_and_quantizes():
  out = quickstart.run(num_components=8, verbose=False)
  assert out['distinct_values'] <= 8
  assert out['clustered_after'] > 0.9
  assert out['clustered_after'] > out['clustered_before'] + 0.5
  # The default mixture (learned proportions, tau by the rule) keeps the
  # toy task: it clusters the weights onto a few values rather than forcing
  # a pruned share. The published recipe (sigma 0.1, pi_0 0.99 fixed, tau
  # 0.02) pruned 64% but kept 0.912 of the training accuracy.
  assert out['accuracy_quantized'] > 0.95
