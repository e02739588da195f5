"""Time and peak memory of every stage against the number of weights N.

  python -m benchmarks.scale --json results/scale_cpu.json \\
      --plot results/scale_cpu.png               # N = 1M ... 100M
  python -m benchmarks.scale --smoke             # N in {1e5, 2e5}, in-process
  python -m benchmarks.scale --sizes 1e6,1e7 \\
      --stages save_compressed,load_compressed  # a selection
  python -m benchmarks.scale --library OTHER_CHECKOUT ...  # another gmp_jax
  python -m benchmarks.scale --compare=BEFORE.json,AFTER.json  # a table

Stages (`--stages`, default all):

* `mixture_log_prob`: `jax.jit(gmp_jax.mixture_log_prob)`, 17 components.
* `value_and_grad`: `jax.jit(jax.value_and_grad(mixture_log_prob,
  argnums=(0, 1)))`, the prior's value and its gradients for the weights
  and the mixture.
* `train_step`: one step of `gmp_jax.make_train_step` with the full
  retraining objective (17-component prior, Gamma hyperpriors,
  teacher-student MSE at T = 4, Adam from `gmp_optimizer`), compiled by
  `compile_step` with the state donated, on a wide MLP whose weights are
  the layout's leaves (batch `--batch_size`).
* `merge_components`, `quantize`: post-processing of the same weights and
  mixture (merging works on the K entries of the mixture only, so its time
  should not depend on N).
* `save_compressed`, `load_compressed`, `compression_report` (of the
  saved file) and `inspect` (`python -m gmp_jax.inspect FILE` as a
  subprocess; its time includes the interpreter start, which `startup_s`
  records alone).

Data. The prior stages use float32 weights drawn from N(0, 0.05^2), the
look of a trained layer, and a 17-component mixture (pi_0 = 0.9, 16 means
at +-linspace(0.04, 0.2, 8), standard deviations 0.01), which
`merge_components`' KL rules keep apart; its default cap then merges one
pair (16 values after quantisation; 17 before the cap, as in the committed
results/scale_cpu*.json). The codec
stages use a quantised tree built directly with NumPy: 95% zeros and 16
shared nonzero values of unequal frequencies, the same for every leaf.

Layouts (`--layouts`):

* `one_leaf`: one (4096, N / 4096) matrix; the MLP is `x @ W` with a
  4096-wide input.
* `many_leaves`: the leaves of a transformer's MLP blocks, alternating up
  (512, 1024) and down (1024, 512) projections of 512k weights each (an
  even number of them, at least two); the MLP is the residual stack
  `x + tanh(x @ up) @ down / sqrt(blocks)`. `--leaf_shape` changes the up
  shape (the smoke run uses 128 x 256).

N is rounded to what the layout holds; the JSON records the exact count.

Timing. Each measurement calls the stage once (compilation, warm-up;
`first_s`) and then `--runs` more times with `timing.median_seconds`;
`seconds` is their median and `weights_per_s`, `ns_per_weight` derive from
it. The result of one call is dropped before the next starts.

Peak memory. Every (stage, N, layout) runs in a fresh subprocess of this
module (unless `--in_process`, the smoke default), so that nothing of an
earlier stage (jit caches, allocator pools, freed but retained memory) is
counted. Inside it the peak resident set is measured exactly rather than
sampled: just before the stage the kernel's high-water mark is reset
(`echo 5 > /proc/self/clear_refs`, Linux >= 4.0), and after it VmHWM of
/proc/self/status (the same counter as `ru_maxrss`) minus the RSS before
the stage is the peak the stage added. A sampling thread reading
/proc/self/statm would miss short spikes and compete for the CPU with
the stage; `ru_maxrss` alone, never reset, would hide a stage's peak under
the larger one of building its inputs. `peak_mb_added` is the high-water
mark over all the calls (the first included, so compilation too) minus the
RSS before the first: what running the stage in a fresh process costs, the
figure the extrapolation uses. `first_call_peak_mb_added` covers the first
call alone, and `warm_peak_mb_added` what the later calls add on top of
what the process holds after the first, results included (memory the
allocator kept from the first call is reused and not counted again, so it
can be far below the others). For `inspect` these are the ru_maxrss of
the CLI process (`os.wait4`) minus that of a process that only imports
it. Where clear_refs cannot be written the meter falls back to sampling
/proc/self/statm every millisecond (`memory_method` in the JSON). The
figures are host memory; on an accelerator, `device_peak_mb` adds the
device's `peak_bytes_in_use`.

Extrapolation. Per stage and layout, a least-squares line through
(log N, log seconds) and (log N, log peak MB) of the largest `--fit_points`
sizes gives the slope and the figures at 1B and 7B weights (JSON
"extrapolation"; printed). A constant part (compilation, the CLI's start)
flattens the log-log line over small N, so an affine fit c + b N and its
per-weight cost b are stored beside it; fitted over sizes where the
constant is small, the two agree.

Another gmp_jax. `--library DIR` imports gmp_jax from DIR (a checkout of
another commit, e.g. `git worktree add DIR COMMIT`) in this process, the
workers and the `inspect` CLI, while this file and its helpers come from
this tree. (`PYTHONPATH=DIR` alone is not enough: `python -m` puts the
current directory, this tree, first on sys.path.) A stage whose function
or keyword is missing there is skipped with a note in the JSON. A loading
limit of `load_compressed` (any `max_*elements*` / `max_*bytes*` keyword,
found with `inspect.signature`) is passed the file's size, so the checks
are timed; `limits_passed` records it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import gc
import importlib
import inspect
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from typing import Any, NamedTuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from experiments.infra import jsonio
from experiments.infra import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGES = ('mixture_log_prob', 'value_and_grad', 'train_step',
          'merge_components', 'quantize', 'save_compressed',
          'load_compressed', 'compression_report', 'inspect')
CODEC_STAGES = ('save_compressed', 'load_compressed', 'compression_report',
                'inspect')
LAYOUTS = ('one_leaf', 'many_leaves')
SIZES = (1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000,
         50_000_000, 100_000_000)
SMOKE_SIZES = (100_000, 200_000)
EXTRAPOLATE_TO = (1_000_000_000, 7_000_000_000)
ONE_LEAF_ROWS = 4096
LEAF_SHAPE = (512, 1024)
SMOKE_LEAF_SHAPE = (128, 256)

NUM_COMPONENTS = 17
WEIGHT_STD = 0.05
MEANS_RANGE = (0.04, 0.2)  # Magnitudes of the nonzero means.
ZERO_PROPORTION = 0.9
COMPONENT_STD = 0.01
SPARSITY = 0.95
SHARED_VALUES = 16
TAU = 5e-3
DATASET_SIZE = 60_000
TEMPERATURE = 4.0
_CHUNK = 1 << 20  # Elements generated at a time.

# Functions each stage needs from gmp_jax.
REQUIRES = {
    'mixture_log_prob': ('init_mixture', 'mixture_log_prob'),
    'value_and_grad': ('init_mixture', 'mixture_log_prob'),
    'train_step': ('init_mixture', 'gmp_optimizer', 'create_train_state',
                   'make_train_step', 'compile_step'),
    'merge_components': ('init_mixture', 'merge_components'),
    'quantize': ('init_mixture', 'merge_components', 'quantize'),
    'save_compressed': ('save_compressed',),
    'load_compressed': ('save_compressed', 'load_compressed'),
    'compression_report': ('save_compressed', 'compression_report'),
    'inspect': ('save_compressed', 'inspect'),
}


# ---------------------------------------------------------------------------
# The library under test
# ---------------------------------------------------------------------------


def import_library(path: str | None = None):
  """Imports gmp_jax, from `path` (a checkout's root) when given."""
  if path:
    root = str(pathlib.Path(path).resolve())
    if not (pathlib.Path(root) / 'gmp_jax' / '__init__.py').is_file():
      raise ValueError(f'--library {path!r} holds no gmp_jax/__init__.py.')
    if 'gmp_jax' in sys.modules and not sys.modules[
        'gmp_jax'].__file__.startswith(root + os.sep):
      for name in [m for m in sys.modules
                   if m == 'gmp_jax' or m.startswith('gmp_jax.')]:
        del sys.modules[name]
    sys.path.insert(0, root)
  return importlib.import_module('gmp_jax')


def _fileio():
  """The atomic writer of the library under test (imported after --library;
  `gmp_jax.fileio` in checkouts before issue 28)."""
  try:
    return importlib.import_module('gmp_jax.codec.fileio')
  except ModuleNotFoundError:
    return importlib.import_module('gmp_jax.fileio')


def _write_json(path: str, obj: Any) -> None:
  _fileio().write_atomic(path, json.dumps(obj, indent=2,
                                          default=jsonio.json_default))


def _git(root: pathlib.Path, *args: str) -> str | None:
  try:
    out = subprocess.run(['git', '-C', str(root), *args], capture_output=True,
                         text=True, check=False, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def library_info(gmp) -> dict[str, Any]:
  """Which gmp_jax is under test: its checkout, version and git commit."""
  root = pathlib.Path(gmp.__file__).resolve().parents[1]
  status = _git(root, 'status', '--porcelain', '--', 'gmp_jax')
  # '.' for this tree, else the other checkout's name (no host paths).
  where = '.' if root == REPO else root.name
  return {'path': where, 'version': getattr(gmp, '__version__', None),
          'git_commit': _git(root, 'rev-parse', 'HEAD'),
          'gmp_jax_modified': None if status is None else bool(status)}


def missing_api(gmp, stage: str) -> list[str]:
  """The names `stage` needs that `gmp` lacks (the CLI module for inspect)."""
  missing = [name for name in REQUIRES[stage] if name != 'inspect'
             and not hasattr(gmp, name)]
  if stage == 'inspect':
    try:
      importlib.import_module('gmp_jax.inspect')
    except ImportError:
      missing.append('gmp_jax.inspect')
  return missing


def limit_kwargs(fn: Callable[..., Any], *, elements: int,
                 nbytes: int) -> tuple[dict[str, int], list[str]]:
  """Loading limits of `fn` set to what a file of `elements` weights needs.

  Keywords named `max_*` with 'element' in the name get `elements`, those
  with 'byte' get `nbytes` (decoded plus file bytes: whichever a limit
  counts, it is met).

  Returns:
    `(kwargs, unknown)`: the keywords to pass, and other `max_*` keywords,
    which keep their defaults.
  """
  try:
    names = list(inspect.signature(fn).parameters)
  except (TypeError, ValueError):
    return {}, []
  kwargs, unknown = {}, []
  for name in names:
    if not name.startswith('max_'):
      continue
    if 'element' in name:
      kwargs[name] = int(elements)
    elif 'byte' in name:
      kwargs[name] = int(nbytes)
    else:
      unknown.append(name)
  return kwargs, unknown


# ---------------------------------------------------------------------------
# Layouts and data
# ---------------------------------------------------------------------------


class Spec(NamedTuple):
  """One measurement's tree: its layout and leaf shapes, named in order."""
  layout: str
  requested: int
  leaves: tuple[tuple[str, tuple[int, int]], ...]

  @property
  def n(self) -> int:
    return sum(r * c for _, (r, c) in self.leaves)


def layout_spec(layout: str, n: int,
                leaf_shape: tuple[int, int] = LEAF_SHAPE) -> Spec:
  """The leaves of `layout` holding about `n` weights.

  Args:
    layout: 'one_leaf' ((4096, round(n / 4096))) or 'many_leaves' (an even
      number >= 2 of alternating `leaf_shape` and transposed leaves).
    n: the number of weights asked for, >= 1.
    leaf_shape: the up projection's shape in 'many_leaves'.

  Returns:
    The `Spec`; `spec.n` is the exact number of weights.

  Raises:
    ValueError: unknown layout, n < 1 or a bad leaf shape.
  """
  if not n >= 1:
    raise ValueError(f'The number of weights must be >= 1, got {n!r}.')
  if layout == 'one_leaf':
    cols = max(1, round(n / ONE_LEAF_ROWS))
    return Spec(layout, int(n), (('w', (ONE_LEAF_ROWS, cols)),))
  if layout == 'many_leaves':
    if len(leaf_shape) != 2 or min(leaf_shape) < 1:
      raise ValueError(f'leaf_shape must be two positive ints, got '
                       f'{leaf_shape!r}.')
    r, c = leaf_shape
    blocks = max(1, round(n / (2 * r * c)))
    width = len(str(blocks - 1))
    leaves = []
    for b in range(blocks):
      leaves += [(f'block_{b:0{width}d}/up', (r, c)),
                 (f'block_{b:0{width}d}/down', (c, r))]
    return Spec(layout, int(n), tuple(leaves))
  raise ValueError(f'Unknown layout {layout!r}; use one of {LAYOUTS}.')


def _nest(spec: Spec, arrays: list) -> dict:
  tree: dict = {}
  for (name, _), x in zip(spec.leaves, arrays):
    node = tree
    *parents, last = name.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = x
  return tree


def _chunks(shape: tuple[int, int]):
  rows = max(1, _CHUNK // shape[1])
  for start in range(0, shape[0], rows):
    yield slice(start, min(start + rows, shape[0]))


def gaussian_tree(spec: Spec, seed: int = 0) -> dict:
  """float32 weights ~ N(0, WEIGHT_STD^2) in the layout, NumPy arrays."""
  rng = np.random.default_rng(seed)
  arrays = []
  for _, shape in spec.leaves:
    x = np.empty(shape, np.float32)
    for rows in _chunks(shape):
      x[rows] = rng.standard_normal(x[rows].shape, np.float32)
    x *= np.float32(WEIGHT_STD)
    arrays.append(x)
  return _nest(spec, arrays)


def shared_values() -> tuple[np.ndarray, np.ndarray]:
  """The codec data's 16 nonzero values and their frequencies."""
  magnitudes = np.linspace(0.02, 0.3, SHARED_VALUES // 2)
  values = np.concatenate([-magnitudes[::-1], magnitudes]).astype(np.float32)
  p = np.exp(-np.abs(values) / 0.1)  # Small magnitudes are the most common.
  return values, p / p.sum()


def quantized_tree(spec: Spec, seed: int = 0) -> dict:
  """A quantised tree: SPARSITY zeros, 16 shared values, NumPy float32."""
  rng = np.random.default_rng(seed)
  values, p = shared_values()
  arrays = []
  for _, shape in spec.leaves:
    x = np.zeros(shape, np.float32)
    for rows in _chunks(shape):
      part = x[rows]
      keep = rng.random(part.shape, np.float32) >= np.float32(SPARSITY)
      part[keep] = values[rng.choice(values.size, int(keep.sum()), p=p)]
    arrays.append(x)
  return _nest(spec, arrays)


def trained_mixture(gmp, params):
  """17 components: pi_0 = 0.9 at 0, 16 means +-[0.04, 0.2], std 0.01 each.

  The nonzero means stay out of the zero component's reach and apart from
  each other, so `merge_components`' KL rules keep all 17; its default cap
  merges one pair (16 shared values).
  """
  mixture = gmp.init_mixture(params, NUM_COMPONENTS, leaf_scale=None,
                             init_std=COMPONENT_STD,
                             zero_proportion=ZERO_PROPORTION)
  half = np.linspace(*MEANS_RANGE, (NUM_COMPONENTS - 1) // 2)
  means = np.concatenate([-half[::-1], half])
  return mixture.replace(
      nonzero_means=jnp.asarray(means, mixture.nonzero_means.dtype))


def _to_jax(tree: dict) -> dict:
  return jax.tree.map(jnp.asarray, tree)


def mlp_apply(spec: Spec) -> tuple[Callable[[Any, Any], Any], int, int]:
  """`(apply_fn, input width, output width)` of the layout's wide MLP."""
  if spec.layout == 'one_leaf':
    rows, cols = spec.leaves[0][1]
    return (lambda p, x: x @ p['w']), rows, cols
  names = [name.split('/')[0] for name, _ in spec.leaves[::2]]
  scale = 1.0 / math.sqrt(len(names))
  width = spec.leaves[0][1][0]

  def apply_fn(p, x):
    for name in names:
      block = p[name]
      x = x + scale * (jnp.tanh(x @ block['up']) @ block['down'])
    return x

  return apply_fn, width, width


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------


def _status_kb(field: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  raise OSError(f'{field} not in /proc/self/status')


def _rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


class PeakMeter:
  """Peak resident memory added since `reset()`, in bytes.

  Resets the kernel's high-water mark through /proc/self/clear_refs where
  it can ('hwm_reset'); otherwise samples /proc/self/statm every
  millisecond from a thread ('sampled').
  """

  def __init__(self):
    try:
      with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
      _status_kb('VmHWM')
      self.method = 'hwm_reset'
    except OSError:
      self.method = 'sampled'
    self._base = 0
    self._peak = 0
    self._stop = threading.Event()
    self._thread = None

  def reset(self, collect: bool = True) -> None:
    if collect:
      gc.collect()
    if self.method == 'hwm_reset':
      with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
      self._base = _rss_bytes()
      return
    self.stop()
    self._base = self._peak = _rss_bytes()
    self._stop.clear()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()

  def _sample(self) -> None:
    while not self._stop.wait(1e-3):
      self._peak = max(self._peak, _rss_bytes())

  def stop(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None

  @property
  def base(self) -> int:
    """The RSS at the last `reset()`."""
    return self._base

  @staticmethod
  def base_now() -> int:
    """The RSS now."""
    return _rss_bytes()

  def peak_added(self) -> int:
    if self.method == 'hwm_reset':
      return 1024 * _status_kb('VmHWM') - self._base
    self._peak = max(self._peak, _rss_bytes())
    return self._peak - self._base


def _device_peak_mb() -> float | None:
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return stats['peak_bytes_in_use'] / 2**20


# ---------------------------------------------------------------------------
# Stages: each returns (call, extras); call() runs the stage once and returns
# what it produced (dropped before the next call).
# ---------------------------------------------------------------------------


class Context(NamedTuple):
  gmp: Any
  spec: Spec
  workdir: pathlib.Path
  batch_size: int


def _prior_inputs(ctx: Context):
  params = _to_jax(gaussian_tree(ctx.spec))
  return params, trained_mixture(ctx.gmp, params)


def _stage_mixture_log_prob(ctx: Context):
  params, mixture = _prior_inputs(ctx)
  f = jax.jit(ctx.gmp.mixture_log_prob)
  return lambda: jax.block_until_ready(f(params, mixture)), {}


def _stage_value_and_grad(ctx: Context):
  params, mixture = _prior_inputs(ctx)
  f = jax.jit(jax.value_and_grad(ctx.gmp.mixture_log_prob, argnums=(0, 1)))
  return lambda: jax.block_until_ready(f(params, mixture)), {}


def _stage_train_step(ctx: Context):
  gmp = ctx.gmp
  params, mixture = _prior_inputs(ctx)
  apply_fn, width_in, width_out = mlp_apply(ctx.spec)
  tx = gmp.gmp_optimizer()
  holder = {'state': gmp.create_train_state(params, mixture, tx)}
  del params, mixture  # The state owns (and donates) them.
  step = gmp.compile_step(
      gmp.make_train_step(apply_fn, tx, tau=TAU, dataset_size=DATASET_SIZE,
                          loss=gmp.LossOptions(temperature=TEMPERATURE)),
      donate_state=True)
  rng = np.random.default_rng(1)
  batch = {'x': jnp.asarray(rng.standard_normal(
               (ctx.batch_size, width_in), np.float32)),
           'teacher_logits': jnp.asarray(3.0 * rng.standard_normal(
               (ctx.batch_size, width_out), np.float32))}

  def call():
    holder['state'], metrics = step(holder['state'], batch)
    jax.block_until_ready((holder['state'], metrics))

  return call, {'batch_size': ctx.batch_size, 'mlp_input': width_in,
                'mlp_output': width_out}


def _stage_merge_components(ctx: Context):
  _, mixture = _prior_inputs(ctx)
  merged = ctx.gmp.merge_components(mixture)
  return (lambda: jax.block_until_ready(ctx.gmp.merge_components(mixture)),
          {'components_after_merge': int(merged.num_components)})


def _stage_quantize(ctx: Context):
  params, mixture = _prior_inputs(ctx)
  merged = ctx.gmp.merge_components(mixture)
  return (lambda: jax.block_until_ready(ctx.gmp.quantize(params, merged)),
          {'components_after_merge': int(merged.num_components)})


def _file_path(ctx: Context) -> pathlib.Path:
  return ctx.workdir / f'{ctx.spec.layout}_{ctx.spec.n}.gmpz'


def _saved_file(ctx: Context) -> pathlib.Path:
  """The layout's compressed file, written once and shared by the stages."""
  path = _file_path(ctx)
  if not path.exists():
    tree = quantized_tree(ctx.spec)
    tmp = path.with_suffix('.partial')
    ctx.gmp.save_compressed(str(tmp), tree)
    os.replace(tmp, path)
  return path


def _file_extras(path: pathlib.Path, spec: Spec) -> dict[str, Any]:
  size = path.stat().st_size
  return {'file_bytes': size, 'bits_per_weight': 8 * size / spec.n}


def _stage_save_compressed(ctx: Context):
  tree = quantized_tree(ctx.spec)
  nonzeros = sum(int(np.count_nonzero(x)) for x in jax.tree.leaves(tree))
  path = _file_path(ctx)
  tmp = path.with_suffix('.partial')
  extras = {'zero_fraction': 1 - nonzeros / ctx.spec.n}

  def call():
    ctx.gmp.save_compressed(str(tmp), tree)

  def finish():  # Leaves the file for the stages that read it.
    extras.update(_file_extras(tmp, ctx.spec))
    os.replace(tmp, path)

  extras['_finish'] = finish
  return call, extras


def _stage_load_compressed(ctx: Context):
  path = _saved_file(ctx)
  size = path.stat().st_size
  kwargs, unknown = limit_kwargs(ctx.gmp.load_compressed, elements=ctx.spec.n,
                                 nbytes=4 * ctx.spec.n + size)
  extras = {**_file_extras(path, ctx.spec), 'limits_passed': kwargs}
  if unknown:
    extras['limits_left_default'] = unknown

  def call():
    tree = ctx.gmp.load_compressed(str(path), **kwargs)
    extras['decoded_weights'] = int(sum(np.size(x)
                                        for x in jax.tree.leaves(tree)))
    return tree

  return call, extras


def _stage_compression_report(ctx: Context):
  path = _saved_file(ctx)
  return (lambda: ctx.gmp.compression_report(path=str(path)),
          _file_extras(path, ctx.spec))


def _child_env(gmp) -> dict[str, str]:
  root = str(pathlib.Path(gmp.__file__).resolve().parents[1])
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [root,
                                                    env.get('PYTHONPATH')]))
  return env


def _run_child(args: Sequence[str], env, cwd) -> tuple[float, int]:
  """Runs a Python child; returns (seconds, its ru_maxrss in bytes)."""
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, *args], env=env, cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  stderr = proc.stderr.read()
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  proc.stderr.close()
  seconds = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f'{" ".join(args)} exited with {proc.returncode}: '
                       f'{stderr.decode(errors="replace")[-1000:]}')
  scale = 1 if sys.platform == 'darwin' else 1024  # Bytes vs kB.
  return seconds, usage.ru_maxrss * scale


_STARTUP: dict[str, tuple[float, int]] = {}


def _stage_inspect(ctx: Context):
  path = _saved_file(ctx)
  env = _child_env(ctx.gmp)
  # The children run outside this tree, so PYTHONPATH picks the library.
  cwd = str(ctx.workdir)
  if 'inspect' not in _STARTUP:
    _STARTUP['inspect'] = _run_child(['-c', 'import gmp_jax.inspect'], env,
                                     cwd)
  startup_s, startup_rss = _STARTUP['inspect']
  extras = {**_file_extras(path, ctx.spec), 'startup_s': startup_s,
            'startup_peak_mb': startup_rss / 2**20, '_child_rss': []}

  def call():
    _, rss = _run_child(['-m', 'gmp_jax.inspect', str(path)], env, cwd)
    extras['_child_rss'].append(rss)

  return call, extras


STAGE_FNS = {
    'mixture_log_prob': _stage_mixture_log_prob,
    'value_and_grad': _stage_value_and_grad,
    'train_step': _stage_train_step,
    'merge_components': _stage_merge_components,
    'quantize': _stage_quantize,
    'save_compressed': _stage_save_compressed,
    'load_compressed': _stage_load_compressed,
    'compression_report': _stage_compression_report,
    'inspect': _stage_inspect,
}


# ---------------------------------------------------------------------------
# One measurement
# ---------------------------------------------------------------------------


def measure(gmp, stage: str, spec: Spec, *, runs: int, workdir: pathlib.Path,
            batch_size: int) -> dict[str, Any]:
  """Times one stage on one tree and measures the peak memory it adds.

  Returns:
    A JSON-ready row; `skipped` (the API lacks something) or `error` (the
    stage raised) instead of figures when it could not run.
  """
  row: dict[str, Any] = {'stage': stage, 'layout': spec.layout,
                         'n_requested': spec.requested, 'n': spec.n,
                         'leaves': len(spec.leaves),
                         'leaf_shapes': sorted({s for _, s in spec.leaves})}
  missing = missing_api(gmp, stage)
  if missing:
    row['skipped'] = f'gmp_jax lacks {", ".join(missing)}'
    return row
  meter = PeakMeter()
  row['memory_method'] = meter.method
  try:
    start = time.perf_counter()
    call, extras = STAGE_FNS[stage](
        Context(gmp, spec, workdir, batch_size))
    row['setup_s'] = time.perf_counter() - start
    calls = {'n': 0}
    peaks = {}

    def timed():
      if calls['n'] == 1:  # Warm from here on.
        peaks['warm_base'] = meter.base_now()
        meter.reset(collect=False)  # No gc pause inside a timed call.
      call()  # Its result is dropped here, before the next call.
      if calls['n'] == 0:
        peaks['first'] = meter.peak_added()
      calls['n'] += 1

    meter.reset()
    base = meter.base
    row['rss_before_mb'] = base / 2**20
    stats = timing.median_seconds(timed, runs)
    peaks['warm'] = meter.peak_added()
    # The high-water mark over all calls, from the RSS before the first.
    peaks['all'] = max(peaks['first'],
                       peaks['warm'] + peaks['warm_base'] - base)
    meter.stop()
  except TypeError as e:  # An older API without a keyword the stage passes.
    if 'unexpected keyword' not in str(e):
      raise
    row['skipped'] = f'gmp_jax API: {e}'
    return row
  finish = extras.pop('_finish', None)
  if finish:
    finish()
  child_rss = extras.pop('_child_rss', None)
  if child_rss:  # The CLI's process, against one that only imports it.
    first_child, *warm = child_rss
    startup = extras['startup_peak_mb'] * 2**20
    peaks['first'] = first_child - startup
    peaks['warm'] = max(warm or [first_child]) - startup
    peaks['all'] = max(child_rss) - startup
  seconds = stats['median_s']
  row.update({
      'seconds': seconds, 'first_s': stats['first_s'], 'runs': runs,
      'weights_per_s': spec.n / seconds if seconds > 0 else None,
      'ns_per_weight': 1e9 * seconds / spec.n,
      'peak_mb_added': peaks['all'] / 2**20,
      'first_call_peak_mb_added': peaks['first'] / 2**20,
      'warm_peak_mb_added': peaks['warm'] / 2**20,
      'device_peak_mb': _device_peak_mb(), **extras})
  return row


def _worker(args) -> None:
  gmp = import_library(args.library)
  spec = layout_spec(args.layout, args.n, _shape(args.leaf_shape))
  try:
    row = measure(gmp, args.stage, spec, runs=args.runs,
                  workdir=pathlib.Path(args.workdir),
                  batch_size=args.batch_size)
  except Exception as e:  # pylint: disable=broad-except
    row = {'stage': args.stage, 'layout': args.layout,
           'n_requested': args.n, 'n': spec.n,
           'error': f'{type(e).__name__}: {e}',
           'traceback': traceback.format_exc()[-3000:]}
  row['library_path'] = library_info(gmp)['path']
  _write_json(args.out, row)


def measure_in_subprocess(stage: str, spec: Spec, *, runs: int,
                          workdir: pathlib.Path, batch_size: int,
                          leaf_shape: tuple[int, int], library: str | None,
                          timeout: float) -> dict[str, Any]:
  """`measure` in a fresh Python process of this module."""
  out = workdir / f'row_{stage}_{spec.layout}_{spec.n}.json'
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO),
                                                    env.get('PYTHONPATH')]))
  cmd = [sys.executable, '-m', 'benchmarks.scale', '--worker',
         f'--stage={stage}', f'--layout={spec.layout}',
         f'--n={spec.requested}', f'--runs={runs}',
         f'--batch_size={batch_size}',
         f'--leaf_shape={leaf_shape[0]}x{leaf_shape[1]}',
         f'--workdir={workdir}', f'--out={out}']
  if library:
    cmd.append(f'--library={library}')
  base = {'stage': stage, 'layout': spec.layout,
          'n_requested': spec.requested, 'n': spec.n}
  try:
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {**base, 'error': f'timed out after {timeout:.0f} s'}
  if proc.returncode or not out.exists():
    return {**base, 'error': f'worker exited with {proc.returncode}: '
                             f'{proc.stderr[-2000:]}'}
  row = json.loads(out.read_text())
  out.unlink()
  return row


