"""Prints the size report of a compressed model file.

  python -m gmp_jax.inspect model.gmp          # Markdown tables
  python -m gmp_jax.inspect model.gmp --json   # the report as JSON
  python -m gmp_jax.inspect model.gmp --declared  # declared leaf sizes only

`--declared` reads the structure and the leaf records but decodes no
stream, so it is quick and bounded for any file, also one whose leaves
exceed the default bounds of `load_compressed`.

Exits with status 1 and a one-line message for a missing, truncated,
corrupted or foreign file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import ml_dtypes
import numpy as np

from gmp_jax import codec
from gmp_jax import report


def main(argv: list[str] | None = None) -> int:
  """Runs the CLI.

  Args:
    argv: arguments without the program name (default: `sys.argv[1:]`).

  Returns:
    The process exit status: 0 on success, 1 for a bad or missing file.
  """
  parser = argparse.ArgumentParser(
      prog='python -m gmp_jax.inspect',
      description='Size report of a gmp_jax compressed model file.')
  parser.add_argument('file', help='file written by gmp_jax.save_compressed')
  parser.add_argument('--json', action='store_true',
                      help='print the report as JSON')
  parser.add_argument('--declared', action='store_true',
                      help='print the declared leaf sizes, decode nothing')
  args = parser.parse_args(argv)
  if args.declared:
    return _declared(args.file, as_json=args.json)
  try:
    rep = report.compression_report(path=args.file)
  except (codec.CorruptFileError, OSError) as e:
    print(f'error: {args.file}: {e}', file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps(rep.to_dict(), indent=2))
  else:
    print(rep.to_markdown())
  return 0


def _declared(path: str, *, as_json: bool) -> int:
  """Prints each leaf's declared dtype, shape, entries and bytes."""
  try:
    f = codec.load_compressed_with_info(path, decode=False,
                                        max_elements=None, max_bytes=None)
  except (codec.CorruptFileError, OSError) as e:
    print(f'error: {path}: {e}', file=sys.stderr)
    return 1
  rows = []
  for leaf in f.leaves:
    n = math.prod(leaf.shape)
    rows.append({'name': leaf.name, 'dtype': leaf.dtype,
                 'shape': list(leaf.shape), 'elements': n,
                 'bytes': n * _itemsize(leaf.dtype),
                 'metadata': leaf.is_metadata})
  totals = {'elements': sum(r['elements'] for r in rows),
            'bytes': sum(r['bytes'] for r in rows),
            'file_bytes': f.file_bytes, 'version': f.version}
  if as_json:
    print(json.dumps({'leaves': rows, 'totals': totals}, indent=2))
    return 0
  print('| leaf | dtype | shape | elements | decoded bytes |')
  print('|---|---|---|---:|---:|')
  for r in rows:
    name = r['name'] + (' (metadata)' if r['metadata'] else '')
    print(f'| {name} | {r["dtype"]} | {tuple(r["shape"])} '
          f'| {r["elements"]:,} | {r["bytes"]:,} |')
  print(f'| total | | | {totals["elements"]:,} | {totals["bytes"]:,} |')
  print(f'\nfile: {f.file_bytes:,} bytes, format version {f.version}')
  return 0


def _itemsize(name: str) -> int:
  """Bytes per entry of a dtype name (NumPy or ml_dtypes)."""
  return np.dtype(getattr(ml_dtypes, name, name)).itemsize


if __name__ == '__main__':
  sys.exit(main())
