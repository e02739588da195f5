"""Training throughput of soft weight-sharing: gmp_jax against PyTorch.

  python -m benchmarks.train_step --json train_step.json
  python -m benchmarks.train_step --smoke              # seconds, JAX only
  python -m benchmarks.train_step --batch_sizes 128 --configs jax_gmp,torch_gmp

Network: the poster's MNIST net (`experiments.image.models`, 642,460 parameters).
Configurations, all with Adam at `gmp_jax.gmp_optimizer`'s learning rates:

* `jax_plain`: `gmp_jax.make_train_step(use_prior=False)`, cross-entropy,
  compiled with `gmp_jax.compile_step`.
* `jax_gmp`: `gmp_jax.make_train_step` with the full retraining objective:
  a 17-component mixture prior over all weights, Gamma hyperpriors and the
  teacher-student MSE at T = 4 (poster eqs. 1 and 2).
* `jax_plain_multi`, `jax_gmp_multi`: the same steps through
  `gmp_jax.make_multi_step`, several steps per dispatch, each batch gathered
  on the device from a dataset held there.
* `torch_plain`, `torch_gmp`: `benchmarks.torch_reference`, the same network
  and mathematics in PyTorch; the prior of `torch_gmp` is wrapped in
  `torch.compile`.

The per-step configurations (`jax_*`, `torch_*`) dispatch one step per call
on batches already in memory, so neither side copies data per step. Windows
of the configurations alternate (round robin), so a change in the machine's
load hits all of them alike; the figure is the median over windows of
images per second. The JSON also holds every window, the load average
before and after, post-processing (`merge_components` + `quantize`) and
compressed file save/load times for the seed network, and the ratios
`jax_gmp / torch_gmp` and `jax_gmp / jax_plain`.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from experiments.infra import cli
import gmp_jax
from gmp_jax import compiling
from experiments.image import models
from experiments.infra import jsonio

ALL_CONFIGS = ('jax_plain', 'jax_gmp', 'jax_plain_multi', 'jax_gmp_multi',
               'torch_plain', 'torch_gmp')
TARGETS = {'jax_gmp/torch_gmp': 2.0, 'jax_gmp/jax_plain': 0.85}

# The retraining recipe of experiments/configs/mnist.py (the published
# mixture: sigma 0.25, pi_0 = 0.99 fixed, which the PyTorch peer implements).
NUM_COMPONENTS = 17
INIT_STD = 0.25
ZERO_PROPORTION = 0.99
TAU = 5e-3
DATASET_SIZE = 60_000
TEMPERATURE = 4.0


def _synthetic_data(num: int, seed: int = 0) -> dict[str, np.ndarray]:
  """MNIST-shaped images with labels and teacher logits (NHWC, float32)."""
  rng = np.random.default_rng(seed)
  return {'x': rng.random((num, 28, 28, 1), np.float32),
          'label': rng.integers(0, 10, num).astype(np.int32),
          'teacher_logits': (3.0 * rng.normal(size=(num, 10))
                             ).astype(np.float32)}


def _batch_indices(num_batches: int, batch_size: int, num: int,
                   seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, num, (num_batches, batch_size)).astype(np.int32)


class Runner:
  """One configuration: `run(steps)` trains that many steps, synchronously."""

  def __init__(self, name: str, run: Callable[[int], None],
               steps_per_call: int = 1):
    self.name = name
    self.run = run
    self.steps_per_call = steps_per_call


def _jax_runner(name: str, setup: dict, batch_size: int, *, prior: bool,
                multi: int, ring: int, compiler_options) -> Runner:
  model, params, mixture = setup['model'], setup['params'], setup['mixture']
  apply_fn = lambda p, x: model.apply({'params': p}, x)
  tx = gmp_jax.gmp_optimizer()
  keys = ('x', 'teacher_logits') if prior else ('x', 'label')
  data = {k: jax.device_put(setup['data'][k]) for k in keys}
  num = setup['data']['x'].shape[0]
  kwargs = dict(tau=TAU, dataset_size=DATASET_SIZE,
                loss=gmp_jax.LossOptions(temperature=TEMPERATURE),
                use_prior=prior)
  # The steps donate their state; each runner owns a copy of the weights.
  params, mixture = jax.tree.map(jnp.copy, (params, mixture))
  holder = {'state': gmp_jax.create_train_state(params, mixture, tx)}
  if multi:
    step = gmp_jax.compile_step(
        gmp_jax.make_multi_step(gmp_jax.make_train_step(apply_fn, tx,
                                                        **kwargs)),
        donate_state=True, compiler_options=compiler_options)
    idx = _batch_indices(ring * multi, batch_size, num, seed=1)
    calls = [jax.device_put(idx[i * multi:(i + 1) * multi])
             for i in range(ring)]
    counter = {'i': 0}

    def run(steps):
      state = holder['state']
      for _ in range(steps // multi):
        state, _ = step(state, data, calls[counter['i'] % ring])
        counter['i'] += 1
      holder['state'] = jax.block_until_ready(state)

    return Runner(name, run, steps_per_call=multi)

  step = gmp_jax.compile_step(gmp_jax.make_train_step(apply_fn, tx, **kwargs),
                              donate_state=True,
                              compiler_options=compiler_options)
  idx = _batch_indices(ring, batch_size, num, seed=1)
  batches = [jax.tree.map(lambda a, i=i: a[i], data) for i in idx]
  jax.block_until_ready(batches)
  counter = {'i': 0}

  def run(steps):
    state = holder['state']
    for _ in range(steps):
      state, _ = step(state, batches[counter['i'] % ring])
      counter['i'] += 1
    holder['state'] = jax.block_until_ready(state)

  return Runner(name, run)


def _torch_runner(name: str, setup: dict, batch_size: int, *, prior: bool,
                  ring: int) -> Runner:
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_reference as ref  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  model = ref.load_flax_params(ref.PosterNet(), setup['params'])
  mixture = (ref.GaussianMixturePrior.from_jax(setup['mixture'])
             if prior else None)
  objective = ref.Objective(model, mixture, tau=TAU,
                            dataset_size=DATASET_SIZE,
                            temperature=TEMPERATURE, compile_prior=prior)
  optimizer = ref.make_optimizer(model, mixture)
  data = setup['data']
  idx = _batch_indices(ring, batch_size, data['x'].shape[0], seed=1)
  batches = []
  for i in idx:
    b = {'x': torch.from_numpy(np.ascontiguousarray(
        data['x'][i].transpose(0, 3, 1, 2)))}
    if prior:
      b['teacher_logits'] = torch.from_numpy(data['teacher_logits'][i])
    else:
      b['label'] = torch.from_numpy(data['label'][i].astype(np.int64))
    batches.append(b)
  counter = {'i': 0}

  def run(steps):
    for _ in range(steps):
      ref.train_step(objective, optimizer, batches[counter['i'] % ring])
      counter['i'] += 1

  return Runner(name, run)


def _time_windows(runners: Sequence[Runner], *, warmup_steps: int,
                  window_steps: int, windows: int) -> dict[str, list[float]]:
  """Seconds per step of every window, windows alternating between runners."""
  for r in runners:
    start = time.perf_counter()
    r.run(max(warmup_steps, r.steps_per_call))  # Compiles, then warms up.
    print(f'  warm-up {r.name}: {time.perf_counter() - start:.1f} s',
          file=sys.stderr)
  times = {r.name: [] for r in runners}
  for _ in range(windows):
    for r in runners:
      steps = max(window_steps // r.steps_per_call, 1) * r.steps_per_call
      start = time.perf_counter()
      r.run(steps)
      times[r.name].append((time.perf_counter() - start) / steps)
  return times


def _postprocess_timings(setup: dict, runs: int) -> dict[str, Any]:
  params, mixture = setup['params'], setup['mixture']

  def post():
    merged = gmp_jax.merge_components(mixture)
    return jax.block_until_ready(gmp_jax.quantize(params, merged))

  out = {'merge_and_quantize': timing.median_seconds(post, runs)}
  try:
    from gmp_jax import codec  # pylint: disable=import-outside-toplevel
    save, load = codec.save_compressed, codec.load_compressed
  except (ImportError, AttributeError):
    out['codec'] = None
    return out
  trees = {'seed': jax.tree.map(np.asarray, post())}
  try:
    from benchmarks import codec as codec_bench  # pylint: disable=import-outside-toplevel
    # The seed network quantises to almost all zeros; this one has the
    # poster's sparsity and 10 shared values per layer.
    trees['synthetic_poster'] = codec_bench.poster_params()
  except (ImportError, AttributeError):
    pass
  with tempfile.TemporaryDirectory() as tmp:
    for name, tree in trees.items():
      path = os.path.join(tmp, f'{name}.gmpz')
      prefix = '' if name == 'seed' else f'{name}_'
      out[prefix + 'save'] = timing.median_seconds(lambda: save(path, tree), runs)
      out[prefix + 'load'] = timing.median_seconds(lambda: load(path), runs)
      out[prefix + 'file_bytes'] = os.path.getsize(path)
  out['codec'] = 'gmp_jax.codec'
  return out


def _ratios(results: dict[tuple[str, int], dict]) -> dict[str, Any]:
  ratios = {}
  batch_sizes = sorted({b for _, b in results})
  pairs = (('jax_gmp', 'torch_gmp'), ('jax_gmp', 'jax_plain'),
           ('jax_gmp_multi', 'torch_gmp'), ('jax_gmp_multi', 'jax_plain_multi'),
           ('jax_plain', 'torch_plain'), ('torch_gmp', 'torch_plain'))
  for b in batch_sizes:
    for num, den in pairs:
      if (num, b) in results and (den, b) in results:
        ratios[f'{num}/{den}@{b}'] = (results[(num, b)]['images_per_s']
                                      / results[(den, b)]['images_per_s'])
  return ratios


def run_benchmark(*, configs: Sequence[str], batch_sizes: Sequence[int],
                  windows: int, window_steps: int, warmup_steps: int,
                  multi_steps: int, num_examples: int, postprocess_runs: int,
                  compiler_options=None,
                  torch_threads: int | None = None) -> dict[str, Any]:
  """Runs the benchmark and returns the JSON-ready report."""
  torch_threads = torch_threads or os.cpu_count() or 1
  torch_version = None
  if any(c.startswith('torch') for c in configs):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      print('PyTorch is not installed (pip install -e ".[bench]"); skipping '
            'the torch configurations.', file=sys.stderr)
      configs = [c for c in configs if not c.startswith('torch')]
    else:
      torch.set_num_threads(torch_threads)
      torch_version = torch.__version__
  model = models.get_model('poster')
  params = models.init_params(model, jax.random.key(0))
  mixture = gmp_jax.init_mixture(params, NUM_COMPONENTS, leaf_scale=None,
                                 init_std=INIT_STD,
                                 zero_proportion=ZERO_PROPORTION,
                                 learn_zero_proportion=False)
  setup = {'model': model, 'params': params, 'mixture': mixture,
           'data': _synthetic_data(num_examples)}
  options = (compiling.default_compiler_options()
             if compiler_options is None else dict(compiler_options))
  report: dict[str, Any] = {
      'command': ' '.join(['python -m benchmarks.train_step'] + sys.argv[1:]),
      'machine': timing.machine(),
      'versions': {'python': platform.python_version(),
                   'jax': jax.__version__, 'torch': torch_version,
                   'numpy': np.__version__},
      'settings': {'configs': list(configs), 'batch_sizes': list(batch_sizes),
                   'windows': windows, 'window_steps': window_steps,
                   'warmup_steps': warmup_steps, 'multi_steps': multi_steps,
                   'num_examples': num_examples,
                   'num_components': NUM_COMPONENTS, 'tau': TAU,
                   'dataset_size': DATASET_SIZE, 'temperature': TEMPERATURE,
                   'num_params': int(sum(x.size for x in
                                         jax.tree.leaves(params))),
                   'torch_threads': torch_threads if torch_version else None,
                   'jax_compiler_options': options},
      'load_before': timing.load(),
  }
  results = {}
  for batch_size in batch_sizes:
    runners = []
    for name in configs:
      prior = 'gmp' in name
      if name.startswith('jax'):
        runners.append(_jax_runner(
            name, setup, batch_size, prior=prior,
            multi=multi_steps if name.endswith('_multi') else 0, ring=8,
            compiler_options=options))
      else:
        runners.append(_torch_runner(name, setup, batch_size, prior=prior,
                                     ring=8))
    print(f'batch {batch_size}:', file=sys.stderr)
    times = _time_windows(runners, warmup_steps=warmup_steps,
                          window_steps=window_steps, windows=windows)
    for name, secs in times.items():
      rates = [batch_size / s for s in secs]
      results[(name, batch_size)] = {
          'config': name, 'batch_size': batch_size,
          'dispatch': ('multi-step' if name.endswith('_multi')
                       else 'per-step'),
          'images_per_s': statistics.median(rates),
          'ms_per_step': 1e3 * statistics.median(secs),
          'min_images_per_s': min(rates), 'max_images_per_s': max(rates),
          'window_images_per_s': rates}
  report['results'] = list(results.values())
  report['ratios'] = _ratios(results)
  report['targets'] = TARGETS
  report['postprocess'] = (_postprocess_timings(setup, postprocess_runs)
                           if postprocess_runs else None)
  report['load_after'] = timing.load()
  return report


def format_table(report: dict[str, Any]) -> str:
  """The report as Markdown tables."""
  lines = ['| config | dispatch | batch | images/s (median) | ms/step | '
           'images/s range |', '|---|---|---:|---:|---:|---|']
  for r in report['results']:
    lines.append(
        f"| {r['config']} | {r['dispatch']} | {r['batch_size']} | "
        f"{r['images_per_s']:,.0f} | {r['ms_per_step']:.1f} | "
        f"{r['min_images_per_s']:,.0f}–{r['max_images_per_s']:,.0f} |")
  lines += ['', '| ratio (images/s) | value | target |', '|---|---:|---:|']
  for name, value in report['ratios'].items():
    target = TARGETS.get(name.split('@')[0].replace('_multi', ''))
    target = f'≥ {target}' if target else ''
    lines.append(f'| {name} | {value:.2f} | {target} |')
  post = report['postprocess'] or {}
  if post:
    lines += ['', '| post-processing | first call | median |',
              '|---|---:|---:|']
  for key, label in (('merge_and_quantize', 'merge + quantize (seed)'),
                     ('save', 'save (seed)'), ('load', 'load (seed)'),
                     ('synthetic_poster_save', 'save (synthetic poster)'),
                     ('synthetic_poster_load', 'load (synthetic poster)')):
    if key in post:
      lines.append(f"| {label} | {1e3 * post[key]['first_s']:.1f} ms | "
                   f"{1e3 * post[key]['median_s']:.1f} ms |")
  for key in ('file_bytes', 'synthetic_poster_file_bytes'):
    if post.get(key):
      lines.append(f'| {key} | {post[key]:,} | |')
  lines += ['', f"load before: {report['load_before']['uptime']}",
            f"load after:  {report['load_after']['uptime']}"]
  return '\n'.join(lines)


def _define_flags() -> None:
  flags.DEFINE_string('json', None, 'Write the report to this file.')
  flags.DEFINE_bool('smoke', False, 'Two one-step windows, one step per '
                    'multi-step dispatch, batch 16, JAX only, no '
                    'post-processing (for tests).')
  flags.DEFINE_string('batch_sizes', None, 'Comma-separated (default 128,256).')
  flags.DEFINE_string('configs', None,
                      f"Comma-separated subset of {','.join(ALL_CONFIGS)}.")
  flags.DEFINE_integer('windows', None, 'Timing windows per configuration.')
  flags.DEFINE_integer('window_steps', None, 'Steps per window.')
  flags.DEFINE_integer('multi_steps', None,
                       'Steps per dispatch of the *_multi configs.')
  flags.DEFINE_integer('torch_threads', None,
                       'torch.set_num_threads (default: all cores).')
  flags.DEFINE_bool('compiler_options', True, "Compile the JAX steps with "
                    "gmp_jax's compiler options; --nocompiler_options: XLA's "
                    'defaults (compiler_options={}).')


def main(argv: list[str]) -> int:
  """Runs the benchmark, prints its table and writes --json."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  if args.smoke:
    # Compile-bound: one step per window and per multi-step dispatch (an
    # unrolled dispatch of k steps compiles k steps).
    defaults = dict(configs='jax_plain,jax_gmp,jax_gmp_multi', batch_sizes='16',
                    windows=2, window_steps=1, warmup_steps=1, multi_steps=1,
                    num_examples=64, postprocess_runs=0)
  else:
    defaults = dict(configs=','.join(ALL_CONFIGS), batch_sizes='128,256',
                    windows=7, window_steps=20, warmup_steps=5, multi_steps=5,
                    num_examples=4096, postprocess_runs=5)
  configs = (args.configs or defaults['configs']).split(',')
  unknown = set(configs) - set(ALL_CONFIGS)
  if unknown:
    raise app.UsageError(f'unknown configs {sorted(unknown)}; choose from '
                         f'{ALL_CONFIGS}')
  report = run_benchmark(
      configs=configs,
      batch_sizes=[int(b) for b in
                   (args.batch_sizes or defaults['batch_sizes']).split(',')],
      windows=args.windows or defaults['windows'],
      window_steps=args.window_steps or defaults['window_steps'],
      warmup_steps=defaults['warmup_steps'],
      multi_steps=args.multi_steps or defaults['multi_steps'],
      num_examples=defaults['num_examples'],
      postprocess_runs=defaults['postprocess_runs'],
      compiler_options=None if args.compiler_options else {},
      torch_threads=args.torch_threads)
  load = report['load_before']['loadavg'][0]
  if load > 0.5 * (os.cpu_count() or 1):
    print(f'warning: load average {load:.2f} on {os.cpu_count()} cores; other '
          'jobs share the machine, retake the figures when it is quiet.',
          file=sys.stderr)
  print(format_table(report))
  if args.json:
    jsonio.write_json_atomic(args.json, report)
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
