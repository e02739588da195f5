"""Images/s of the GMP train step on 1, 2 and 4 devices and on 2 processes.

  python -m benchmarks.scaling --json results/scaling_cpu.json
  python -m benchmarks.scaling --smoke          # seconds; checks it runs

The step is `gmp_jax.make_train_step` with the full retraining objective
(the poster's MNIST net, 642,460 parameters, a 17-component mixture prior,
Gamma hyperpriors, teacher-student MSE at T = 4), compiled with
`gmp_jax.compile_step` and donating its state. The global batch is the same
for every configuration and split over the devices:

* one process with 1, 2 and 4 devices (`JAX_NUM_CPU_DEVICES=4`), data
  parallel (state replicated) and FSDP (large arrays of the state split
  along their last axis, `experiments.infra.sharding`);
* P processes x D devices (default 2 x 2) through `jax.distributed` on
  localhost: each process builds only its rows of every batch and the
  global batch with `jax.make_array_from_process_local_data`; collectives
  between processes go through gloo.

In one process the windows of the configurations alternate (round robin),
so load changes hit all of them alike; the multi-process run has its own
windows. The figure is the median over windows of images per second, and
`relative_to_one_device` divides it by the one-device data-parallel figure.

Virtual CPU devices share the machine's cores: on a 2-core machine no
speed-up is expected, and the figures measure the overhead of splitting the
step (per-device batches, collectives, and in the multi-process case two
XLA runtimes and gloo over loopback TCP).
"""

from __future__ import annotations

import os

# The in-process configurations need 4 CPU devices. JAX reads this when it
# starts, so it only takes effect when this is the program's entry point.
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')

# pylint: disable=g-import-not-at-top,wrong-import-position
from collections.abc import Callable, Sequence
import functools
import json
import pathlib
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import timing
from experiments.infra import cli
import gmp_jax
from gmp_jax import compiling
from experiments.image import models
from experiments.infra import jsonio
from experiments.infra import sharding

NUM_COMPONENTS = 17
TAU = 5e-3
DATASET_SIZE = 60_000
TEMPERATURE = 4.0
LAYOUTS = ('data_parallel', 'fsdp')
RING = 4  # Distinct batches cycled through.

DEFAULTS = {'batch_size': 128, 'device_counts': (1, 2, 4),
            'layouts': LAYOUTS, 'processes': 2, 'devices_per_process': 2,
            'windows': 7, 'window_steps': 10, 'warmup_steps': 3}
SMOKE = {'batch_size': 16, 'device_counts': (1, 2), 'layouts': LAYOUTS,
         'processes': 2, 'devices_per_process': 2, 'windows': 2,
         'window_steps': 1, 'warmup_steps': 1}


def _batches(batch_size: int) -> list[dict[str, np.ndarray]]:
  """RING global batches of MNIST-shaped data, the same in every process."""
  rng = np.random.default_rng(0)
  return [{'x': rng.random((batch_size, 28, 28, 1), np.float32),
           'teacher_logits': (3.0 * rng.normal(size=(batch_size, 10))
                              ).astype(np.float32)}
          for _ in range(RING)]


@functools.cache
def _initial_params():
  """The poster net's initial weights, made (and compiled for) once per
  process; every configuration copies them into its own state."""
  return models.init_params(models.get_model('poster'), jax.random.key(0))


