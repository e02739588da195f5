"""Cold and warm cost of merge + quantize on the poster network.

  python -m benchmarks.postprocess

Builds the 642,460-parameter network and a fresh 17-component mixture, then
times `quantize(params, merge_components(mixture))` three times in a row;
the first call includes compilation.
"""

import time

from absl import app
import jax

import gmp_jax
from experiments.image import models
from experiments.infra import cli


def _define_flags() -> None:
  """No flags."""


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  params = models.init_params('poster', jax.random.key(0))
  mixture = gmp_jax.init_mixture(params, 17)
  for i in range(3):
    start = time.perf_counter()
    jax.block_until_ready(gmp_jax.quantize(
        params, gmp_jax.merge_components(mixture)))
    print(f'merge + quantize, call {i + 1}: '
          f'{1e3 * (time.perf_counter() - start):.1f} ms')
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
