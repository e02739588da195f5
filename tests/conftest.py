"""Shared test setup.

* Four virtual CPU devices for the sharding tests. JAX reads the device
  count when its backend starts, so it is set here, before any test imports
  jax. Tests that do not ask for a mesh run on the first device as with
  one; `tests/sharding_test.py` uses all four. `JAX_NUM_CPU_DEVICES` takes
  precedence over XLA's `--xla_force_host_platform_device_count`.
* Strict dtype promotion and rank-promotion errors, as in equinox's tests:
  the library must never rely on an implicit dtype or rank promotion.
* Compilation is most of a test's time here (small models, few steps), so:
  - one persistent compilation cache for the whole session, shared by both
    xdist workers and by every subprocess a test starts (they inherit the
    environment). It holds XLA's output for the same program, so every
    number is as without it; a torn read is a warning and a recompile.
  - `JAX_DISABLE_MOST_OPTIMIZATIONS`: XLA skips its expensive passes. The
    tests check values against NumPy with tolerances, not speed, and the
    benchmarks (which do measure speed) never run under it outside tests.
  - `--xla_cpu_use_fusion_emitters=false` in `XLA_FLAGS`: XLA:CPU emits
    its fusions with the older elemental emitter, which compiles the
    poster net's train step about 3x faster (`python -m
    benchmarks.emitters`). From jaxlib 0.8 on: under jaxlib 0.7.2 (the
    compatibility leg) a donated and an undonated step rounded 2 of 128
    weights 3e-6 apart with it, which test_compile_step_donates_state's
    rtol 1e-6 caught, so that leg keeps XLA's default emitters.
  Set any of these yourself to override it (e.g. `=0` for the second).
"""

import atexit
from importlib import metadata
import os
import shutil
import tempfile

# Must run before jax initialises its backend.
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


def _jaxlib_at_least(version: tuple[int, int]) -> bool:
  try:
    found = metadata.version('jaxlib')
  except metadata.PackageNotFoundError:
    return False
  return tuple(int(p) for p in found.split('.')[:2]) >= version


if ('xla_cpu_use_fusion_emitters' not in os.environ.get('XLA_FLAGS', '')
    and _jaxlib_at_least((0, 8))):
  os.environ['XLA_FLAGS'] = ' '.join(filter(None, (
      os.environ.get('XLA_FLAGS'), '--xla_cpu_use_fusion_emitters=false')))
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  # Made by the first process to load this file (pytest's controller under
  # xdist, whose workers inherit it) and removed when that process exits.
  _CACHE_DIR = tempfile.mkdtemp(prefix='gmp_jax_test_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_numpy_dtype_promotion', 'strict')
jax.config.update('jax_numpy_rank_promotion', 'raise')


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_DEVICES = 4


@pytest.fixture(scope='module')
def mesh():
  """A one-axis ('data') mesh over the four virtual CPU devices."""
  from experiments.infra import sharding  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  if len(devices) < NUM_DEVICES:
    pytest.skip(f'needs {NUM_DEVICES} devices; conftest.py sets '
                'JAX_NUM_CPU_DEVICES=4 before jax starts')
  return sharding.data_mesh(devices[:NUM_DEVICES])


@pytest.fixture(autouse=True)
def _xla_optimized(request):
  """Marked `xla_optimized`: XLA's full optimisations for this test.

  For the tests whose time is running programs (whole-split evaluations,
  kill-and-resume runs), not compiling them. Programs the process compiled
  earlier keep their level; subprocesses started in the test inherit it.
  """
  if request.node.get_closest_marker('xla_optimized') is None:
    yield
    return
  saved_env = os.environ.get('JAX_DISABLE_MOST_OPTIMIZATIONS')
  # The flag starts from this variable (set above unless overridden).
  saved = (saved_env or '0').lower() in ('1', 'true', 't', 'yes', 'y', 'on')
  os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '0'
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', saved)
    if saved_env is None:
      del os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS']
    else:
      os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = saved_env


# The longest modules by summed time (BUILD_NOTES' CI durations tables, both
# legs), scheduled first: `-n 2 --dist loadscope` hands out whole modules in
# this order, and a long one handed out last would leave the other worker
# idle at the end. A stale list costs time, never a result.
_LONGEST_FIRST = (
    'pipeline_test.py', 'committed_results_test.py',
    'multiprocess_pipeline_test.py', 'postprocess_stages_test.py',
    'scale_benchmark_test.py', 'language_model_test.py', 'notebook_test.py',
    'train_test.py', 'benchmark_smoke_test.py', 'scaling_smoke_test.py',
    'readme_lm_recipe_test.py', 'torch_equivalence_test.py',
    'sharding_test.py', 'prior_kernel_test.py', 'stateful_test.py',
    'sweep_test.py', 'recipe_zoo_test.py', 'entry_points_test.py',
    'prior_test.py', 'multiprocess_test.py', 'tpu_lowering_test.py',
    'equinox_test.py', 'transformer_test.py', 'readme_recipes_test.py')


def pytest_configure(config):
  # xdist (>= 3.6) otherwise re-sorts loadscope's modules by their number of
  # tests, which would undo the order below.
  if hasattr(config.option, 'loadscopereorder'):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