class Runner:
  """One configuration; `run(steps)` trains that many steps, synchronously."""

  def __init__(self, name: str, mesh: jax.sharding.Mesh, layout: str,
               batch_size: int):
    self.name = name
    self.layout = layout
    self.devices = mesh.size
    model = models.get_model('poster')
    params = _initial_params()
    mixture = gmp_jax.init_mixture(params, NUM_COMPONENTS)
    tx = gmp_jax.gmp_optimizer()
    state = gmp_jax.create_train_state(params, mixture, tx)
    self.num_params = int(sum(x.size for x in jax.tree.leaves(params)))
    if layout == 'fsdp':
      shardings = sharding.fsdp_sharding(state, mesh)
    elif layout == 'data_parallel':
      shardings = sharding.replicated_sharding(state, mesh)
    else:
      raise ValueError(f'Unknown layout {layout!r}; use one of {LAYOUTS}.')
    # Every process holds the whole initial state; each device takes its part.
    self.state = jax.tree.map(
        lambda x, s: jax.make_array_from_callback(
            x.shape, s, lambda idx, x=np.asarray(x): x[idx]),
        state, shardings)
    self.split_arrays = sum(not x.sharding.is_fully_replicated
                            for x in jax.tree.leaves(self.state))
    batch_sharding = sharding.batch_sharding(mesh)
    rows = sharding.process_batch_slice(batch_size, batch_sharding)
    self.batches = [
        {k: jax.make_array_from_process_local_data(batch_sharding, v[rows])
         for k, v in b.items()} for b in _batches(batch_size)]
    self.step = gmp_jax.compile_step(
        gmp_jax.make_train_step(
            lambda p, x: model.apply({'params': p}, x), tx, tau=TAU,
            dataset_size=DATASET_SIZE,
            loss=gmp_jax.LossOptions(temperature=TEMPERATURE)),
        donate_state=True, out_shardings=(shardings, None))
    self.calls = 0

  def run(self, steps: int) -> None:
    metrics = None
    for _ in range(steps):
      self.state, metrics = self.step(self.state,
                                      self.batches[self.calls % RING])
      self.calls += 1
    jax.block_until_ready((self.state, metrics))


def _time_windows(runners: Sequence[Runner], *, warmup_steps: int,
                  window_steps: int, windows: int) -> dict[str, list[float]]:
  """Seconds per step of every window, windows alternating between runners."""
  for r in runners:
    start = time.perf_counter()
    r.run(warmup_steps)  # Compiles, then warms up.
    print(f'  warm-up {r.name}: {time.perf_counter() - start:.1f} s',
          file=sys.stderr)
  times = {r.name: [] for r in runners}
  for _ in range(windows):
    for r in runners:
      start = time.perf_counter()
      r.run(window_steps)
      times[r.name].append((time.perf_counter() - start) / window_steps)
  return times


def _rows(runners: Sequence[Runner], times: dict[str, list[float]], *,
          processes: int, batch_size: int) -> list[dict[str, Any]]:
  rows = []
  for r in runners:
    rates = [batch_size / s for s in times[r.name]]
    rows.append({
        'config': r.name, 'processes': processes, 'devices': r.devices,
        'layout': r.layout, 'batch_size': batch_size,
        'per_device_batch': batch_size // r.devices,
        'split_state_arrays': r.split_arrays,
        'images_per_s': statistics.median(rates),
        'ms_per_step': 1e3 * statistics.median(times[r.name]),
        'min_images_per_s': min(rates), 'max_images_per_s': max(rates),
        'window_images_per_s': rates})
  return rows


def _make_runners(mesh, layouts, batch_size, prefix):
  runners = []
  for layout in layouts:
    if layout == 'fsdp' and mesh.size == 1:
      continue  # Nothing to split over.
    runners.append(Runner(f'{prefix} {layout}', mesh, layout, batch_size))
  return runners


def run_in_process(*, device_counts: Sequence[int], layouts: Sequence[str],
                   batch_size: int, windows: int, window_steps: int,
                   warmup_steps: int) -> list[dict[str, Any]]:
  """The one-process configurations, windows alternating between them."""
  available = jax.local_device_count()
  runners = []
  for n in device_counts:
    if n > available:
      raise ValueError(
          f'{n} devices asked for, this process has {available} '
          '(JAX_NUM_CPU_DEVICES on CPU).')
    if batch_size % n:
      raise ValueError(f'The batch of {batch_size} does not split evenly '
                       f'over {n} devices.')
    mesh = sharding.data_mesh(jax.local_devices()[:n])
    runners += _make_runners(mesh, layouts, batch_size, f'1x{n}')
  print('one process:', file=sys.stderr)
  times = _time_windows(runners, warmup_steps=warmup_steps,
                        window_steps=window_steps, windows=windows)
  return _rows(runners, times, processes=1, batch_size=batch_size)


# ---------------------------------------------------------------------------
# Multi-process configuration
# ---------------------------------------------------------------------------


