"""Prints the README's results table from committed report.json files.

  python -m experiments.compare results/mnist results/mnist_layerwise

Columns: the poster's published figures, then one per run directory.
"""

from __future__ import annotations

import json
import os
import sys

# The poster's Tables 1 and 2 (for comparison only; not computed here).
POSTER = {'original': 0.9879, 'retrained': 0.9859, 'pruned': 0.9814,
          'sparsity': 0.923}


def _pct(x, digits=2):
  return f'{100 * x:.{digits}f}%'


def table(run_dirs: list[str]) -> str:
  reports = [json.load(open(os.path.join(d, 'report.json')))
             for d in run_dirs]
  head = ['', 'Poster'] + [
      f"gmp_jax {r['config']['retrain']['mode'].replace('_', '-')} "
      f"(`{d}`)" for d, r in zip(run_dirs, reports)]
  rows = [
      ['Original accuracy', _pct(POSTER['original'])]
      + [_pct(r['table2']['original']) for r in reports],
      ['Retrained accuracy', _pct(POSTER['retrained'])]
      + [_pct(r['table2']['retrained']) for r in reports],
      ['**Pruned accuracy**', _pct(POSTER['pruned'])]
      + [f"**{_pct(r['table2']['pruned'])}**" for r in reports],
      ['Sparsity (total)', _pct(POSTER['sparsity'], 1)]
      + [_pct(r['table1'][-1]['sparsity']) for r in reports],
      ['Non-zero weights', f"{642460 - round(POSTER['sparsity'] * 642460):,}"
       ' (approx.)'] + [f"{r['table1'][-1]['nonzero']:,} "
                        f"({_pct(r['nonzero_fraction'], 3)})"
                        for r in reports],
      ['Distinct non-zero values', 'n/a']
      + [str(r['table1'][-1]['distinct_values']) for r in reports],
      ['Compressed file', 'n/a'] + [f"{r['file_bytes']:,} bytes"
                                     for r in reports],
      ['CR_file (real bytes)', 'n/a'] + [f"{r['cr_file']:.1f}x"
                                          for r in reports],
      ['CR_Han (analytic)', 'n/a'] + [f"{r['cr_han']:.1f}x" for r in reports],
      ['\\|W\\| / \\|W≠0\\|', f"{1 / (1 - POSTER['sparsity']):.1f}x"]
      + [f"{1 / r['nonzero_fraction']:.1f}x" for r in reports],
      ['tau', 'n/a'] + [str(r['config']['retrain']['tau']) for r in reports],
      ['Retraining wall time', 'n/a']
      + [f"{r['wall_time_s']['retrain'] / 60:.1f} min" for r in reports],
  ]
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '---|' + '---:|' * (len(head) - 1)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines)


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    print(__doc__)
    return 2
  print(table(argv[1:]))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
