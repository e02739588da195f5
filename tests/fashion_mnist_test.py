"""Fashion-MNIST: the shipped sample, the IDX reader on it, and the config.

The sample (tests/data/fashion_mnist_sample.npz, written by
tests/data/make_fashion_mnist_sample.py from the Debian package
`dataset-fashion-mnist`) stands in for the full dataset; the one test that
compares it with the package skips when the package is not installed.
"""

import gzip
import json
import os

import numpy as np
import pytest

import gmp_jax
from experiments.image import data as data_lib
from experiments.image import models
from experiments.stages import runner as pipeline
from experiments.configs import fashion_mnist
from experiments.configs import mnist

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, 'data', 'fashion_mnist_sample.npz')
SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
FILES = {'x_train': 'train-images-idx3-ubyte.gz',
         'y_train': 'train-labels-idx1-ubyte.gz',
         'x_test': 't10k-images-idx3-ubyte.gz',
         'y_test': 't10k-labels-idx1-ubyte.gz'}


def _sample():
  with np.load(SAMPLE) as f:
    return {k: f[k] for k in f.files}


def _write_idx(path, array):
  """IDX writer, written from the format description (unsigned bytes)."""
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture(scope='module')
def sample_dir(tmp_path_factory):
  """A data_dir whose fashion-mnist/ holds the sample as IDX files."""
  root = tmp_path_factory.mktemp('data')
  os.makedirs(root / 'fashion-mnist')
  sample = _sample()
  for key, fname in FILES.items():
    _write_idx(str(root / 'fashion-mnist' / fname), sample[key])
  return root


def test_sample_is_balanced_uint8():
  s = _sample()
  assert s['x_train'].shape == (300, 28, 28) and s['x_test'].shape == (
      100, 28, 28)
  for split, per_class in (('train', 30), ('test', 10)):
    assert s[f'x_{split}'].dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(s[f'y_{split}'], minlength=10),
                                  np.full(10, per_class))
    assert np.all(np.diff(s[f'index_{split}']) > 0)
  assert s['x_train'].max() == 255 and s['x_train'].min() == 0


@pytest.mark.skipif(not os.path.isdir(SYSTEM_DIR),
                    reason='dataset-fashion-mnist is not installed')
def test_sample_matches_the_debian_package():
  s = _sample()
  for split in ('train', 'test'):
    with gzip.open(os.path.join(SYSTEM_DIR, FILES[f'x_{split}'])) as f:
      images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(os.path.join(SYSTEM_DIR, FILES[f'y_{split}'])) as f:
      labels = np.frombuffer(f.read(), np.uint8, offset=8)
    idx = s[f'index_{split}']
    np.testing.assert_array_equal(s[f'x_{split}'], images[idx])
    np.testing.assert_array_equal(s[f'y_{split}'], labels[idx])


def test_load_dataset_reads_the_sample(sample_dir):
  s = _sample()
  ds = data_lib.load_dataset('fashion_mnist', data_dir=sample_dir)
  x, y = ds['train']
  assert x.shape == (300, 28, 28, 1) and x.dtype == np.float32
  np.testing.assert_array_equal(x[..., 0] * 255.0,
                                s['x_train'].astype(np.float32))
  np.testing.assert_array_equal(y, s['y_train'].astype(np.int32))
  np.testing.assert_array_equal(ds['test'][1], s['y_test'].astype(np.int32))


def test_config_is_the_mnist_recipe_on_fashion_data():
  fashion, base = fashion_mnist.get_config(), mnist.get_config()
  assert fashion.data.name == 'fashion_mnist'
  assert fashion.data.source == base.data.source
  fashion_d, base_d = fashion.to_dict(), base.to_dict()
  fashion_d.pop('data'), base_d.pop('data')
  assert fashion_d == base_d  # Model, teacher, retraining: unchanged.
  smoke = fashion_mnist.get_config('smoke')
  assert smoke.data.name == 'fashion_mnist'
  assert smoke.data.source == 'offline'
  with pytest.raises(ValueError):
    fashion_mnist.get_config('bogus')


def test_smoke_pipeline_on_the_sample(sample_dir, tmp_path):
  config = fashion_mnist.get_config('smoke')
  config.data.data_dir = str(sample_dir)
  # Compile-bound: one device (no mesh), checkpoints at stage ends only.
  config.mesh.num_devices = 1
  config.loop.checkpoint_interval_s = 3600.0
  workdir = str(tmp_path / 'run')
  report = pipeline.train_and_evaluate(config, workdir)
  on_disk = json.load(open(os.path.join(workdir, 'report.json')))
  assert on_disk['table2'] == report['table2']
  # 300 real images, 2 epochs: clearly above chance (0.1) on 100 test images.
  assert on_disk['table2']['original'] > 0.3
  # The compressed file reproduces the pruned accuracy on the same images.
  params = gmp_jax.load_compressed(os.path.join(workdir,
                                                report['compressed_file']))
  x, y = data_lib.load_dataset('fashion_mnist', data_dir=sample_dir)['test']
  logits = np.asarray(
      models.get_model(report['student']).apply({'params': params}, x))
  assert np.mean(np.argmax(logits, -1) == y) == pytest.approx(
      on_disk['table2']['pruned'], abs=1e-9)