def _worker(args) -> None:
  """One process of the P x D run; process 0 writes the rows to --out."""
  jax.distributed.initialize(args.coordinator_address, args.num_processes,
                             args.process_id,
                             initialization_timeout=args.init_timeout)
  mesh = sharding.data_mesh()  # Every device of every process.
  name = f'{jax.process_count()}x{jax.local_device_count()}'
  runners = _make_runners(mesh, args.layouts.split(','), args.batch_size,
                          name)
  times = _time_windows(runners, warmup_steps=args.warmup_steps,
                        window_steps=args.window_steps, windows=args.windows)
  rows = _rows(runners, times, processes=jax.process_count(),
               batch_size=args.batch_size)
  if jax.process_index() == 0:
    jsonio.write_json_atomic(args.out, rows)
  jax.distributed.shutdown()


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_multiprocess(*, processes: int, devices_per_process: int,
                     layouts: Sequence[str], batch_size: int, windows: int,
                     window_steps: int, warmup_steps: int,
                     timeout: float) -> list[dict[str, Any]]:
  """Starts `processes` copies of this module as workers; returns the rows.

  Every process runs in its own process group and is killed if another
  fails or the run exceeds `timeout` seconds.
  """
  if batch_size % (processes * devices_per_process):
    raise ValueError(
        f'The batch of {batch_size} does not split evenly over '
        f'{processes * devices_per_process} devices.')
  address = f'localhost:{_free_port()}'
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices_per_process),
             JAX_PLATFORMS='cpu')
  repo = str(pathlib.Path(__file__).resolve().parents[1])
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [repo,
                                                    env.get('PYTHONPATH')]))
  with tempfile.TemporaryDirectory(prefix='gmp_scaling_') as tmp:
    out = pathlib.Path(tmp) / 'rows.json'
    procs, logs = [], []
    try:
      for i in range(processes):
        log = open(pathlib.Path(tmp) / f'process_{i}.log', 'w+b')  # pylint: disable=consider-using-with
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, '-m', 'benchmarks.scaling', '--worker',
             f'--coordinator_address={address}',
             f'--num_processes={processes}', f'--process_id={i}',
             f'--out={out}', f'--layouts={",".join(layouts)}',
             f'--batch_size={batch_size}', f'--windows={windows}',
             f'--window_steps={window_steps}',
             f'--warmup_steps={warmup_steps}'],
            cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True))
      print(f'{processes} processes x {devices_per_process} devices:',
            file=sys.stderr)
      deadline = time.monotonic() + timeout
      while True:
        codes = [p.poll() for p in procs]
        if any(c not in (None, 0) for c in codes) or (
            time.monotonic() > deadline):
          why = ('timed out' if all(c in (None, 0) for c in codes)
                 else f'exit codes {codes}')
          tails = []
          for i, log in enumerate(logs):
            log.seek(0)
            tails.append(f'--- process {i} ---\n'
                         + log.read().decode(errors='replace')[-2000:])
          raise RuntimeError(f'The multi-process run failed ({why}):\n'
                             + '\n'.join(tails))
        if all(c == 0 for c in codes):
          break
        time.sleep(0.5)
    finally:
      for p in procs:
        if p.poll() is None:
          os.killpg(p.pid, signal.SIGKILL)
          p.wait(timeout=30)
      for log in logs:
        log.close()
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def run_benchmark(*, batch_size: int, device_counts: Sequence[int],
                  layouts: Sequence[str], processes: int,
                  devices_per_process: int, windows: int, window_steps: int,
                  warmup_steps: int, timeout: float = 1800,
                  command: str = 'python -m benchmarks.scaling'
                  ) -> dict[str, Any]:
  """Runs every configuration and returns the JSON-ready report."""
  for layout in layouts:
    if layout not in LAYOUTS:
      raise ValueError(f'Unknown layout {layout!r}; use one of {LAYOUTS}.')
  report: dict[str, Any] = {
      'command': command,
      'machine': {'cpu': timing.cpu_name(), 'cores': os.cpu_count(),
                  'backend': jax.default_backend(),
                  'devices_in_process': jax.local_device_count(),
                  'note': ('Virtual CPU devices share the cores; the '
                           'figures measure the overhead of splitting the '
                           'step, not a speed-up.')},
      'versions': {'python': platform.python_version(),
                   'jax': jax.__version__, 'numpy': np.__version__},
      'settings': {'batch_size': batch_size,
                   'device_counts': list(device_counts),
                   'layouts': list(layouts), 'processes': processes,
                   'devices_per_process': devices_per_process,
                   'windows': windows, 'window_steps': window_steps,
                   'warmup_steps': warmup_steps,
                   'num_components': NUM_COMPONENTS, 'tau': TAU,
                   'temperature': TEMPERATURE, 'model': 'poster',
                   'fsdp_min_size': sharding.DEFAULT_MIN_SIZE,
                   'jax_compiler_options':
                       compiling.default_compiler_options()},
      'load_before': timing.load(),
  }
  rows = run_in_process(device_counts=device_counts, layouts=layouts,
                        batch_size=batch_size, windows=windows,
                        window_steps=window_steps, warmup_steps=warmup_steps)
  if processes > 1:
    rows += run_multiprocess(
        processes=processes, devices_per_process=devices_per_process,
        layouts=layouts, batch_size=batch_size, windows=windows,
        window_steps=window_steps, warmup_steps=warmup_steps,
        timeout=timeout)
  base = next((r['images_per_s'] for r in rows
               if r['devices'] == 1 and r['processes'] == 1), None)
  for r in rows:
    r['relative_to_one_device'] = (r['images_per_s'] / base if base
                                   else None)
  report['results'] = rows
  report['load_after'] = timing.load()
  return report