# ---------------------------------------------------------------------------
# Extrapolation, table, plot
# ---------------------------------------------------------------------------


def loglog_fit(n: Sequence[float], y: Sequence[float]
               ) -> tuple[float, float] | None:
  """Least-squares `log y = intercept + slope * log n`; None if < 2 points.

  Points with y <= 0 are dropped (no logarithm).
  """
  pts = [(math.log(a), math.log(b)) for a, b in zip(n, y) if b and b > 0]
  if len({x for x, _ in pts}) < 2:
    return None
  x, v = np.array(pts).T
  slope, intercept = np.polyfit(x, v, 1)
  return float(slope), float(intercept)


def affine_fit(n: Sequence[float], y: Sequence[float]
               ) -> tuple[float, float] | None:
  """Least-squares `y = intercept + per_weight * n`; None if < 2 sizes."""
  if len(set(n)) < 2:
    return None
  per_weight, intercept = np.polyfit(np.asarray(n, float),
                                     np.asarray(y, float), 1)
  return float(per_weight), float(intercept)


def extrapolate(rows: Sequence[dict[str, Any]], *, fit_points: int = 3,
                targets: Sequence[int] = EXTRAPOLATE_TO
                ) -> dict[str, dict[str, Any]]:
  """Log-log slopes of time and peak memory and the figures at `targets`.

  Per stage and layout, the fits use the `fit_points` largest N measured.
  The log-log line, log y = a + s log N, gives `time_slope`,
  `memory_slope`, `seconds` and `peak_mb`. A constant part (compilation,
  interpreter start) flattens it over small N, so the affine fit
  y = c + b N is given too (`seconds_affine`, `peak_mb_affine`, and
  `ns_per_weight_marginal`, `bytes_per_weight_marginal` from its b): at
  sizes where the constant no longer matters the two agree.

  Returns:
    `{f'{stage}/{layout}': {'sizes', 'time_slope', 'memory_slope',
    'seconds': {N: s}, 'peak_mb': {N: MB}, 'seconds_affine',
    'peak_mb_affine', 'ns_per_weight_marginal',
    'bytes_per_weight_marginal'}}`, N as strings; a fit's figures are None
    where fewer than two points were usable.
  """
  if fit_points < 2:
    raise ValueError(f'fit_points must be >= 2, got {fit_points!r}.')
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in rows:
    if 'seconds' in r:
      groups.setdefault((r['stage'], r['layout']), []).append(r)
  out = {}
  for (stage, layout), group in groups.items():
    group = sorted(group, key=lambda r: r['n'])[-fit_points:]
    n = [r['n'] for r in group]
    entry: dict[str, Any] = {'sizes': n}
    for key, field, label, unit, scale in (
        ('seconds', 'seconds', 'time_slope', 'ns_per_weight_marginal', 1e9),
        ('peak_mb', 'peak_mb_added', 'memory_slope',
         'bytes_per_weight_marginal', 2**20)):
      y = [r[field] for r in group]
      fit = loglog_fit(n, y)
      entry[label] = fit and fit[0]
      entry[key] = {str(t): (math.exp(fit[1] + fit[0] * math.log(t))
                             if fit else None) for t in targets}
      line = affine_fit(n, y)
      entry[unit] = line and line[0] * scale
      entry[key + '_affine'] = {str(t): (line[1] + line[0] * t if line
                                         else None) for t in targets}
    out[f'{stage}/{layout}'] = entry
  return out


