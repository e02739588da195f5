"""Writes tests/data/fashion_mnist_sample.npz, the Fashion-MNIST sample the
tests use instead of the full dataset.

  python tests/data/make_fashion_mnist_sample.py [IDX_DIR]

IDX_DIR holds the four IDX files of the Debian package `dataset-fashion-mnist`
(default /usr/share/datasets/fashion-mnist). The sample is class-balanced and
deterministic: the first 30 training and the first 10 test images of each of
the 10 classes, in their original order (300 + 100 images, uint8), with their
indices in the original files.
"""

import gzip
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, 'fashion_mnist_sample.npz')
DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
PER_CLASS = {'train': 30, 'test': 10}


def read_idx_u8(path: str) -> np.ndarray:
  """An unsigned-byte IDX file (type code 0x08) as a uint8 array."""
  with gzip.open(path, 'rb') as f:
    data = f.read()
  if data[:3] != b'\x00\x00\x08':
    raise ValueError(f'{path}: not an unsigned-byte IDX file')
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big')
                for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main(argv):
  directory = argv[1] if len(argv) > 1 else DEFAULT_DIR
  arrays = {}
  for split, (images, labels) in FILES.items():
    x = read_idx_u8(os.path.join(directory, images))
    y = read_idx_u8(os.path.join(directory, labels))
    idx = np.sort(np.concatenate(
        [np.flatnonzero(y == c)[:PER_CLASS[split]] for c in range(10)]))
    arrays[f'x_{split}'] = x[idx]
    arrays[f'y_{split}'] = y[idx]
    arrays[f'index_{split}'] = idx.astype(np.int32)
  np.savez_compressed(OUT, **arrays)
  print(f'{OUT}: {os.path.getsize(OUT)} bytes, '
        f"{len(arrays['x_train'])} train + {len(arrays['x_test'])} test")


if __name__ == '__main__':
  main(sys.argv)