def format_table(report: dict[str, Any]) -> str:
  lines = ['| config | processes | devices | layout | batch/device | '
           'images/s | ms/step | vs 1 device |',
           '|---|---|---|---|---|---|---|---|']
  for r in report['results']:
    rel = r['relative_to_one_device']
    lines.append(
        f"| {r['config']} | {r['processes']} | {r['devices']} | "
        f"{r['layout']} | {r['per_device_batch']} | "
        f"{r['images_per_s']:.0f} | {r['ms_per_step']:.1f} | "
        f"{'' if rel is None else f'{rel:.2f}x'} |")
  return '\n'.join(lines)


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(t) for t in text.split(',') if t)


def _define_flags() -> None:
  flags.DEFINE_string('json', None, 'Write the report to this file.')
  flags.DEFINE_bool('smoke', False, 'Tiny settings, seconds: checks that it '
                    'runs.')
  flags.DEFINE_integer('batch_size', None, 'Global batch.')
  flags.DEFINE_string('device_counts', None, 'Comma-separated, e.g. 1,2,4.')
  flags.DEFINE_string('layouts', None,
                      f'Comma-separated subset of {",".join(LAYOUTS)}.')
  flags.DEFINE_integer('processes', None,
                       'Processes of the multi-process run; 0 skips it.')
  flags.DEFINE_integer('devices_per_process', None, 'CPU devices each.')
  flags.DEFINE_integer('windows', None, 'Timing windows.')
  flags.DEFINE_integer('window_steps', None, 'Steps per window.')
  flags.DEFINE_integer('warmup_steps', None, 'Untimed steps first.')
  flags.DEFINE_float('timeout', 1800,
                     'Seconds the multi-process run may take.')
  # Worker mode (started by run_multiprocess).
  flags.DEFINE_bool('worker', False, 'Internal: one process of the run.')
  flags.DEFINE_string('coordinator_address', None, 'Internal: process 0.')
  flags.DEFINE_integer('num_processes', None, 'Internal: processes.')
  flags.DEFINE_integer('process_id', None, 'Internal: this process.')
  flags.DEFINE_integer('init_timeout', 120,
                       'Internal: seconds to wait for every process.')
  flags.DEFINE_string('out', None, 'Internal: the rows file.')


def main(argv: list[str]) -> int:
  """Runs the benchmark (or one process of its multi-process run)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  settings = dict(SMOKE if args.smoke else DEFAULTS)
  given = {'batch_size': args.batch_size,
           'device_counts': (_ints(args.device_counts)
                             if args.device_counts is not None else None),
           'processes': args.processes,
           'devices_per_process': args.devices_per_process,
           'windows': args.windows, 'window_steps': args.window_steps,
           'warmup_steps': args.warmup_steps}
  settings.update({k: v for k, v in given.items() if v is not None})
  if args.layouts is not None:
    settings['layouts'] = tuple(args.layouts.split(','))
  if args.worker:
    _worker(types.SimpleNamespace(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes, process_id=args.process_id,
        init_timeout=args.init_timeout, out=args.out,
        batch_size=settings['batch_size'], windows=settings['windows'],
        window_steps=settings['window_steps'],
        warmup_steps=settings['warmup_steps'],
        layouts=','.join(settings['layouts'])))
    return 0
  command = cli.command('benchmarks.scaling')
  report = run_benchmark(timeout=args.timeout, command=command, **settings)
  print(format_table(report))
  if args.json:
    jsonio.write_json_atomic(args.json, report)
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
