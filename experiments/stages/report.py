"""The report stage: Table 1, Table 2, the file's size, report.json/.md.

`run` draws Figures 3 and 4 and the training curves (`experiments.tools.plots`)
and writes `report.json` and `report.md` (`OUTPUTS`); it computes nothing
on the mesh (`HOST_ONLY`).
`build_report` gathers the stages' records into the `report.json` schema;
`markdown` renders it. Table 1 is `gmp_jax.sparsity_table(by='layer')`, the
library's one Table-1 builder.
"""

from __future__ import annotations

from collections.abc import Mapping
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

import gmp_jax
from gmp_jax.codec import fileio
from experiments.infra import jsonio
from experiments.infra import monitor
from experiments.infra import registry
from experiments.infra import workdir_layout
from experiments.stages import retrain
from experiments.stages import student
from experiments.tools import plots


def fmt(value, spec: str) -> str:
  """`format(value, spec)`, or 'n/a' for None."""
  return 'n/a' if value is None else format(value, spec)


def format_metric(metric: str, value: float) -> str:
  """Accuracy as a percentage (99.22%), any other metric as 1.8234."""
  return f'{100 * value:.2f}%' if metric == 'accuracy' else f'{value:.4f}'


def table1(quantized) -> list[dict[str, Any]]:
  """Table 1 rows, one per top-level layer, then the total."""
  rows = gmp_jax.sparsity_table(jax.device_get(quantized), by='layer')
  return [{**r, 'shape': None if r['shape'] is None else list(r['shape'])}
          for r in rows]


def build_report(*, config: ml_collections.ConfigDict,
                 results: Mapping[str, Mapping[str, Any]], quantized,
                 size_report, compressed_file: str,
                 wall_time_s: Mapping[str, float],
                 figures: Mapping[str, str],
                 distributed: Mapping[str, int] | None = None,
                 metric: str = 'accuracy') -> dict[str, Any]:
  """The `report.json` dict.

  Args:
    config: the run's config.
    results: the `done.json` records of the stages, by stage name.
    quantized: the compressed file's params.
    size_report: `gmp_jax.compression_report` of the compressed file.
    compressed_file: its path relative to the workdir.
    wall_time_s: seconds per stage.
    figures: figure paths relative to the workdir, by name.
    distributed: `{'num_processes', 'num_devices'}` of the run (default:
      one process, one device).
    metric: the task's headline metric (`tasks.Task.metric`); Table 2
      holds its test values, read from the records' ``test_<metric>``,
      and `table2_valid` (only when every stage recorded one, i.e. the
      dataset has a validation split) the ``valid_<metric>`` values, on
      which to choose between runs.
  """
  size = size_report.to_dict()
  totals = size['totals']
  rows = table1(quantized)
  post = results['postprocess']
  key = f'test_{metric}'
  finetune = results.get('finetune') or {}
  columns = [c for c in _STAGE_OF_COLUMN
             if c != 'finetuned' or finetune.get('epochs')]
  table2 = {c: results[_STAGE_OF_COLUMN[c]][key] for c in columns}
  extra = {}
  valid = _valid_table(results, metric, tuple(table2))
  if valid is not None:
    extra['table2_valid'] = valid
  if 'cleanup' in results:
    extra['cleanup'] = {k: v for k, v in results['cleanup'].items()
                        if k != 'wall_time_s'}
  return {
      'metric': metric,
      'table1': rows,
      'table2': table2,
      **extra,
      'student': results['retrain']['student'],
      'compressed_file': compressed_file,
      'file_bytes': totals['file_bytes'],
      'cr_file': totals['cr_file'],
      'cr_han': totals['cr_han'],
      'nonzero_fraction': rows[-1]['nonzero'] / rows[-1]['parameters'],
      'components': {'before_merge': post['components_before_merge'],
                     'after_merge': post['components_after_merge']},
      'size_report': size,
      'wall_time_s': dict(wall_time_s),
      'config': config.to_dict(),
      'figures': dict(figures),
      'distributed': dict(distributed or {'num_processes': 1,
                                          'num_devices': 1}),
  }


# Table 2's columns, in order, and the stage whose record each reads.
_STAGE_OF_COLUMN = {'original': 'teacher', 'retrained': 'retrain',
                    'pruned': 'postprocess', 'finetuned': 'finetune'}


def _valid_table(results, metric: str, columns) -> dict[str, float] | None:
  """Table 2's columns on the validation split, or None if a stage has
  none. A teacher that stopped early records its best epoch's value."""
  key = f'valid_{metric}'
  table = {}
  for column in columns:
    record = results.get(_STAGE_OF_COLUMN[column]) or {}
    value = record.get(key, record.get(f'best_{key}'))
    if value is None:
      return None
    table[column] = value
  return table


def dataset_title(name: str) -> str:
  """The dataset's display name (`registry.register_dataset`)."""
  if name in registry.DATASETS:
    return registry.dataset(name).display_name
  return str(name)


