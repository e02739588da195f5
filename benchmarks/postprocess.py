"""Cold and warm cost of merge + quantize on the poster network.

  python -m benchmarks.postprocess

Builds the 642,460-parameter network and a fresh 17-component mixture, then
times `quantize(params, merge_components(mixture))` three times in a row;
the first call includes compilation.
"""

import time

import jax

import gmp_jax
from experiments.image import models


def main() -> None:
  params = models.init_params('poster', jax.random.key(0))
  mixture = gmp_jax.init_mixture(params, 17)
  for i in range(3):
    start = time.perf_counter()
    jax.block_until_ready(gmp_jax.quantize(
        params, gmp_jax.merge_components(mixture)))
    print(f'merge + quantize, call {i + 1}: '
          f'{1e3 * (time.perf_counter() - start):.1f} ms')


if __name__ == '__main__':
  main()