def _human(n: float) -> str:
  for unit, size in (('B', 1e9), ('M', 1e6), ('k', 1e3)):
    if n >= size:
      return f'{n / size:g}{unit}'
  return f'{n:g}'


def format_table(report: dict[str, Any]) -> str:
  """The results and the extrapolation as Markdown tables."""
  lines = ['| stage | layout | N | leaves | seconds | ns/weight | '
           'peak MB added | first call s | first call MB |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in report['results']:
    head = (f"| {r['stage']} | {r['layout']} | {r['n']:,} | "
            f"{r.get('leaves', '')} |")
    if 'seconds' not in r:
      note = r.get('skipped') or r.get('error', '').splitlines()[0][:80]
      lines.append(f'{head} {note} | | | | |')
      continue
    lines.append(
        f"{head} {r['seconds']:.4g} | {r['ns_per_weight']:.3g} | "
        f"{r['peak_mb_added']:.1f} | {r['first_s']:.3g} | "
        f"{r['first_call_peak_mb_added']:.1f} |")
  ext = report.get('extrapolation') or {}
  if ext:
    t1, t7 = (str(t) for t in EXTRAPOLATE_TO)
    lines += ['', 'Extrapolation (log-log; in brackets the affine fit):', '',
              '| stage/layout | fit sizes | time slope | s at 1B | '
              's at 7B | memory slope | MB at 1B | MB at 7B |',
              '|---|---|---:|---:|---:|---:|---:|---:|']
    def both(e, key, t):
      a, b = e[key][t], e[key + '_affine'][t]
      if a is None:
        return ''
      return f'{a:.3g}' + ('' if b is None else f' [{b:.3g}]')

    for key, e in ext.items():
      slopes = [('' if e[k] is None else f'{e[k]:.2f}')
                for k in ('time_slope', 'memory_slope')]
      lines.append(
          f"| {key} | {'-'.join(_human(n) for n in e['sizes'])} | "
          f"{slopes[0]} | {both(e, 'seconds', t1)} | "
          f"{both(e, 'seconds', t7)} | {slopes[1]} | "
          f"{both(e, 'peak_mb', t1)} | {both(e, 'peak_mb', t7)} |")
  return '\n'.join(lines)


def plot(report: dict[str, Any], path: str) -> None:
  """Log-log time (top) and peak memory added (bottom) against N."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  layouts = [l for l in LAYOUTS if any(r['layout'] == l and 'seconds' in r
                                       for r in report['results'])]
  if not layouts:
    raise ValueError('No measurement to plot.')
  fig, axes = plt.subplots(2, len(layouts), figsize=(6.5 * len(layouts), 9),
                           squeeze=False, sharex=True)
  stages = [s for s in STAGES if any(r['stage'] == s for r in
                                     report['results'])]
  colors = plt.get_cmap('tab10')
  for col, layout in enumerate(layouts):
    for i, stage in enumerate(stages):
      rows = sorted((r for r in report['results'] if r['stage'] == stage
                     and r['layout'] == layout and 'seconds' in r),
                    key=lambda r: r['n'])
      if not rows:
        continue
      n = [r['n'] for r in rows]
      axes[0, col].plot(n, [r['seconds'] for r in rows], 'o-',
                        color=colors(i), label=stage)
      mem = [(a, r['peak_mb_added']) for a, r in zip(n, rows)
             if r['peak_mb_added'] > 0]
      if mem:
        axes[1, col].plot(*zip(*mem), 'o-', color=colors(i), label=stage)
    axes[0, col].set_title(f'{layout}: time per call')
    axes[0, col].set_ylabel('seconds (median)')
    axes[1, col].set_title(f'{layout}: peak RSS added')
    axes[1, col].set_ylabel('MB')
    axes[1, col].set_xlabel('weights N')
    for ax in axes[:, col]:
      ax.set_xscale('log')
      ax.set_yscale('log')
      ax.grid(True, which='both', alpha=0.3)
  axes[0, 0].legend(fontsize=8)
  lib = report.get('library', {})
  commit = (lib.get('git_commit') or '')[:12]
  if lib.get('gmp_jax_modified'):
    commit += ' + local changes'
  fig.suptitle(f"gmp_jax {commit} on "
               f"{report['machine']['cpu']} ({report['machine']['cores']} "
               'cores)', fontsize=10)
  fig.tight_layout()
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  _fileio().write_atomic(path,
                         lambda f: fig.savefig(f, format='png', dpi=110))
  plt.close(fig)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def run_benchmark(gmp, *, sizes: Sequence[int], stages: Sequence[str],
                  layouts: Sequence[str], runs: int, batch_size: int,
                  leaf_shape: tuple[int, int], in_process: bool,
                  fit_points: int, library: str | None = None,
                  timeout: float = 3600, command: str = '',
                  json_path: str | None = None) -> dict[str, Any]:
  """Measures every (layout, N, stage); returns the JSON-ready report.

  With `json_path` the report is rewritten after every N, so a long run
  that stops early keeps what it measured.
  """
  for s in stages:
    if s not in STAGES:
      raise ValueError(f'Unknown stage {s!r}; use some of {STAGES}.')
  for l in layouts:
    if l not in LAYOUTS:
      raise ValueError(f'Unknown layout {l!r}; use one of {LAYOUTS}.')
  if runs < 1:
    raise ValueError(f'runs must be >= 1, got {runs!r}.')
  report: dict[str, Any] = {
      'command': command,
      'machine': timing.machine(),
      'versions': {'python': platform.python_version(),
                   'jax': jax.__version__, 'numpy': np.__version__},
      'library': library_info(gmp),
      'settings': {
          'sizes': list(sizes), 'stages': list(stages),
          'layouts': list(layouts), 'runs': runs, 'batch_size': batch_size,
          'leaf_shape': list(leaf_shape), 'one_leaf_rows': ONE_LEAF_ROWS,
          'isolation': 'in_process' if in_process else 'subprocess',
          'num_components': NUM_COMPONENTS, 'weight_std': WEIGHT_STD,
          'mean_magnitudes': list(MEANS_RANGE),
          'zero_proportion': ZERO_PROPORTION, 'component_std': COMPONENT_STD,
          'codec_zero_fraction': SPARSITY,
          'codec_shared_values': SHARED_VALUES, 'tau': TAU,
          'temperature': TEMPERATURE, 'fit_points': fit_points},
      'memory_method': PeakMeter().method,
      'load_before': timing.load(),
      'results': [],
  }
  with tempfile.TemporaryDirectory(prefix='gmp_scale_') as tmp:
    workdir = pathlib.Path(tmp)
    for n in sizes:
      for layout in layouts:
        spec = layout_spec(layout, n, leaf_shape)
        for stage in stages:
          if in_process:
            try:
              row = measure(gmp, stage, spec, runs=runs, workdir=workdir,
                            batch_size=batch_size)
            except Exception as e:  # pylint: disable=broad-except
              row = {'stage': stage, 'layout': layout, 'n_requested': n,
                     'n': spec.n, 'error': f'{type(e).__name__}: {e}'}
          else:
            row = measure_in_subprocess(
                stage, spec, runs=runs, workdir=workdir,
                batch_size=batch_size, leaf_shape=leaf_shape,
                library=library, timeout=timeout)
          report['results'].append(row)
          _print_row(row)
        for f in workdir.glob(f'{layout}_*.gmpz'):
          f.unlink()  # Files of one size are not needed again.
      if json_path:
        report['extrapolation'] = extrapolate(report['results'],
                                              fit_points=fit_points)
        _write_json(json_path, report)
  report['extrapolation'] = extrapolate(report['results'],
                                        fit_points=fit_points)
  report['load_after'] = timing.load()
  return report


def _print_row(r: dict[str, Any]) -> None:
  what = f"{r['stage']:>18} {r['layout']:>11} N={r['n']:>11,}"
  if 'seconds' in r:
    print(f"{what}: {r['seconds']:.4g} s, {r['ns_per_weight']:.3g} ns/weight, "
          f"peak +{r['peak_mb_added']:.1f} MB (first call {r['first_s']:.3g} "
          f"s, +{r['first_call_peak_mb_added']:.1f} MB)", file=sys.stderr)
  else:
    note = r.get('skipped') or r.get('error', '')
    print(f'{what}: {note.splitlines()[0][:200] if note else ""}',
          file=sys.stderr)


def _size(text: str) -> int:
  text = text.strip().upper()
  for suffix, mult in (('K', 10**3), ('M', 10**6), ('B', 10**9),
                       ('G', 10**9)):
    if text.endswith(suffix):
      return int(float(text[:-1]) * mult)
  return int(float(text))


def _sizes(text: str) -> tuple[int, ...]:
  return tuple(_size(t) for t in text.split(',') if t.strip())


def _shape(text: str | Sequence[int]) -> tuple[int, int]:
  if not isinstance(text, str):
    return tuple(text)
  parts = text.lower().replace(',', 'x').split('x')
  if len(parts) != 2:
    raise ValueError(f'expected ROWSxCOLS, got {text!r}')
  return int(parts[0]), int(parts[1])


def _names(text: str) -> tuple[str, ...]:
  return tuple(t.strip() for t in text.split(',') if t.strip())


def compare_table(before: dict[str, Any], after: dict[str, Any]) -> str:
  """Markdown: each stage and layout at the largest N both reports measured.

  Seconds, weights/s and peak MB added, before and after, and the speed-up
  (before's seconds over after's).
  """
  def rows(report):
    return {(r['stage'], r['layout'], r['n']): r for r in report['results']
            if r.get('seconds') is not None}
  old, new = rows(before), rows(after)
  lines = ['| stage | layout | N | before s | after s | speed-up | before M weights/s '
           '| after M weights/s | before peak MB | after peak MB |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  keys = sorted({k[:2] for k in old} & {k[:2] for k in new},
                key=lambda k: (STAGES.index(k[0]) if k[0] in STAGES else 99, k[1]))
  for stage, layout in keys:
    common = [k[2] for k in old if k[:2] == (stage, layout)
              and (stage, layout, k[2]) in new]
    if not common:
      continue
    n = max(common)
    a, b = old[(stage, layout, n)], new[(stage, layout, n)]
    lines.append(
        f"| {stage} | {layout} | {n:,} | {a['seconds']:.3g} | {b['seconds']:.3g} "
        f"| {a['seconds'] / b['seconds']:.2f}x | {a['weights_per_s'] / 1e6:.1f} "
        f"| {b['weights_per_s'] / 1e6:.1f} | {a['peak_mb_added']:.0f} "
        f"| {b['peak_mb_added']:.0f} |")
  return '\n'.join(lines)


def _define_flags() -> None:
  flags.DEFINE_string('json', None, 'Write the report here.')
  flags.DEFINE_string('plot', None, 'Write the figure here.')
  flags.DEFINE_bool('smoke', False, 'N in {1e5, 2e5}, small leaves, one run, '
                    'in process: seconds, checks that it runs.')
  flags.DEFINE_string('sizes', None, 'Comma-separated N, e.g. 1e6,1e7 or '
                      '1M,100M.')
  flags.DEFINE_string('stages', None,
                      f'Comma-separated subset of {",".join(STAGES)}.')
  flags.DEFINE_string('layouts', None,
                      f'Comma-separated subset of {",".join(LAYOUTS)}.')
  flags.DEFINE_integer('runs', None,
                       'Timed calls after the first (default 3, smoke 1).')
  flags.DEFINE_integer('batch_size', 16, 'Batch of the train step.')
  flags.DEFINE_string('leaf_shape', None, 'Up projection of many_leaves, '
                      'ROWSxCOLS (default 512x1024, smoke 128x256).')
  flags.DEFINE_bool('in_process', None, 'Measure in this process (faster, '
                    'memory less isolated; the smoke default); '
                    '--noin_process: one fresh process per measurement (the '
                    'default otherwise).')
  flags.DEFINE_integer('fit_points', 3,
                       'Largest sizes the extrapolation fits.')
  flags.DEFINE_float('timeout', 3600, 'Seconds one measurement may take.')
  flags.DEFINE_string('library', None, 'Import gmp_jax from this checkout.')
  flags.DEFINE_list('compare', None, 'BEFORE.json,AFTER.json: print a '
                    'before/after table of two reports.')
  # Worker mode (started by measure_in_subprocess).
  flags.DEFINE_bool('worker', False, 'Internal: one measurement.')
  flags.DEFINE_string('stage', None, 'Internal: the worker\'s stage.')
  flags.DEFINE_string('layout', None, 'Internal: the worker\'s layout.')
  flags.DEFINE_integer('n', None, 'Internal: the worker\'s N.')
  flags.DEFINE_string('workdir', None, 'Internal: the worker\'s directory.')
  flags.DEFINE_string('out', None, 'Internal: the worker\'s row.')


def main(argv: list[str]) -> int:
  """Runs the benchmark (or a worker's measurement, or --compare)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  if args.compare:
    if len(args.compare) != 2:
      raise app.UsageError('--compare takes BEFORE.json,AFTER.json')
    with open(args.compare[0]) as f_before, open(args.compare[1]) as f_after:
      print(compare_table(json.load(f_before), json.load(f_after)))
    return 0
  try:
    sizes = _sizes(args.sizes) if args.sizes else None
    leaf_shape = _shape(args.leaf_shape) if args.leaf_shape else None
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  stages = _names(args.stages) if args.stages else None
  layouts = _names(args.layouts) if args.layouts else None
  if args.worker:
    _worker(types.SimpleNamespace(
        library=args.library, layout=args.layout, n=args.n, stage=args.stage,
        runs=args.runs, workdir=args.workdir, out=args.out,
        batch_size=args.batch_size, leaf_shape=leaf_shape or LEAF_SHAPE))
    return 0
  in_process = args.smoke if args.in_process is None else args.in_process
  gmp = import_library(args.library)
  command = cli.command('benchmarks.scale')
  report = run_benchmark(
      gmp, sizes=sizes or (SMOKE_SIZES if args.smoke else SIZES),
      stages=stages or STAGES, layouts=layouts or LAYOUTS,
      runs=args.runs or (1 if args.smoke else 3),
      batch_size=args.batch_size,
      leaf_shape=leaf_shape or (SMOKE_LEAF_SHAPE if args.smoke
                                else LEAF_SHAPE),
      in_process=in_process, fit_points=args.fit_points,
      library=args.library, timeout=args.timeout, command=command,
      json_path=args.json)
  load = report['load_before']['loadavg'][0]
  if load > 0.5 * (os.cpu_count() or 1):
    print(f'warning: load average {load:.2f} on {os.cpu_count()} cores; '
          'other jobs share the machine.', file=sys.stderr)
  print(format_table(report))
  if args.json:
    _write_json(args.json, report)
  if args.plot:
    plot(report, args.plot)
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
