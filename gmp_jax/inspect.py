"""Prints the size report of a compressed model file.

  python -m gmp_jax.inspect model.gmp          # Markdown tables
  python -m gmp_jax.inspect model.gmp --json   # the report as JSON

Exits with status 1 and a one-line message for a missing, truncated,
corrupted or foreign file.
"""

from __future__ import annotations

import argparse
import json
import sys

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
  args = parser.parse_args(argv)
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


if __name__ == '__main__':
  sys.exit(main())
