"""JSON files of the experiments and benchmarks, written atomically.

`write_json_atomic` goes through `gmp_jax.codec.fileio.write_atomic`;
`json_default` turns NumPy and jax values into JSON ones. Importing this
module imports no gmp_jax (`benchmarks.scale` picks the library to measure
after its imports).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def json_default(x: Any) -> Any:
  """`json.dumps` default: NumPy scalars as numbers, arrays as lists."""
  if isinstance(x, np.generic):
    return x.item()
  if hasattr(x, '__array__') and hasattr(x, 'dtype'):  # NumPy or jax array.
    return np.asarray(x).tolist()
  raise TypeError(f'not JSON serialisable: {type(x).__name__}')


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as indented JSON with `fileio.write_atomic`.

  NumPy and jax arrays become (nested) lists, NumPy scalars Python numbers.

  Raises:
    TypeError: `obj` holds something else that JSON cannot represent; the
      file is then left unchanged.
  """
  from gmp_jax.codec import fileio  # pylint: disable=g-import-not-at-top
  fileio.write_atomic(path, json.dumps(obj, indent=2, default=json_default))


__all__ = (
    'json_default',
    'write_json_atomic',
)
