"""Prints the README's comparison tables from committed report.json files.

  python -m experiments.tools.compare
  python -m experiments.tools.compare results/mnist results/mnist_layerwise

Without arguments: the literature table, one row per published method (the
anchors of each benchmark) beside one row per committed run of that net
(`results/lenet300`, `results/lenet5`, `results/mnist`; missing runs are
listed as not run). Our rows give both test errors (uncompressed teacher ->
compressed model) and the three compression figures: CR_file (32 bits x
parameters / bits of the real file), CR_Han (Deep Compression's analytic
storage count) and |W| / |W!=0|. A published figure sits in the column of
what it counts: real bitstreams under CR_file, analytic counts under CR_Han.

With run directories: the poster's Tables 1 and 2 beside each run.

The nets, their display names, parameter counts, committed runs and
published anchors come from the model registry
(`experiments.infra.registry.register_model`): every registered model with
anchors gets its rows.
"""

from __future__ import annotations

import json
import os

from experiments.image import models
from experiments.infra import cli
from experiments.infra import registry

# The poster's Tables 1 and 2 (for comparison only; not computed here).
POSTER = models.POSTER_FIGURES


def _pct(x, digits=2):
  return f'{100 * x:.{digits}f}%'


def final_accuracy(report) -> float:
  """Test accuracy of the model in the compressed file.

  The fine-tuned model's when the run fine-tuned, else the pruned one's.
  """
  t2 = report['table2']
  return t2.get('finetuned', t2['pruned'])


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
      ['Pruned accuracy', _pct(POSTER['pruned'])]
      + [_pct(r['table2']['pruned']) for r in reports],
      ['Fine-tuned accuracy', 'n/a']
      + [_pct(r['table2']['finetuned']) if 'finetuned' in r['table2']
         else 'not run' for r in reports],
      ['**Accuracy of the file**', _pct(POSTER['pruned'])]
      + [f"**{_pct(final_accuracy(r))}**" for r in reports],
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


def nets() -> dict[str, registry.ModelEntry]:
  """`{net: model entry}` of every registered model with anchors.

  The key is the entry's `benchmark` name (``'lenet300'``, ``'lenet5'``,
  ``'poster'``), in registration order.
  """
  return registry.benchmark_models()


def anchors(net: str) -> list[dict]:
  """The published anchors of a net as dicts (`registry.Anchor` fields)."""
  entry = nets().get(net)
  return [] if entry is None else [a.as_dict() for a in entry.anchors]


COLUMNS = {'file': 'cr_file', 'analytic': 'cr_han', 'sparsity': 'sparsity'}


def _x(value) -> str:
  return 'n/a' if value is None else f'{value:.1f}x'


def literature_rows(net: str, run_dir: str | None) -> list[list[str]]:
  """Table rows of one net: its anchors, then our run (or 'not run')."""
  entry = nets()[net]
  name, params = entry.display_name, entry.parameters
  run_dir = entry.results_dir if run_dir is None else run_dir
  rows = []
  for a in anchors(net):
    cells = {'cr_file': 'n/a', 'cr_han': 'n/a', 'sparsity': 'n/a'}
    cells[COLUMNS[a['counts']]] = _x(a['compression'])
    reference = a.get('error_reference')
    rows.append([name, a['method'],
                 'n/a' if reference is None else _pct(reference),
                 _pct(a['error']),
                 cells['cr_file'], cells['cr_han'], cells['sparsity'],
                 a.get('file', 'n/a'),
                 a['note']])
  path = None if run_dir is None else os.path.join(run_dir, 'report.json')
  if path is None or not os.path.exists(path):
    rows.append([name, f'gmp_jax (`{run_dir or "no committed run"}`)',
                 'not run', 'not run', 'n/a', 'n/a', 'n/a', 'n/a', ''])
    return rows
  with open(path) as f:
    r = json.load(f)
  n = r['table1'][-1]['parameters']
  if params is not None and n != params:
    raise ValueError(f'{path}: {n:,} parameters, {name} has {params:,}.')
  rows.append([
      name, f'**gmp_jax** (`{run_dir}`)', _pct(1 - r['table2']['original']),
      f"**{_pct(1 - final_accuracy(r))}**", f"**{_x(r['cr_file'])}**",
      _x(r['cr_han']), _x(1 / r['nonzero_fraction']),
      f"{r['file_bytes']:,} B", 'real file; all three counts'])
  return rows


def literature_table(run_dirs: dict[str, str] | None = None) -> str:
  """The anchors of issue-style benchmarks beside our committed runs.

  Args:
    run_dirs: `{net: directory}` overriding the committed runs of the
      registry, for nets of `nets()` ('lenet300', 'lenet5', 'poster').

  Returns:
    A Markdown table.
  """
  run_dirs = dict(run_dirs or {})
  known = nets()
  unknown = set(run_dirs) - set(known)
  if unknown:
    raise ValueError(f'unknown nets {sorted(unknown)}; expected {list(known)}')
  head = ['Net', 'Method', 'Error (uncompressed)', 'Error (compressed)',
          'CR_file (real bytes)', 'CR_Han (analytic)',
          '\\|W\\| / \\|W≠0\\|', 'File', 'Published figure counts']
  lines = ['| ' + ' | '.join(head) + ' |',
           '|---|---|' + '---:|' * (len(head) - 3) + '---|']
  for net in known:
    lines += ['| ' + ' | '.join(row) + ' |'
              for row in literature_rows(net, run_dirs.get(net))]
  return '\n'.join(lines)


def _define_flags() -> None:
  """No flags: the command line is the run directories."""


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    print(literature_table())
    return 0
  print(table(argv[1:]))
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
