"""The README's Flax example: weights cluster and quantise to <= K values."""

from experiments import quickstart


def test_quickstart_clusters_and_quantizes():
  out = quickstart.run(num_components=8, verbose=False)
  assert out['distinct_values'] <= 8
  assert out['clustered_after'] > 0.9
  assert out['clustered_after'] > out['clustered_before'] + 0.5
  assert out['sparsity'] > 0.3
  assert out['accuracy_quantized'] > 0.8
