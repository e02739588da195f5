"""Where the pipeline's wall time goes, stage by stage.

  python -m benchmarks.pipeline                     # the :smoke config
  python -m benchmarks.pipeline --config=experiments/configs/mnist.py \\
      --config.teacher.epochs=1 --config.retrain.epochs=1
  python -m benchmarks.pipeline --config=experiments/configs/mnist.py  # full
  python -m benchmarks.pipeline --loops --config=experiments/configs/mnist.py

The first three run `experiments.stages.runner.train_and_evaluate` in a fresh
workdir with a blocking `monitor.StageTimer`, so that device work is charged
to the section that launched it, and print per stage: wall time, then
compile, step compute, host syncs, evaluation, checkpointing, data and other
(the wall time no section claims), the process CPU seconds (all threads; a
check on figures taken while other jobs share the machine), the train steps
and the step compute per step. Loading the dataset counts as 'data' of the
first stage that needs it (and is also shown on its own). They write `results/pipeline_<platform>.json` (`--json` to change,
`--json=` for none) with what `jax.devices()` reports, the load average and
the config.

`--reference_windows=N` brackets the run with N windows of the step
benchmark (`benchmarks.train_step`'s `jax_gmp_multi` at the retraining batch
size) before and after it, and reports the retraining's wall time over
(steps x the mean step time of both): the issue-13 ratio, measured against
the machine as it was during the run. Every stage's per-epoch wall times are
in the JSON (`epoch_s`).

`--loops` instead times the retraining step's chunk programs
(`experiments.infra.loop.chunk_program`: 'unroll' with 1, 2 and 5 steps per call,
'scan' with 5) and the test-set evaluation (`evaluation.TestSet`: a host loop of
per-batch calls against one program), the measurements behind the loop's
per-backend choices; it prints and stores compile seconds and ms per step.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from benchmarks import timing
from benchmarks import train_step as train_step_bench
import gmp_jax
from experiments.image import models
from experiments.infra import cli
from experiments.infra import evaluation
from experiments.infra import jsonio
from experiments.infra import loop
from experiments.infra import monitor
from experiments.stages import retrain
from experiments.stages import runner
from experiments.stages import student

FLAGS = flags.FLAGS

COLUMNS = ('wall', *monitor.SECTIONS, 'other')


def breakdown(report: dict[str, Any], timer: monitor.StageTimer
              ) -> dict[str, dict[str, Any]]:
  """Per stage: wall and CPU seconds, per section and in all; steps."""
  rows = {}
  for name in runner.STAGES:
    wall = report['wall_time_s'][name]
    sections = {s: timer.seconds[name].get(s, 0.0) for s in monitor.SECTIONS}
    steps = timer.steps.get(name, 0)
    rows[name] = {
        'wall': wall, **sections, 'other': wall - sum(sections.values()),
        'cpu': timer.cpu_seconds[name].get('total', 0.0),
        'cpu_sections': {s: timer.cpu_seconds[name].get(s, 0.0)
                         for s in monitor.SECTIONS},
        'steps': steps,
        'step_ms': 1e3 * sections['step'] / steps if steps else None,
        'epoch_s': timer.epoch_seconds(name)}
  return rows


def table(rows: dict[str, dict[str, Any]], total: float,
          data_s: float) -> str:
  """Markdown: seconds per stage and section, steps and ms per step."""
  head = ['stage', *COLUMNS, 'cpu', 'steps', 'ms/step']
  lines = ['| ' + ' | '.join(head) + ' |',
           '|---|' + '---:|' * (len(head) - 1)]
  for name, r in rows.items():
    ms = '' if r['step_ms'] is None else f"{r['step_ms']:.1f}"
    lines.append(f'| {name} | ' + ' | '.join(
        f'{r[c]:.2f}' for c in (*COLUMNS, 'cpu')) + f" | {r['steps']} | {ms} |")
  lines.append(f'| (of which dataset load) | {data_s:.2f} |'
               + ' |' * (len(head) - 2))
  lines.append(f'| **total** | {total:.2f} |' + ' |' * (len(head) - 2))
  return '\n'.join(lines)


def run_pipeline(config, workdir: str, *, block: bool) -> dict[str, Any]:
  timer = monitor.StageTimer(block=block)
  start = time.perf_counter()
  report = runner.train_and_evaluate(config, workdir, timer=timer)
  total = time.perf_counter() - start
  rows = breakdown(report, timer)
  print(table(rows, total, report['wall_time_s']['data']))
  return {'stages': rows, 'total_s': total,
          'data_load_s': report['wall_time_s']['data'],
          'table2': report['table2'],
          'nonzero_fraction': report['nonzero_fraction'],
          'file_bytes': report['file_bytes']}


def reference_step(config, windows: int, window_steps: int
                   ) -> dict[str, Any]:
  """The step benchmark's `jax_gmp_multi` at the retraining batch size."""
  report = train_step_bench.run_benchmark(
      configs=['jax_gmp_multi'], batch_sizes=[config.retrain.batch_size],
      windows=windows, window_steps=window_steps, warmup_steps=5,
      multi_steps=5, num_examples=4096, postprocess_runs=0)
  row, = report['results']
  window_ms = [1e3 * row['batch_size'] / r
               for r in row['window_images_per_s']]
  return {'ms_per_step': row['ms_per_step'], 'window_ms': window_ms,
          'load_before': report['load_before'],
          'load_after': report['load_after']}


