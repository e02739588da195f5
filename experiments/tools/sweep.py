"""Accuracy against file size: the pipeline over a list of tau values.

  python -m experiments.tools.sweep --config=experiments/configs/mnist.py \
      --workdir=workdir/sweep --taus=5e-3,1e-2,2e-2,4e-2,8e-2

Every point is one full pipeline run in `<workdir>/<point>/` (its own
report.json, report.md, model.gmpz and figures). The teacher is trained
once: its stage output (`teacher/params.gmpz` and `teacher/done.json`) is
deterministic given the seed, model, data and teacher config, so it is
copied from the first point that has it (or from `--teacher_workdir`, e.g.
a finished default run) into every other point, whose teacher stage is then
skipped. Other knobs form a grid with the taus, e.g.
`--set=retrain.init_std=0.1,0.25` (repeatable). Any config field can be
overridden for all points as in experiments/mnist.py
(`--config.retrain.epochs=20`).

A rerun skips finished points (those with a report.json of the same
config) and resumes an unfinished one from its checkpoints. After each point
the sweep writes `<workdir>/sweep.json` (the summary: one entry per point
with its accuracies, file bytes and compression rates) and
`<workdir>/pareto.png`: test accuracy against file bytes on a log axis, and
against the fraction of non-zero weights, with the published anchors of the
same net (experiments/tools/compare.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import ast
import itertools
import json
import os
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections

from experiments.tools import compare
from experiments.infra import jsonio
from experiments.infra import cli
from experiments.infra import registry
from experiments.infra import workdir_layout
from experiments.stages import runner
from gmp_jax.codec import fileio

SUMMARY_FILE = 'sweep.json'
FIGURE_FILE = 'pareto.png'
DEFAULT_TAUS = (5e-3, 1e-2, 2e-2, 4e-2, 8e-2)
# Config fields that determine the teacher stage's output.
TEACHER_FIELDS = ('seed', 'model', 'data', 'teacher')
TEACHER = 'teacher'  # The stage the points share.


# ------------------------------------------------------------------ points ---


def parse_knob(spec: str) -> tuple[str, list[Any]]:
  """`'retrain.init_std=0.1,0.25'` -> `('retrain.init_std', [0.1, 0.25])`.

  Values are Python literals (numbers, True/False, None, quoted strings);
  anything else is kept as a string.
  """
  if '=' not in spec:
    raise ValueError(f'expected key=value[,value...], got {spec!r}')
  key, values = spec.split('=', 1)
  key = key.strip()
  if not key or not values.strip():
    raise ValueError(f'expected key=value[,value...], got {spec!r}')

  def literal(v):
    try:
      return ast.literal_eval(v.strip())
    except (ValueError, SyntaxError):
      return v.strip()

  return key, [literal(v) for v in values.split(',')]


def sweep_points(taus: Sequence[float],
                 knobs: Mapping[str, Sequence[Any]] | None = None
                 ) -> list[dict[str, Any]]:
  """The grid of overrides: every tau with every combination of knobs.

  Returns:
    A list of `{dotted config key: value}`, 'retrain.tau' first.
  """
  taus = [float(t) for t in taus]
  if not taus:
    raise ValueError('need at least one tau')
  if any(not t >= 0 for t in taus):
    raise ValueError(f'taus must be >= 0, got {taus}')
  knobs = dict(knobs or {})
  if 'retrain.tau' in knobs:
    raise ValueError('give tau values with taus, not as a knob')
  axes = [('retrain.tau', taus)] + list(knobs.items())
  points = [dict(zip([k for k, _ in axes], combo))
            for combo in itertools.product(*[v for _, v in axes])]
  names = [point_name(p) for p in points]
  if len(set(names)) != len(names):
    raise ValueError(f'repeated sweep points: {names}')
  return points


def point_name(overrides: Mapping[str, Any]) -> str:
  """Directory name of a point, e.g. `tau=0.02` or `tau=0.02,init_std=0.1`."""
  parts = []
  for key, value in overrides.items():
    short = 'tau' if key == 'retrain.tau' else key
    parts.append(f'{short}={value:g}' if isinstance(value, float)
                 else f'{short}={value}')
  name = ','.join(parts)
  if '/' in name or name in ('.', '..'):
    raise ValueError(f'point name {name!r} is not a directory name')
  return name


def point_config(config: ml_collections.ConfigDict,
                 overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with the dotted-key overrides applied."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      if p not in node:
        raise KeyError(f'unknown config field {key!r}')
      node = node[p]
    if leaf not in node:
      raise KeyError(f'unknown config field {key!r}')
    current = node[leaf]
    if isinstance(current, float) and isinstance(value, int):
      value = float(value)
    node[leaf] = value
  return config


def teacher_key(config) -> dict[str, Any]:
  """The config fields that determine the teacher (for sharing checks)."""
  d = workdir_layout.jsonable(
      config.to_dict() if hasattr(config, 'to_dict') else config)
  return {k: d.get(k) for k in TEACHER_FIELDS}


# ----------------------------------------------------------------- teacher ---


def _teacher_done(workdir: str) -> bool:
  return workdir_layout.has_done(workdir, TEACHER)


def _recorded_teacher_key(workdir: str) -> dict[str, Any] | None:
  for rel in (os.path.join(TEACHER, 'source.json'),
              workdir_layout.REPORT_FILE):
    path = os.path.join(workdir, rel)
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      if 'teacher_key' in record:
        return record['teacher_key']
      if 'config' in record:
        return teacher_key(record['config'])
  return None


def share_teacher(source: str, workdir: str, config) -> None:
  """Copies a finished teacher stage from `source` into `workdir`.

  The params are copied before done.json, so an interrupted copy leaves a
  teacher stage that is simply rerun. The source's teacher records of
  metrics.jsonl come along (for the training-curve figure), and
  `teacher/source.json` records where the teacher came from.

  Raises:
    FileNotFoundError: `source` has no finished teacher stage.
    ValueError: `source` recorded a teacher of another seed, model, data or
      teacher config.
  """
  if not _teacher_done(source):
    raise FileNotFoundError(f'{source} has no finished teacher stage '
                            f'({workdir_layout.done_path("", TEACHER)}).')
  want = teacher_key(config)
  have = _recorded_teacher_key(source)
  if have is not None and have != want:
    diff = sorted(k for k in TEACHER_FIELDS if have.get(k) != want.get(k))
    raise ValueError(f'the teacher in {source} was trained with other '
                     f'{diff} settings; it cannot be shared.')
  workdir_layout.copy_file(
      os.path.join(source, workdir_layout.TEACHER_PARAMS),
      os.path.join(workdir, workdir_layout.TEACHER_PARAMS))
  metrics_src = workdir_layout.metrics_path(source)
  metrics_dst = workdir_layout.metrics_path(workdir)
  if os.path.exists(metrics_src) and not os.path.exists(metrics_dst):
    fileio.write_atomic(metrics_dst, workdir_layout.metrics_lines(
        workdir_layout.read_metrics(metrics_src, stage=TEACHER)))
  jsonio.write_json_atomic(
      workdir_layout.stage_path(workdir, TEACHER, 'source.json'),
      {'source': os.path.abspath(source), 'teacher_key': want})
  # The record last: an interrupted copy leaves a stage that reruns.
  workdir_layout.copy_file(workdir_layout.done_path(source, TEACHER),
                           workdir_layout.done_path(workdir, TEACHER))


# ------------------------------------------------------------------- sweep ---


final_accuracy = compare.final_accuracy


def _summary_entry(name: str, overrides, report, workdir: str
                   ) -> dict[str, Any]:
  t2 = report['table2']
  return {'name': name, 'overrides': dict(overrides),
          'workdir': os.path.relpath(os.path.join(workdir, name), workdir),
          'accuracy': final_accuracy(report),
          'original_accuracy': t2['original'],
          'pruned_accuracy': t2['pruned'],
          'finetuned_accuracy': t2.get('finetuned'),
          'file_bytes': report['file_bytes'], 'cr_file': report['cr_file'],
          'cr_han': report['cr_han'],
          'nonzero_fraction': report['nonzero_fraction'],
          'parameters': report['table1'][-1]['parameters']}


def same_config(recorded: Any, current: Any) -> bool:
  """Whether a point's recorded config is `current` (plain dicts).

  A field that `current` sets to None and `recorded` lacks counts as equal:
  configs gain fields as None placeholders that keep the earlier
  behaviour, so a report written before such a field existed still
  describes the same run.
  """
  if isinstance(recorded, dict) and isinstance(current, dict):
    extra = set(current) - set(recorded)
    if set(recorded) - set(current) or any(current[k] is not None
                                           for k in extra):
      return False
    return all(same_config(recorded[k], current[k]) for k in recorded)
  return recorded == current


def _finished_report(point_dir: str, config) -> dict[str, Any] | None:
  path = os.path.join(point_dir, workdir_layout.REPORT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    report = json.load(f)
  if not same_config(report.get('config'),
                     workdir_layout.jsonable(config.to_dict())):
    raise ValueError(
        f'{path} was made with another config; use a new sweep workdir or '
        'remove that point.')
  return report


def run_sweep(config: ml_collections.ConfigDict, workdir: str, *,
              taus: Sequence[float] = DEFAULT_TAUS,
              knobs: Mapping[str, Sequence[Any]] | None = None,
              teacher_workdir: str | None = None,
              run_fn: Callable[[Any, str], Mapping[str, Any]] | None = None,
              ) -> dict[str, Any]:
  """Runs (or resumes) the sweep; returns the summary written to sweep.json.

  Args:
    config: the base config (every point applies its overrides to a copy).
    workdir: the sweep directory; point `p` runs in `<workdir>/<p>/`.
    taus: the tau values.
    knobs: optional `{dotted config key: [values]}` crossed with the taus.
    teacher_workdir: optional workdir of a finished run of the same seed,
      model, data and teacher config whose teacher every point reuses.
    run_fn: `(config, workdir) -> report`; the pipeline's
      `train_and_evaluate` by default.

  Returns:
    `{'points': [...], 'teacher': source, 'model': name, 'figure': path}`.
  """
  if run_fn is None:
    run_fn = runner.train_and_evaluate
  points = sweep_points(taus, knobs)
  os.makedirs(workdir, exist_ok=True)
  if teacher_workdir is not None and not _teacher_done(teacher_workdir):
    raise FileNotFoundError(f'{teacher_workdir} has no finished teacher '
                            'stage (teacher/done.json).')
  teacher = teacher_workdir
  entries = []
  summary = {'model': config.model, 'teacher': None, 'points': entries,
             'figure': FIGURE_FILE}
  for overrides in points:
    name = point_name(overrides)
    point_dir = os.path.join(workdir, name)
    cfg = point_config(config, overrides)
    report = _finished_report(point_dir, cfg)
    if report is None:
      if teacher is None:
        teacher = next((os.path.join(workdir, point_name(p)) for p in points
                        if _teacher_done(os.path.join(workdir,
                                                      point_name(p)))), None)
      if teacher is not None and not _teacher_done(point_dir):
        share_teacher(teacher, point_dir, cfg)
      print(f'sweep: running {name}', flush=True)
      report = run_fn(cfg, point_dir)
      if teacher is None:
        teacher = point_dir
    entries.append(_summary_entry(name, overrides, report, workdir))
    summary['teacher'] = None if teacher is None else os.path.abspath(teacher)
    plot_pareto(entries, config.model, os.path.join(workdir, FIGURE_FILE))
    jsonio.write_json_atomic(os.path.join(workdir, SUMMARY_FILE), summary)
  for e in entries:
    print(f"sweep: {e['name']}: accuracy {100 * e['accuracy']:.2f}%, "
          f"{e['file_bytes']:,} bytes (CR_file {e['cr_file']:.1f}x), "
          f"non-zero {100 * e['nonzero_fraction']:.3f}%", flush=True)
  return summary


# ------------------------------------------------------------------ figure ---


def anchors_for(model: str, parameters: int) -> list[dict[str, Any]]:
  """Published anchors of `model` with their file bytes where known.

  A compression rate CR over N float32 parameters corresponds to
  4 N / CR bytes: real bytes for published bitstreams, an analytic
  equivalent for Han-style counts. Sparsity-only anchors have no bytes.
  """
  out = []
  for a in compare.anchors(registry.model(model).benchmark):
    entry = {'label': a['method'], 'accuracy': 1 - a['error'],
             'counts': a['counts'], 'bytes': None, 'nonzero_fraction': None}
    if a['counts'] in ('file', 'analytic'):
      entry['bytes'] = 4 * parameters / a['compression']
    else:
      entry['nonzero_fraction'] = 1 / a['compression']
    out.append(entry)
  return out


def plot_pareto(entries: Sequence[Mapping[str, Any]], model: str,
                path: str) -> str:
  """Accuracy against file bytes (log) and against the non-zero fraction.

  Our points are connected in order of size and labelled by point name.
  Anchors with a byte figure are markers (filled: real bitstream; hollow:
  analytic count); anchors with only an accuracy and a non-zero fraction
  are markers on the right panel and dashed accuracy levels on the left.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  if not entries:
    raise ValueError('no sweep points to plot')
  fig = Figure(figsize=(11, 4.5))
  ax_b, ax_s = fig.subplots(1, 2)
  order = sorted(entries, key=lambda e: e['file_bytes'])
  acc = [100 * e['accuracy'] for e in order]
  ax_b.plot([e['file_bytes'] for e in order], acc, 'o-', color='C0',
            label='gmp_jax (this sweep)')
  # A point with no non-zero weight has no place on a log axis.
  sparse = [(100 * e['nonzero_fraction'], a, e['name'])
            for e, a in zip(order, acc) if e['nonzero_fraction'] > 0]
  ax_s.plot([x for x, _, _ in sparse], [a for _, a, _ in sparse], 'o-',
            color='C0', label='gmp_jax (this sweep)')
  for e, a in zip(order, acc):
    ax_b.annotate(e['name'], (e['file_bytes'], a), fontsize=7,
                  textcoords='offset points', xytext=(4, 4))
  for x, a, name in sparse:
    ax_s.annotate(name, (x, a), fontsize=7, textcoords='offset points',
                  xytext=(4, 4))
  parameters = int(entries[0]['parameters'])
  for i, a in enumerate(anchors_for(model, parameters)):
    color = f'C{i + 1}'
    y = 100 * a['accuracy']
    if a['bytes'] is not None:
      filled = a['counts'] == 'file'
      ax_b.plot([a['bytes']], [y], 's', color=color,
                markerfacecolor=color if filled else 'none',
                label=a['label'] + ('' if filled else ' (analytic)'))
    else:
      ax_b.axhline(y, color=color, ls='--', lw=1,
                   label=f"{a['label']} (no byte figure)")
      ax_s.plot([100 * a['nonzero_fraction']], [y], 's', color=color,
                label=a['label'])
  ax_b.set_xscale('log')
  ax_b.set_xlabel('compressed file (bytes, log scale)')
  if ax_s.has_data():
    ax_s.set_xscale('log')
  ax_s.set_xlabel('non-zero weights (%, log scale)')
  plain = ticker.FuncFormatter(lambda v, _: f'{v:g}')
  # Minor ticks: label only 2x and 5x a power of ten.
  minor = ticker.FuncFormatter(
      lambda v, _: f'{v:g}' if f'{v:e}'[0] in '25' else '')
  for ax in (ax_b, ax_s):
    ax.set_ylabel('test accuracy (%)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7, loc='best')
    if ax.get_xscale() == 'log':
      ax.xaxis.set_major_formatter(plain)
      ax.xaxis.set_minor_formatter(minor)
  fig.suptitle(f'{model}: accuracy against size ({parameters:,} parameters)')
  fig.tight_layout()
  FigureCanvasAgg(fig)
  fileio.write_atomic(path, lambda f: fig.savefig(f, format='png', dpi=120))
  return path


# --------------------------------------------------------------------- CLI ---


def _define_flags() -> None:
  """The command line's flags (defined only when run as a program, so that
  importing this module next to another absl program defines none)."""
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string('workdir', None, 'Sweep directory.')
  flags.DEFINE_list('taus', [f'{t:g}' for t in DEFAULT_TAUS],
                    'Comma-separated tau values.')
  flags.DEFINE_multi_string('set', [], 'Extra knob key=v1,v2 (repeatable).')
  flags.DEFINE_string('teacher_workdir', None,
                      'A finished run whose teacher every point reuses.')
  config_flags.DEFINE_config_file('config', None, 'Base config file.',
                                  lock_config=True)
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError('--config is required.')
  if flags.FLAGS.verbosity == logging.INFO:
    logging.set_verbosity(logging.WARNING)
  knobs = dict(parse_knob(s) for s in flags.FLAGS.set)
  run_sweep(config, flags.FLAGS.workdir,
            taus=[float(t) for t in flags.FLAGS.taus], knobs=knobs,
            teacher_workdir=flags.FLAGS.teacher_workdir)
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
