"""Post-training baselines on a pipeline run's teacher, through the same codec.

  python -m experiments.tools.baselines \\
      --config=experiments/configs/shakespeare.py \\
      --workdir=workdir/shakespeare \\
      [--kmeans=4,8,16,32] [--kmeans_ft=16,32] [--int_bits=8,4]
  python -m experiments.tools.baselines \\
      --table_from=results/shakespeare/baselines.json

reads the teacher of a finished pipeline run (``teacher/params.gmpz``) and
compresses it by

* **per-leaf k-means** (``kmeans<K>``, TFMOT-style weight clustering, no
  retraining): each covered leaf's values replaced by the nearest of K
  centroids (in float32), fitted by Lloyd's algorithm in 1-D (`kmeans_1d`,
  started at the quantiles);
* **per-leaf k-means, then fine-tuning** (``kmeans<K>_ft``, as DKM or
  TFMOT's cluster-then-train): from ``kmeans<K>``, each covered leaf's K
  centroids and a latent float per weight (started at the teacher's), each
  weight reading its leaf's nearest centroid, trained by the
  straight-through estimator with the pipeline's fine-tuning budget and
  loss: `experiments.stages.finetune`'s `setup` and `train`
  (``postprocess.finetune_epochs``, its learning rate and batch size, the
  distillation loss of ``config.retrain``). Zero is no special value
  here: only weights whose centroid is exactly 0 stay 0;
* **uniform per-channel int-b** (``int<b>``): each covered leaf stored as
  integer codes :math:`q = \\mathrm{round}(w / s_c)` in
  :math:`[-(2^{b-1}-1), 2^{b-1}-1]` and one float32 scale per output
  channel (last axis), :math:`s_c = \\max |w_{\\cdot c}| / (2^{b-1} - 1)`
  (`int_quantize`); the file holds the codes and the scales.

The covered leaves are those of the run's mixture (`config.retrain.filter`);
the rest stay float32 in every file. Every baseline is written with
`gmp_jax.save_compressed`, like the pipeline's ``model.gmpz``, so the bytes
compare; each is scored on the same test split by the task's evaluator.
The table (``baselines/baselines.json``, ``baselines/baselines.md``) and a
figure of the metric against file bytes (``figures/baselines.png``) also
hold the teacher and the run's compressed file, plus any other finished
runs given by ``--also`` (other settings on the same teacher), and set each
baseline file against the smallest gmp_jax file that scores at least as
well (`front_ratios`). ``--kmeans_ft`` (unset: the K of ``--kmeans``;
empty: none) picks the fine-tuned rows; their epoch records go to
``baselines/metrics.jsonl`` (rewritten by every invocation), their
checkpoints are removed once trained. ``--table_from`` re-renders a table
written earlier (its front recomputed by the current `front_ratios`) without
running a model.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
import json
import os
import shutil
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

import gmp_jax
from gmp_jax.codec import fileio
from experiments.infra import jsonio
from experiments.infra import cli
from experiments.infra import monitor
from experiments.infra import workdir_layout
from experiments.stages import finetune
from experiments.stages import retrain
from experiments.stages import runner

FLAGS = flags.FLAGS


def kmeans_1d(values: np.ndarray, k: int, *, iterations: int = 50
              ) -> tuple[np.ndarray, np.ndarray]:
  """Lloyd's algorithm on scalars: `(centroids sorted, index per value)`.

  Started at the quantiles (i + 1/2) / k; stops when no centroid moves.
  An empty cluster keeps its centroid.

  Raises:
    ValueError: k < 1, or k above the number of values.
  """
  values = np.asarray(values, np.float64).ravel()
  _check_k(k, values.size)
  centroids = np.unique(np.quantile(values, (np.arange(k) + 0.5) / k))
  for _ in range(iterations):
    index = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
    sums = np.bincount(index, values, minlength=len(centroids))
    counts = np.bincount(index, minlength=len(centroids))
    moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    if np.array_equal(moved, centroids):
      break
    centroids = np.sort(moved)
  index = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
  return centroids, index


def _check_k(k: int, size: int) -> None:
  if not 1 <= k <= size:
    raise ValueError(f'k-means needs k >= 1 and k <= the number of values; '
                     f'got k={k} for {size} values.')


def nearest_centroids(w: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """Each float32 weight's nearest float32 centroid (sorted), ties to the
  lower, by float32 distances: the value the straight-through step reads
  (`gmp_jax.straight_through_params`), so ``kmeans<K>_ft`` starts exactly
  at ``kmeans<K>``."""
  w = np.asarray(w, np.float32)
  # + 0: a centroid -0.0 as +0.0, as a weight kept at zero reads it.
  c = np.sort(np.asarray(centroids, np.float32)) + np.float32(0)
  if len(c) == 1:
    return np.full(w.shape, c[0])
  hi = np.clip(np.searchsorted(c, w), 1, len(c) - 1)
  lo = hi - 1
  return np.where(np.abs(w - c[lo]) <= np.abs(w - c[hi]), c[lo], c[hi])


def int_quantize(w: np.ndarray, bits: int) -> dict[str, np.ndarray]:
  """Symmetric per-channel codes and scales (see the module docstring).

  Leaves of rank < 2 get one scale. A channel of zeros gets scale 1.
  """
  if not 2 <= bits <= 8:
    raise ValueError(f'bits must be in [2, 8], got {bits}.')
  w = np.asarray(w, np.float32)
  levels = 2 ** (bits - 1) - 1
  axes = tuple(range(w.ndim - 1)) if w.ndim >= 2 else None
  peak = np.max(np.abs(w), axis=axes)
  scale = np.where(peak > 0, peak / levels, 1.0).astype(np.float32)
  codes = np.clip(np.round(w / scale), -levels, levels).astype(np.int8)
  return {'codes': codes, 'scale': np.atleast_1d(scale)}


def int_dequantize(tree: dict[str, np.ndarray], shape) -> np.ndarray:
  scale = tree['scale'] if len(shape) >= 2 else tree['scale'][0]
  return (tree['codes'].astype(np.float32) * scale).astype(np.float32)


def _covered(teacher, mixture) -> set[str]:
  del teacher
  return {p for p, _, _ in mixture.signature}


def _map_covered(fn, params, covered):
  return jax.tree_util.tree_map_with_path(
      lambda p, x: fn(np.asarray(x)) if jax.tree_util.keystr(p) in covered
      else np.asarray(x), params)


def _check_leaves(params, covered, ks) -> None:
  """Every k against every covered leaf's size, the leaf named."""
  for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    if jax.tree_util.keystr(p) in covered:
      for k in ks:
        try:
          _check_k(k, int(np.size(x)))
        except ValueError as e:
          raise ValueError(f'Leaf {jax.tree_util.keystr(p)}: {e}') from None