def against_reference(rows: dict[str, dict[str, Any]],
                      before: dict[str, Any], after: dict[str, Any]
                      ) -> dict[str, Any]:
  """Retraining wall time over (steps x the bracketing step time)."""
  ms = 0.5 * (before['ms_per_step'] + after['ms_per_step'])
  retrain = rows['retrain']
  epochs = retrain['epoch_s'][1:]  # The first holds the compilation.
  steps_per_epoch = retrain['steps'] / max(len(retrain['epoch_s']), 1)
  return {'before': before, 'after': after, 'ms_per_step': ms,
          'retrain_ratio': retrain['wall'] / (retrain['steps'] * ms * 1e-3),
          'median_epoch_s': statistics.median(epochs) if epochs else None,
          'median_epoch_ratio': (statistics.median(epochs)
                                 / (steps_per_epoch * ms * 1e-3)
                                 if epochs else None)}


def _timed_calls(fn, args_fn, calls: int, windows: int = 3
                 ) -> dict[str, float]:
  """Seconds per call: `calls` calls back to back, blocking once at the end.

  As in the train loop, the host does not wait between calls. The figure is
  the median over `windows` windows (after one warm-up call), in wall and
  process CPU seconds.
  """
  jax.block_until_ready(fn(*args_fn()))
  walls, cpus = [], []
  for _ in range(windows):
    start, cpu = time.perf_counter(), time.process_time()
    out = None
    for _ in range(calls):
      out = fn(*args_fn())
    jax.block_until_ready(out)
    walls.append((time.perf_counter() - start) / calls)
    cpus.append((time.process_time() - cpu) / calls)
  return {'median_s': statistics.median(walls),
          'median_cpu_s': statistics.median(cpus), 'calls': calls,
          'windows': windows}


def hlo_census(text: str) -> dict[str, int]:
  """Counts of the ops that decide how a program runs, in StableHLO text."""
  ops = {'while': 'stablehlo.while', 'convolution': 'stablehlo.convolution',
         'gather': 'stablehlo.gather', 'custom_call': 'stablehlo.custom_call',
         'host_transfer': ('stablehlo.infeed', 'stablehlo.outfeed',
                           'stablehlo.send', 'stablehlo.recv')}
  return {name: sum(text.count(p) for p in
                    ((pat,) if isinstance(pat, str) else pat))
          for name, pat in ops.items()}