def markdown(report: Mapping[str, Any], size_markdown: str) -> str:
  """`report.md`: Tables 1 and 2, the file's size report, times, figures."""
  t2 = report['table2']
  dataset = dataset_title(report['config']['data']['name'])
  lines = [f'# {dataset} soft weight-sharing report', '',
           f"Mode: `{report['config']['retrain']['mode']}`, student "
           f"`{report['student']}`.", '',
           '## Table 1: sparsity', '',
           '| Layer | Shape | Parameters | Sparsity | Distinct values |',
           '|---|---|---:|---:|---:|']
  for r in report['table1']:
    shape = '' if r['shape'] is None else str(tuple(r['shape']))
    name = '**Total**' if r['layer'] == 'total' else r['layer']
    lines.append(f"| {name} | {shape} | {r['parameters']:,} | "
                 f"{100 * r['sparsity']:.2f}% | {r['distinct_values']} |")
  tuned = 'finetuned' in t2
  metric = report.get('metric', 'accuracy')
  show = lambda k: format_metric(metric, t2[k])  # pylint: disable=unnecessary-lambda-assignment
  title = metric.replace('_', ' ')
  lines += ['', f'## Table 2: test {title}', '',
            '| | Original | Retrained | Pruned |'
            + (' Fine-tuned |' if tuned else ''),
            '|---|---:|---:|---:|' + ('---:|' if tuned else ''),
            f"| {title[0].upper() + title[1:]} | {show('original')} | "
            f"{show('retrained')} | {show('pruned')} |"
            + (f" {show('finetuned')} |" if tuned else '')]
  if 'table2_valid' in report:
    valid = report['table2_valid']
    lines.append(f'| Validation {title} | '
                 + ' | '.join(format_metric(metric, valid[k]) for k in t2)
                 + ' |')
  lines += ['',
            '## Compressed file', '',
            f"`{report['compressed_file']}`: {report['file_bytes']:,} bytes, "
            f"CR_file {fmt(report['cr_file'], '.1f')}x, "
            f"CR_Han {fmt(report['cr_han'], '.1f')}x, "
            f"non-zero fraction {100 * report['nonzero_fraction']:.3f}%.", '',
            size_markdown, '',
            '## Wall time (s)', '']
  lines += [f'- {k}: {v:.1f}' for k, v in report['wall_time_s'].items()]
  lines += ['', '## Figures', '']
  lines += [f'![{k}]({v})' for k, v in report['figures'].items()]
  return '\n'.join(lines) + '\n'


def summary_line(report: Mapping[str, Any]) -> str:
  """One line for the log: pruned accuracy, non-zeros, file size."""
  t2, metric = report['table2'], report.get('metric', 'accuracy')
  show = lambda v: format_metric(metric, v)  # pylint: disable=unnecessary-lambda-assignment
  tuned = f", fine-tuned {show(t2['finetuned'])}" if 'finetuned' in t2 else ''
  return (f"pruned {metric.replace('_', ' ')} {show(t2['pruned'])}{tuned}, "
          f"non-zero {100 * report['nonzero_fraction']:.3f}%, "
          f"{report['file_bytes']:,} bytes "
          f"(CR_file {fmt(report['cr_file'], '.1f')}x)")


def write_report(workdir: str, report: Mapping[str, Any],
                 size_markdown: str) -> None:
  """Writes `report.json` and `report.md` atomically."""
  jsonio.write_json_atomic(os.path.join(workdir, 'report.json'), report)
  fileio.write_atomic(os.path.join(workdir, 'report.md'),
                      markdown(report, size_markdown))


# ----------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------

OUTPUTS = (workdir_layout.REPORT_FILE, workdir_layout.REPORT_MARKDOWN)
HOST_ONLY = True


def _flat(params) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float32))
                         for x in jax.tree.leaves(params)])


def run(ctx) -> dict[str, Any]:
  """Figures 3 and 4, training curves, report.json and report.md."""
  start = time.perf_counter()
  config, workdir = ctx.config, ctx.workdir
  compressed_file = workdir_layout.COMPRESSED_FILE
  teacher_params, _ = workdir_layout.load_params(
      ctx.path(workdir_layout.TEACHER_PARAMS))
  _, retrained, _ = retrain.load_retrained(ctx)
  # The float32 weights of the compressed file, as the tables always showed
  # them, and the merged mixture.
  info = gmp_jax.load_compressed_with_info(
      ctx.path('cleanup', 'quantized.gmpz'))
  quantized, meta = info.params, info.metadata
  fig_dir = ctx.path('figures')
  figures = {
      'retraining_clustering': plots.plot_retraining_clustering(
          _flat(student.initial_params(config, teacher_params)),
          _flat(retrained), meta['mixture_means'],
          meta['mixture_variances'],
          os.path.join(fig_dir, 'retraining_clustering.png'),
          mixing_proportions=meta['mixture_proportions']),
      'model_weights': plots.plot_model_weights(
          quantized, os.path.join(fig_dir, 'model_weights.png')),
      'training_curves': plots.plot_training_curves(
          ctx.log.records(), os.path.join(fig_dir, 'training_curves.png')),
  }
  size_report = gmp_jax.compression_report(path=ctx.path(compressed_file))
  # The stages run so far, in run order (`ctx.results` is filled in it).
  stage_times = {name: record['wall_time_s']
                 for name, record in ctx.results.items()}
  stage_times['report'] = time.perf_counter() - start
  stage_times['total_this_invocation'] = time.perf_counter() - ctx.started
  result = build_report(
      config=config, results=ctx.results, quantized=quantized,
      size_report=size_report, compressed_file=compressed_file,
      wall_time_s={'data': ctx.data_seconds, **stage_times},
      distributed={'num_processes': jax.process_count(),
                   'num_devices': (1 if ctx.runtime is None
                                   else ctx.runtime.num_devices)},
      figures={k: os.path.relpath(v, workdir) for k, v in figures.items()},
      metric=ctx.metric)
  write_report(workdir, result, size_report.to_markdown())
  monitor.log_info('done: %s', summary_line(result))
  return {'report': workdir_layout.REPORT_FILE}
