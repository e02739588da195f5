"""Writes the golden files of the codec under tests/data/codec_golden/.

  python tests/make_codec_golden.py

The files were written by the codec as it stood before its split into
`_wire`, `_format_v1` and `_format_v2`; `tests/codec_golden_test.py` checks
that the writers still produce them byte for byte and that the reader
returns the trees `golden_cases` builds. Rerun only on a deliberate format
change (with a new format version).
"""

from __future__ import annotations

import json
import os
import sys

import ml_dtypes
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DIRECTORY = os.path.join(HERE, 'data', 'codec_golden')


def _quantized(rng, shape, *, density=0.1, k=8, dtype=np.float32):
  values = (rng.choice([-1.0, 1.0], k) * rng.uniform(0.01, 0.5, k))
  x = values[rng.integers(0, k, shape)].astype(dtype)
  return np.where(rng.random(shape) < density, x, np.zeros((), dtype))


def _structured(rng, rows=120, cols=80):
  """A pruned kernel with dead and busy rows and columns (the row model)."""
  row_rate = rng.choice([0.0, 0.02, 0.3], rows, p=[0.4, 0.45, 0.15])
  col_rate = rng.choice([0.0, 1.0, 2.5], cols, p=[0.3, 0.5, 0.2])
  z = rng.random((rows, cols)) < np.clip(row_rate[:, None] * col_rate, 0, 1)
  z[5] = True
  x = np.asarray([0.25, -0.5, 0.75], np.float32)[rng.integers(0, 3, z.shape)]
  return np.where(z, x, np.float32(0))


def golden_cases():
  """`(name, version, params, metadata, codebook_dtype)` of every file."""
  rng = np.random.default_rng(2024)
  mlp = {'dense1': {'kernel': _quantized(rng, (64, 32)),
                    'bias': _quantized(rng, (32,), density=0.9)},
         'dense2': {'kernel': _quantized(rng, (32, 10), density=0.3),
                    'bias': np.zeros(10, np.float32)}}
  structured = _structured(rng)
  cases = [
      ('mlp', 2, mlp, None, 'float32'),
      ('rows_and_columns', 2, {'rows': structured,
                               'columns': np.ascontiguousarray(structured.T),
                               'conv': _quantized(rng, (3, 3, 4, 8),
                                                  density=0.4)},
       {'model': 'poster'}, 'float32'),
      ('raw_and_constant', 2, {
          'raw': rng.standard_normal(50).astype(np.float32),
          'zeros': np.zeros((7, 3), np.float32),
          'full': np.full((6, 5), 0.125, np.float32),
          'empty': np.zeros((0, 4), np.float32),
          'scalar': np.float32(-0.0),
          'nan': np.array([np.nan, 0.0, -np.nan], np.float32),
          'large_codebook': (rng.integers(1, 600, 2000) * 0.001).astype(
              np.float32)}, None, 'float32'),
      ('dtypes', 2, {
          'f64': _quantized(rng, (20, 20), dtype=np.float64),
          'f16': _quantized(rng, (30,), dtype=np.float16),
          'bf16': _quantized(rng, (30,), dtype=ml_dtypes.bfloat16),
          'f8': _quantized(rng, (40,), dtype=ml_dtypes.float8_e4m3fn),
          'i8': rng.integers(-3, 3, 50).astype(np.int8),
          'u8': rng.integers(0, 3, 50).astype(np.uint8),
          'i32': rng.integers(-2, 2, (5, 9)).astype(np.int32),
          'i64': np.array([0, 2**40, -1, 0], np.int64),
          'bool': rng.random((9, 7)) < 0.2,
          'c64': (np.array([0, 1 + 2j, 0, 1 + 2j, 3j]) * 1).astype(
              np.complex64),
          'inline': _quantized(rng, (16,), dtype=ml_dtypes.float8_e8m0fnu),
      }, None, 'float32'),
      ('float64_bfloat16', 2, {'w': _quantized(rng, (40, 25),
                                               dtype=np.float64)},
       None, 'bfloat16'),
      ('float64_float16', 2, {'w': _quantized(rng, (40, 25),
                                              dtype=np.float64)},
       None, 'float16'),
      ('float64_own_dtype', 2, {'w': _quantized(rng, (40, 25),
                                                dtype=np.float64)},
       None, None),
      ('containers', 2, [
          {'a': (np.arange(4, dtype=np.int16), None),
           'b': [], 'c': {}, 'é/ü': np.ones(3, np.float32)},
          None, (_quantized(rng, (12, 12), density=0.5),)],
       {'model': 'lenet', 'steps': 12345, 'neg': -7, 'big': 2**70,
        'lr': 1e-3, 'nan': float('nan'), 'neg0': -0.0, 'flag': True,
        'off': False, 'none': None, 'names': ['model', 'lenet', 'x'],
        'pair': (1, 'two'), 'means': np.linspace(-1, 1, 5)}, 'float32'),
      ('empty_dict', 2, {}, None, 'float32'),
      ('none', 2, None, None, 'float32'),
      ('root_array', 2, _quantized(rng, (10, 10), density=0.5), None,
       'float32'),
      ('v1_mlp', 1, mlp, {'model': 'poster', 'mixture_means':
                          np.linspace(-0.3, 0.3, 7).astype(np.float32)},
       'float32'),
      ('v1_dtypes', 1, {'f64': _quantized(rng, (20, 20), dtype=np.float64),
                        'raw': rng.standard_normal(9).astype(np.float32),
                        'zeros': np.zeros(5, np.int8),
                        'tuple': (np.ones(2, bool), None)},
       {'steps': -3, 'ok': True}, 'bfloat16'),
  ]
  return cases


def _writer(version):
  sys.path[:0] = [os.path.dirname(HERE), HERE]
  from gmp_jax import codec  # pylint: disable=import-outside-toplevel
  if version == 2:
    return codec.to_bytes
  import helpers  # pylint: disable=import-outside-toplevel
  return helpers.to_bytes_v1


def main() -> None:
  os.makedirs(DIRECTORY, exist_ok=True)
  manifest = {}
  for name, version, params, metadata, cb in golden_cases():
    data = _writer(version)(params, metadata=metadata, codebook_dtype=cb)
    with open(os.path.join(DIRECTORY, name + '.gmpz'), 'wb') as f:
      f.write(data)
    manifest[name] = {'version': version, 'codebook_dtype': cb,
                      'bytes': len(data)}
    print(f'{name}: version {version}, {len(data):,} bytes')
  with open(os.path.join(DIRECTORY, 'manifest.json'), 'w') as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write('\n')


if __name__ == '__main__':
  main()
