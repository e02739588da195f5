"""Compile time under XLA:CPU's two fusion emitters (why the tests set one).

  python -m benchmarks.emitters                        # programs only, ~1 min
  python -m benchmarks.emitters --programs=data        # one program
  python -m benchmarks.emitters --pipelines=mnist,shakespeare   # + smoke runs

For each setting of `--xla_cpu_use_fusion_emitters` (XLA's default, true,
and false, the elemental emitter that tests/conftest.py sets) a fresh
interpreter compiles three programs of the poster net at batch 8, under the
tests' `JAX_DISABLE_MOST_OPTIMIZATIONS=1` (`--optimized` for XLA's default
optimisation), and prints the seconds of `.lower()` and `.compile()`:

* `data`: `jax.grad` of the distillation loss;
* `prior`: `jax.grad` of -log p(w) in the weights and the mixture;
* `both`: `jax.grad` of `gmp_objective` in the weights and the mixture.

`--pipelines` also runs each named `:smoke` pipeline
(`experiments/configs/<name>.py`) once per setting, in a fresh interpreter
with a fresh workdir and no compilation cache, and prints its wall and CPU
seconds (user + system of the child). The settings alternate within one
invocation, so they see the same machine.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

from experiments.infra import cli
from experiments.infra import jsonio

SETTINGS = ('default', 'false')
PROGRAMS = ('data', 'prior', 'both')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROGRAMS = r'''
import json, sys, time
import jax, jax.numpy as jnp
import gmp_jax
from experiments.image import models
model = models.get_model('poster')
params = models.init_params(model, jax.random.key(0))
mixture = gmp_jax.init_mixture(params, 17, leaf_scale=None, init_std=0.25,
                               zero_proportion=0.99)
x, t = jnp.zeros((8, 28, 28, 1)), jnp.zeros((8, 10))
data = lambda p: gmp_jax.distillation_loss(model.apply({'params': p}, x), t, 4.0)
prior = lambda p, m: -gmp_jax.mixture_log_prob(p, m)
both = lambda p, m: gmp_jax.gmp_objective(data(p), p, m, tau=5e-3,
                                          dataset_size=60_000)[0]
out = {}
for name, fn, args in (('data', jax.grad(data), (params,)),
                       ('prior', jax.grad(prior, argnums=(0, 1)), (params, mixture)),
                       ('both', jax.grad(both, argnums=(0, 1)), (params, mixture))):
  if name not in sys.argv[1:]:
    continue
  start = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  mid = time.perf_counter()
  lowered.compile()
  out[name] = {'lower_s': mid - start, 'compile_s': time.perf_counter() - mid}
print(json.dumps(out))
'''

_PIPELINE = r'''
import sys, tempfile
from experiments.stages import runner
import importlib
config = importlib.import_module('experiments.configs.' + sys.argv[1]).get_config('smoke')
runner.train_and_evaluate(config, tempfile.mkdtemp())
'''


def _env(setting: str, optimized: bool) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             JAX_DISABLE_MOST_OPTIMIZATIONS='0' if optimized else '1')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  xla = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                 if 'xla_cpu_use_fusion_emitters' not in f)
  if setting != 'default':
    xla = f'{xla} --xla_cpu_use_fusion_emitters={setting}'.strip()
  env['XLA_FLAGS'] = xla
  env['PYTHONPATH'] = os.pathsep.join(
      filter(None, (REPO, env.get('PYTHONPATH'))))
  return env


def _child(args: list[str], env: dict[str, str], timeout_s: int
           ) -> tuple[str, float, float]:
  """(stdout, wall s, CPU s) of a child interpreter."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=timeout_s,
                        check=False)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode:
    raise RuntimeError(f'{args[:2]} failed ({proc.returncode}):\n'
                       f'{proc.stderr[-3000:]}')
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return proc.stdout, wall, cpu


def run(*, programs: tuple[str, ...] = PROGRAMS,
        pipelines: tuple[str, ...] = (), optimized: bool = False,
        timeout_s: int = 1800) -> dict:
  """Every measurement, alternating the settings; see the module docstring."""
  unknown = sorted(set(programs) - set(PROGRAMS))
  if unknown or not programs:
    raise ValueError(f'--programs must name some of {PROGRAMS}, got '
                     f'{list(programs)}.')
  for name in pipelines:
    if not os.path.isfile(os.path.join(REPO, 'experiments', 'configs',
                                       f'{name}.py')):
      raise ValueError(f'No config experiments/configs/{name}.py for '
                       f'--pipelines={name}.')
  results = {'programs': {}, 'pipelines': {}, 'optimized': optimized,
             'settings': list(SETTINGS), 'program_names': list(programs)}
  for setting in SETTINGS:
    out, _, _ = _child(['-c', _PROGRAMS, *programs],
                       _env(setting, optimized), timeout_s)
    results['programs'][setting] = json.loads(out.strip().splitlines()[-1])
  for name in pipelines:
    results['pipelines'][name] = {}
    for setting in SETTINGS:
      _, wall, cpu = _child(['-c', _PIPELINE, name],
                            _env(setting, optimized), timeout_s)
      results['pipelines'][name][setting] = {'wall_s': wall, 'cpu_s': cpu}
  return results


def table(results: dict) -> str:
  lines = ['| program | ' + ' | '.join(
      f'compile s ({s})' for s in results['settings']) + ' |',
           '|---|' + '---:|' * len(results['settings'])]
  for name in results['program_names']:
    lines.append(f'| {name} | ' + ' | '.join(
        f"{results['programs'][s][name]['compile_s']:.2f}"
        for s in results['settings']) + ' |')
  for name, rows in results['pipelines'].items():
    lines.append(f'| {name} :smoke pipeline, CPU s | ' + ' | '.join(
        f"{rows[s]['cpu_s']:.1f}" for s in results['settings']) + ' |')
  return '\n'.join(lines)


def _define_flags() -> None:
  flags.DEFINE_list('programs', list(PROGRAMS), 'Which of the three programs '
                    'to compile.')
  flags.DEFINE_list('pipelines', [], 'Smoke pipelines to time as well, by '
                    'config name (e.g. mnist,shakespeare).')
  flags.DEFINE_bool('optimized', False, "XLA's default optimisation instead "
                    'of the tests\' JAX_DISABLE_MOST_OPTIMIZATIONS=1.')
  flags.DEFINE_string('json', None, 'Also write the figures here.')


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  results = run(programs=tuple(f.programs), pipelines=tuple(f.pipelines),
                optimized=f.optimized)
  results['command'] = cli.command('benchmarks.emitters')
  print(table(results))
  if f.json:
    jsonio.write_json_atomic(f.json, results)
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