def kmeans_params(params, covered: Collection[str], k: int):
  """`params` with each covered leaf (`keystr` paths) by `kmeans_1d`, each
  weight at its nearest centroid (`nearest_centroids`).

  Raises:
    ValueError: k < 1 or above a covered leaf's size (the leaf named).
  """
  _check_leaves(params, covered, [k])

  def fit(w):
    centroids, _ = kmeans_1d(w, k)
    return nearest_centroids(w, centroids).astype(np.float32)
  return _map_covered(fit, params, covered)


def kmeans_finetune(ctx, name: str, teacher, quantized,
                    covered: Collection[str]):
  """`quantized` (`kmeans_params` of `teacher`) fine-tuned as the pipeline's
  finetune stage would (`finetune.setup` with `leaf_values=covered`, then
  `finetune.train`): the covered leaves' own centroids and latent weights
  started at the teacher's, by the straight-through estimator, as training
  stage `name` (`ctx.train`). Returns the host params."""
  model = ctx.config.model
  training = ctx.timer.run(name, 'data', finetune.setup, ctx.config, model,
                           quantized, teacher, ctx.dataset, teacher,
                           leaf_values=covered)
  state = finetune.train(ctx, name, model, training, teacher)
  return jax.device_get(training.params_of(state))


def run(config, workdir: str, *, kmeans: Sequence[int] = (4, 8, 16, 32),
        kmeans_ft: Sequence[int] | None = None,
        int_bits: Sequence[int] = (8, 4),
        also: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
  """Every baseline of the module docstring; returns the table's dict.

  `kmeans_ft`: the K of the k-means + fine-tuning rows; None = `kmeans`'s.
  None are made when the config has no fine-tuning
  (``postprocess.finetune_epochs`` 0).

  Raises:
    ValueError: a k below 1 or above a covered leaf's size (named), before
      any baseline runs.
  """
  ctx = runner.Context(config, workdir, monitor.StageTimer())
  teacher, _ = workdir_layout.load_params(
      ctx.path(workdir_layout.TEACHER_PARAMS))
  teacher = jax.device_get(teacher)
  mixture = retrain.initial_mixture(teacher, config.retrain)
  covered = _covered(teacher, mixture)
  kmeans_ft = list(kmeans if kmeans_ft is None else kmeans_ft)
  _check_leaves(teacher, covered, [*kmeans, *kmeans_ft])
  ft_epochs = finetune.epochs(config)
  if kmeans_ft and not ft_epochs:
    monitor.log_info('postprocess.finetune_epochs is 0: no k-means + '
                     'fine-tuning rows.')
    kmeans_ft = []
  evaluate = ctx.evaluator(config.model)
  metric = ctx.metric
  out_dir = ctx.path('baselines')
  os.makedirs(out_dir, exist_ok=True)
  # The fine-tuning's epoch records go to baselines/metrics.jsonl (this
  # invocation's only), not the run's (whose report plots every stage there).
  ctx.log = monitor.MetricsLog(out_dir)
  if os.path.exists(ctx.log.path):
    os.remove(ctx.log.path)
  parameters = sum(int(np.size(x)) for x in jax.tree.leaves(teacher))
  raw_bytes = 4 * parameters
  rows = []

  def add(name, kind, params, path, stored=None, extra=None):
    start = time.perf_counter()
    size = gmp_jax.save_compressed(path, params if stored is None else stored,
                                   codebook_dtype=None)
    loaded = gmp_jax.load_compressed(path)
    if stored is not None:  # Decode the codes the file holds.
      loaded = jax.tree_util.tree_map_with_path(
          lambda p, x: int_dequantize(x, np.shape(
              _at(teacher, p))) if isinstance(x, dict) else x,
          loaded, is_leaf=lambda x: isinstance(x, dict) and 'codes' in x)
    score = evaluate(jax.tree.map(np.asarray, loaded))
    rows.append({'name': name, 'kind': kind, 'file_bytes': int(size),
                 'cr_file': raw_bytes / size, **score, **(extra or {})})
    monitor.log_info('%s: %s %.4f, %d bytes (%.1fx) in %.1f s', name,
                     metric, score[metric], size, raw_bytes / size,
                     time.perf_counter() - start)

  add('teacher', 'teacher', teacher, os.path.join(out_dir, 'teacher.gmpz'))
  clustered = {}  # The k-means trees the fine-tuning starts from.
  for k in kmeans:
    params = kmeans_params(teacher, covered, k)
    if k in kmeans_ft:
      clustered[k] = params
    add(f'kmeans{k}', 'kmeans', params,
        os.path.join(out_dir, f'kmeans{k}.gmpz'), extra={'k': k})
  for k in kmeans_ft:
    name = f'kmeans{k}_ft'
    # A fresh start each time: no resuming from an earlier run's checkpoints.
    train_dir = os.path.join(out_dir, name)
    shutil.rmtree(train_dir, ignore_errors=True)
    start = clustered.pop(k, None)
    tuned = kmeans_finetune(
        ctx, os.path.join('baselines', name), teacher,
        kmeans_params(teacher, covered, k) if start is None else start,
        covered)
    shutil.rmtree(train_dir, ignore_errors=True)
    add(name, 'kmeans_ft', tuned, os.path.join(out_dir, f'{name}.gmpz'),
        extra={'k': k, 'finetune_epochs': ft_epochs})
  for bits in int_bits:
    stored = _map_covered(lambda w, b=bits: int_quantize(w, b), teacher,
                          covered)
    add(f'int{bits}', 'int', None, os.path.join(out_dir, f'int{bits}.gmpz'),
        stored=stored, extra={'bits': bits})
  for label, other in (('gmp_jax', workdir), *also):
    path = os.path.join(other, workdir_layout.COMPRESSED_FILE)
    if not os.path.exists(path):
      continue
    params = gmp_jax.load_compressed(path)
    score = evaluate(jax.tree.map(np.asarray, params))
    size = os.path.getsize(path)
    retrain_record = workdir_layout.read_done(other, 'retrain')
    report = json.load(open(os.path.join(other, workdir_layout.REPORT_FILE)))
    rows.append({'name': label, 'kind': 'gmp_jax', 'file_bytes': size,
                 'cr_file': raw_bytes / size, 'workdir': os.path.basename(
                     os.path.normpath(other)), **score,
                 'tau': retrain_record.get('tau'),
                 'tau_ratio': retrain_record.get('tau_ratio'),
                 'retrain_epochs': report['config']['retrain']['epochs'],
                 'nonzero_fraction': report['nonzero_fraction']})
  table = {'metric': metric, 'parameters': parameters,
           'raw_float32_bytes': raw_bytes, 'covered_leaves': len(covered),
           'rows': rows}
  write_table(table, os.path.join(out_dir, 'baselines.json'))
  plot(table, ctx.path('figures', 'baselines.png'))
  return table


def write_table(table, path: str) -> None:
  """Sets `table['front']` (`front_ratios`) and writes the table atomically
  as JSON to `path` and as Markdown to the `baselines.md` beside it."""
  table['front'] = front_ratios(table)
  jsonio.write_json_atomic(path, table)
  fileio.write_atomic(os.path.join(os.path.dirname(path), 'baselines.md'),
                      markdown(table))


def _at(tree, path):
  for entry in path:
    tree = tree[getattr(entry, 'key', getattr(entry, 'idx', None))]
  return tree


def markdown(table) -> str:
  """The table as Markdown, relative to the teacher's metric."""
  metric = table['metric']
  base = next(r[metric] for r in table['rows'] if r['kind'] == 'teacher')
  lines = [f'| method | {metric} | vs teacher | file bytes | CR_file | '
           'setting |', '|---|---:|---:|---:|---:|---|']
  for r in table['rows']:
    setting = ''
    if r['kind'] == 'gmp_jax':
      setting = (f"tau_ratio {r['tau_ratio']}, " if r.get('tau_ratio')
                 else '') + (f"tau {r['tau']:.4g}, {r['retrain_epochs']} "
                             f"retraining epochs, "
                             f"{100 * r['nonzero_fraction']:.1f}% non-zero")
    elif r['kind'] == 'kmeans_ft':
      setting = f"{r['finetune_epochs']} fine-tuning epochs"
    lines.append(f"| {r['name']} | {r[metric]:.4f} | "
                 f"{100 * (r[metric] / base - 1):+.1f}% | "
                 f"{r['file_bytes']:,} | {r['cr_file']:.1f}x | {setting} |")
  lines += ['', 'Against each baseline file (k-means, k-means + fine-tuning, '
            'int-b): the smallest gmp_jax file that scores at least as well, '
            'and how many times smaller it is.', '',
            f'| baseline | {metric} | bytes | gmp_jax file | bytes | smaller |',
            '|---|---:|---:|---|---:|---:|']
  for row in front_ratios(table):
    if row['gmp'] is None:
      lines.append(f"| {row['baseline']} | {row['value']:.4f} | "
                   f"{row['bytes']:,} | none as good | | |")
    else:
      lines.append(f"| {row['baseline']} | {row['value']:.4f} | "
                   f"{row['bytes']:,} | {row['gmp']} | {row['gmp_bytes']:,} | "
                   f"{row['smaller']:.2f}x |")
  return '\n'.join(lines) + '\n'


# The kinds of row `front_ratios` sets gmp_jax's files against.
COMPETITORS = ('kmeans', 'kmeans_ft', 'int')


def front_ratios(table) -> list[dict[str, Any]]:
  """Per baseline row (`COMPETITORS`, in table order): the smallest gmp_jax
  file with a metric no worse, and how many times smaller it is."""
  metric = table['metric']
  lower = metric != 'accuracy'  # bits per byte, cross-entropy: lower wins
  gmp = [r for r in table['rows'] if r['kind'] == 'gmp_jax']
  out = []
  for k in (r for r in table['rows'] if r['kind'] in COMPETITORS):
    good = [g for g in gmp if (g[metric] <= k[metric] if lower
                               else g[metric] >= k[metric])]
    best = min(good, key=lambda g: g['file_bytes']) if good else None
    out.append({'baseline': k['name'], 'kind': k['kind'], 'value': k[metric],
                'bytes': k['file_bytes'],
                'gmp': None if best is None else best['name'],
                'gmp_bytes': None if best is None else best['file_bytes'],
                'smaller': None if best is None else (
                    k['file_bytes'] / best['file_bytes'])})
  return out


def plot(table, path: str) -> str:
  """The metric against file bytes (log scale), one series per kind."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  metric = table['metric']
  fig = Figure(figsize=(6.4, 4.2))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  styles = {'teacher': ('k', '*'), 'kmeans': ('tab:blue', 'o'),
            'kmeans_ft': ('tab:purple', 'v'), 'int': ('tab:orange', 's'),
            'gmp_jax': ('tab:green', 'D')}
  for kind, (color, marker) in styles.items():
    rows = sorted((r for r in table['rows'] if r['kind'] == kind),
                  key=lambda r: r['file_bytes'])
    if not rows:
      continue
    ax.plot([r['file_bytes'] for r in rows], [r[metric] for r in rows],
            marker=marker, color=color, label=kind,
            linestyle='-' if kind.startswith('kmeans') else 'none')
    for r in rows:
      ax.annotate(r['name'], (r['file_bytes'], r[metric]), fontsize=7,
                  xytext=(3, 3), textcoords='offset points')
  ax.set_xscale('log')
  ax.set_xlabel('file bytes (log)')
  ax.set_ylabel(metric.replace('_', ' '))
  ax.grid(True, alpha=0.3)
  ax.legend()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fileio.write_atomic(path, lambda f: fig.savefig(f, format='png', dpi=120))
  return path



def _define_flags() -> None:
  """The command line's flags (defined only when run as a program, so that
  importing this module next to another absl program defines none)."""
  flags.DEFINE_string('workdir', None, 'A finished (or teacher-done) run.')
  flags.DEFINE_list('kmeans', ['4', '8', '16', '32'], 'K of the k-means runs.')
  flags.DEFINE_list('kmeans_ft', None, 'K of the k-means + fine-tuning runs '
                    '(unset: --kmeans\'s; empty: none).')
  flags.DEFINE_list('int_bits', ['8', '4'], 'Bits of the int-b runs.')
  flags.DEFINE_multi_string('also', [], 'label=workdir of another finished run '
                            'on the same teacher, shown beside this one.')
  flags.DEFINE_string('table_from', None, 'A baselines.json written earlier: '
                      'recompute its front by the current rules and rewrite '
                      'it and the baselines.md beside it (no model runs; '
                      'instead of --config and --workdir).')
  config_flags.DEFINE_config_file('config', None, 'The run\'s config.',
                                  lock_config=True)


def rewrite_table(path: str) -> dict[str, Any]:
  """Re-renders a written `baselines.json`: its rows as they are, the front
  recomputed (`front_ratios`), the JSON and the `baselines.md` beside it
  rewritten atomically. Returns the table."""
  with open(path) as f:
    table = json.load(f)
  missing = {'metric', 'rows'} - set(table)
  if missing:
    raise ValueError(f'{path} is not a baselines table: it lacks '
                     f'{sorted(missing)}.')
  write_table(table, path)
  return table


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.table_from:
    if FLAGS.config is not None or FLAGS.workdir is not None:
      raise app.UsageError('--table_from runs no model: pass it without '
                           '--config and --workdir.')
    print(markdown(rewrite_table(FLAGS.table_from)))
    return 0
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError('--config and --workdir are required (or '
                         '--table_from).')
  also = []
  for item in FLAGS.also:
    label, sep, path = item.partition('=')
    if not sep:
      sys.exit(f'error: --also takes label=workdir, got {item!r}')
    also.append((label, path))
  table = run(FLAGS.config, FLAGS.workdir,
              kmeans=[int(k) for k in FLAGS.kmeans],
              kmeans_ft=(None if FLAGS.kmeans_ft is None
                         else [int(k) for k in FLAGS.kmeans_ft]),
              int_bits=[int(b) for b in FLAGS.int_bits], also=also)
  print(markdown(table))
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