def compare_loops(config, calls: int) -> dict[str, Any]:
  """Compile time and step time of the chunk programs; eval variants."""
  dataset = runner.load_data(config)
  teacher = models.init_params(config.model, jax.random.key(config.seed),
                               dataset=config.data.name)
  setup = retrain.MODES[config.retrain.mode](config, teacher, dataset)
  data = jax.device_put(setup.data)
  n = len(dataset['train'][0])
  batch = config.retrain.batch_size
  steps_per_epoch = n // batch
  params = student.initial_params(config, teacher)
  state0 = gmp_jax.create_train_state(
      params, retrain.initial_mixture(params, config.retrain),
      setup.optimizer)
  acc = loop.zero_accumulator(setup.train_step, state0, data)
  order = jax.device_put(np.arange(steps_per_epoch * batch, dtype=np.int32)
                         .reshape(steps_per_epoch, batch))
  out = {'train': [], 'eval': []}
  variants = [('unroll', 1), ('unroll', 2), ('unroll', 5), ('scan', 5)]
  for kind, size in variants:
    jitted = gmp_jax.compile_step(
        loop.chunk_program(setup.train_step, kind, size), donate_state=True)
    holder = {'state': jax.tree.map(jnp.copy, state0)}
    args_fn = lambda h=holder: (h['state'], acc, data, order, np.int32(0),
                                np.int32(0))
    start, cpu = time.perf_counter(), time.process_time()
    compiled = jitted.lower(*args_fn()).compile()
    compile_s = time.perf_counter() - start
    compile_cpu_s = time.process_time() - cpu

    def call(*args, h=holder, c=compiled):
      h['state'], a = c(*args)
      return a

    timed = _timed_calls(call, args_fn, max(1, calls // size))
    row = {'kind': kind, 'steps_per_call': size, 'compile_s': compile_s,
           'compile_cpu_s': compile_cpu_s,
           'step_ms': 1e3 * timed['median_s'] / size,
           'step_cpu_ms': 1e3 * timed['median_cpu_s'] / size, **timed}
    out['train'].append(row)
    print(f"train {kind:6s} x{size:<3d}: compile {compile_s:6.2f} s "
          f"(cpu {compile_cpu_s:6.2f} s), {row['step_ms']:7.1f} ms/step "
          f"(cpu {row['step_cpu_ms']:7.1f} ms)", flush=True)
  # What one call of a whole-epoch scan holds (the GPU/TPU default): the
  # lowered program, read without compiling it.
  epoch_scan = jax.jit(loop.chunk_program(setup.train_step, 'scan',
                                          steps_per_epoch))
  text = epoch_scan.lower(state0, acc, data, order, np.int32(0),
                          np.int32(0)).as_text()
  out['epoch_scan_hlo'] = hlo_census(text)
  out['epoch_scan_hlo']['steps_per_call'] = steps_per_epoch
  print(f'one-call epoch ({steps_per_epoch} steps, scan), lowered: '
        f"{out['epoch_scan_hlo']}", flush=True)
  x, y = dataset['test']
  apply_fn = student.apply_fn(config.model, config.data.name)
  host_step = gmp_jax.compile_step(gmp_jax.make_eval_step(apply_fn))
  b = config.eval_batch_size

  def host_loop(p):  # The alternative to one program: a call per batch.
    totals = None
    for start in range(0, len(x), b):
      part = host_step(p, {'x': x[start:start + b],
                           'label': y[start:start + b]})
      totals = part if totals is None else jax.tree.map(jnp.add, totals,
                                                        part)
    return {'accuracy': float(totals['correct']) / float(totals['count'])}

  eval_variants = {'host loop (a call per batch)': host_loop}
  for kind in loop.KINDS:
    test = evaluation.TestSet(x, y, batch_size=config.eval_batch_size,
                              kind=kind)
    eval_variants[f'one program ({kind})'] = test.evaluator(apply_fn)
  for name, fn in eval_variants.items():
    start = time.perf_counter()
    fn(params)
    first_s = time.perf_counter() - start
    timed = _timed_calls(fn, lambda: (params,), 1, windows=calls)
    out['eval'].append({'variant': name, 'first_s': first_s, **timed})
    print(f"eval {name:30s}: first {first_s:6.2f} s, "
          f"{timed['median_s']:6.3f} s (cpu {timed['median_cpu_s']:6.3f} s)",
          flush=True)
  return out


def _define_flags() -> None:
  """The command line's flags (defined only when run as a program, so that
  importing this module next to another absl program defines none)."""
  config_flags.DEFINE_config_file(
      'config', 'experiments/configs/mnist.py:smoke',
      'Pipeline config, e.g. experiments/configs/mnist.py[:smoke].',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Workdir (default: a fresh temp dir).')
  flags.DEFINE_string(
      'json', None, 'Where to write the figures (default results/pipeline_'
      '<platform>.json, with --loops results/pipeline_loops_<platform>.json); '
      'empty for nowhere.')
  flags.DEFINE_bool('block', True, 'Wait for device work in each section.')
  flags.DEFINE_bool('loops', False, 'Time loop kinds and eval instead.')
  flags.DEFINE_integer(
      'reference_windows', 0, 'Bracket the run with this many windows of the '
      'step benchmark (benchmarks.train_step, jax_gmp_multi at the retraining '
      'batch size) before and after it, and report the retraining wall time '
      'over (steps x reference step time); 0: none.')
  flags.DEFINE_integer('reference_window_steps', 780,
                       'Steps per reference window.')
  flags.DEFINE_integer('calls', 10, '--loops: steps per timing window '
                       '(eval: windows).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  monitor.quiet_third_party_logs()
  config = FLAGS.config
  result: dict[str, Any] = {
      'command': cli.command('benchmarks.pipeline'),
      'machine': timing.machine(),
      'versions': {'python': platform.python_version(),
                   'jax': jax.__version__, 'numpy': np.__version__},
      'loop': loop.LoopOptions.from_config(config)._asdict(),
      'load_before': timing.load(),
  }
  if FLAGS.loops:
    result['loops'] = compare_loops(config, FLAGS.calls)
  else:
    result['block'] = FLAGS.block
    refs = FLAGS.reference_windows, FLAGS.reference_window_steps
    before = reference_step(config, *refs) if refs[0] else None
    with tempfile.TemporaryDirectory(prefix='gmp_jax_bench_') as tmp:
      result.update(run_pipeline(config, FLAGS.workdir or tmp,
                                 block=FLAGS.block))
    if before is not None:
      ref = against_reference(result['stages'], before,
                              reference_step(config, *refs))
      result['reference'] = ref
      print(f"retraining: {ref['retrain_ratio']:.3f}x steps x "
            f"{ref['ms_per_step']:.1f} ms (step benchmark before "
            f"{before['ms_per_step']:.1f}, after "
            f"{ref['after']['ms_per_step']:.1f}); median epoch "
            f"{ref['median_epoch_ratio']:.3f}x")
  result['load_after'] = timing.load()
  result['config'] = config.to_dict()
  path = FLAGS.json
  if path is None:
    path = ('results/pipeline_loops_{platform}.json' if FLAGS.loops
            else 'results/pipeline_{platform}.json')
  if path:
    path = path.format(platform=result['machine']['platform'])
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    jsonio.write_json_atomic(path, result)
    print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
