"""The steps lower for TPU and CUDA on a machine that has neither.

`jax.export.export(jax.jit(fn), platforms=(p,))` runs JAX's lowering rules
for platform `p` and returns the StableHLO module that XLA on that platform
would compile; it compiles and runs nothing, so it works on this CPU. A
primitive without a lowering rule for `p` raises here. The module text then
shows every `stablehlo.custom_call`: a host callback (`jax.debug.print`,
`pure_callback`, `io_callback`) is one, and so is any kernel that only one
backend provides. Only the targets in `ALLOWED_CUSTOM_CALLS` may appear, and
the module may have no side effects. (A callback usually fails the export
already: its custom call has no compatibility guarantee.)

Covered: the end-to-end train step (labels, teacher logits and the prior),
several steps per call (unrolled by `make_multi_step`, and in a `lax.scan`),
a layer-wise step built like `experiments.stages.runner`'s (`make_train_step`
with a `data_loss_fn`), `quantize`, `assign` and the eval step, each from
`jax.jit` of the pure function; and the `compile_step` object, which carries
this host's CPU compiler options.

What this cannot show: that XLA:TPU compiles the module (memory, layouts,
compile time), or that it runs and gives the right numbers there.
BUILD_NOTES.md ("TPU readiness without a TPU") says more.
"""

import re

import jax
from jax import export
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gmp_jax
from gmp_jax import compiling as compile_lib
from experiments.image import augment
from experiments.image import models
from experiments.stages import retrain as retraining
from experiments.configs import mnist as mnist_config

PLATFORMS = ('tpu', 'cuda')

# Custom-call targets that may appear, and why. Sharding annotations are
# markers for the SPMD partitioner with no kernel behind them, and every
# backend knows them (jax.export lists them as stable). Nothing else: no
# host callbacks, no CPU LAPACK or GPU-only kernels, no Pallas kernels. A
# change that adds one must add it here on purpose.
ALLOWED_CUSTOM_CALLS = frozenset({
    'Sharding',
    'SPMDFullToShardShape',
    'SPMDShardToFullShape',
})

BATCH = 8
_TARGET = re.compile(r'call_target_name\s*=\s*"([^"]+)"')


def _custom_call_targets(mlir_text: str) -> set[str]:
  targets = set(_TARGET.findall(mlir_text))
  if mlir_text.count('stablehlo.custom_call') and not targets:
    raise AssertionError('custom_call without a readable target name.')
  return targets


def _export(fn, platform, *args):
  """Exports `fn` (jitted here unless it is already) for one platform."""
  jitted = fn if hasattr(fn, 'lower') else jax.jit(fn)
  return export.export(jitted, platforms=(platform,))(*args)


def _lowering_problems(fn, platform, *args) -> list[str]:
  """Why `fn` would not run as is on `platform`; empty when it would."""
  try:
    exported = _export(fn, platform, *args)
  except Exception as e:  # pylint: disable=broad-except
    return [f'lowering failed: {type(e).__name__}: {e}']
  problems = []
  if tuple(exported.platforms) != (platform,):
    problems.append(f'exported for {exported.platforms}')
  text = exported.mlir_module()
  bad = _custom_call_targets(text) - ALLOWED_CUSTOM_CALLS
  if bad:
    problems.append(f'custom calls {sorted(bad)}')
  effects = (tuple(exported.ordered_effects)
             + tuple(exported.unordered_effects))
  if effects:
    problems.append(f'side effects {effects}')
  return problems


# ----------------------------------------------------------------------------
# The poster network, its state and abstract batches.


@pytest.fixture(scope='module')
def poster():
  model = models.get_model('poster')
  params = models.init_params('poster', jax.random.key(0))
  apply_fn = lambda p, x: model.apply({'params': p}, x)
  return apply_fn, params


def _state(params, num_components=17):
  mixture = gmp_jax.init_mixture(params, num_components)
  tx = gmp_jax.gmp_optimizer()
  return tx, gmp_jax.create_train_state(params, mixture, tx)


def _images(n=BATCH):
  return jax.ShapeDtypeStruct((n, 28, 28, 1), jnp.float32)


def _batch(*keys):
  specs = {'x': _images(),
           'label': jax.ShapeDtypeStruct((BATCH,), jnp.int32),
           'teacher_logits': jax.ShapeDtypeStruct((BATCH, 10), jnp.float32)}
  return {k: specs[k] for k in keys}


def _layerwise_step(teacher_params):
  """The pipeline's own layer-wise step (`experiments.stages.retrain.layerwise`)."""
  config = mnist_config.get_config()
  train = (np.zeros((8, 28, 28, 1), np.float32), np.zeros((8,), np.int32))
  return retraining.layerwise(config, teacher_params, {'train': train}).train_step


def _cases(apply_fn, params):
  """(name, pure function, example arguments) for every exported function."""
  tx, state = _state(params)
  end_to_end = gmp_jax.make_train_step(
      apply_fn, tx, tau=5e-3, dataset_size=60_000,
      loss=gmp_jax.LossOptions(temperature=4.0, distillation='kl',
                               label_weight=0.5))
  labels_only = gmp_jax.make_train_step(apply_fn, tx, tau=5e-3,
                                        dataset_size=60_000)
  data = {'x': _images(64),
          'teacher_logits': jax.ShapeDtypeStruct((64, 10), jnp.float32),
          'label': jax.ShapeDtypeStruct((64,), jnp.int32)}
  indices = jax.ShapeDtypeStruct((2, BATCH), jnp.int32)
  mixture = gmp_jax.merge_components(state.mixture)

  # The train steps in a `lax.scan` over index rows, as the train loop runs
  # them on accelerators (a while loop in the module).
  scan_steps = gmp_jax.make_multi_step(end_to_end, kind='scan')

  # The default finetune stage: straight-through steps on shifted images,
  # the teacher's logits recomputed in the step.
  mask = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
  st_tx = optax.adam(1e-4)
  st_state = gmp_jax.create_straight_through_state(
      params, jnp.linspace(-0.2, 0.2, 16), mask, st_tx)
  st_step = augment.with_augmentation(
      gmp_jax.make_straight_through_step(
          apply_fn, st_tx, loss=gmp_jax.LossOptions(temperature=4.0)),
      2, seed=0, teacher_fn=lambda x: apply_fn(params, x))

  return [
      ('finetune_straight_through_shifted', st_step,
       (st_state, _batch('x', 'label', 'teacher_logits'))),
      ('train_end_to_end', end_to_end,
       (state, _batch('x', 'label', 'teacher_logits'))),
      ('train_labels', labels_only, (state, _batch('x', 'label'))),
      ('multi_step', gmp_jax.make_multi_step(end_to_end),
       (state, data, indices)),
      ('scan_steps', scan_steps, (state, data, indices)),
      ('train_layerwise', _layerwise_step(params),
       (state, _batch('x'))),
      ('quantize', gmp_jax.quantize, (params, mixture)),
      ('assign', gmp_jax.assign, (params, mixture)),
      ('eval', gmp_jax.make_eval_step(apply_fn),
       (params, _batch('x', 'label'))),
  ]


@pytest.fixture(scope='module')
def cases(poster):
  return {name: (fn, args) for name, fn, args in _cases(*poster)}


CASE_NAMES = ('finetune_straight_through_shifted', 'train_end_to_end', 'train_labels', 'multi_step', 'scan_steps',
              'train_layerwise', 'quantize', 'assign', 'eval')


@pytest.mark.parametrize('platform', PLATFORMS)
@pytest.mark.parametrize('name', CASE_NAMES)
def test_lowers_without_callbacks_or_foreign_kernels(cases, name, platform):
  fn, args = cases[name]
  assert _lowering_problems(fn, platform, *args) == []


@pytest.mark.parametrize('platform', PLATFORMS)
def test_compiled_step_exports_with_cpu_options(cases, platform):
  # On this CPU host `compile_step` jits with the CPU compiler options; they
  # are not part of the exported module, so the same object exports for an
  # accelerator.
  fn, args = cases['train_end_to_end']
  compiled = gmp_jax.compile_step(fn)
  assert _lowering_problems(compiled, platform, *args) == []


def test_prior_dots_run_at_highest_precision_on_tpu(poster):
  # On TPU a float32 dot at the default precision runs as one bfloat16
  # pass. The prior's value and gradient use dots for sums, which must keep
  # float32 accuracy: every dot_general in its lowering says HIGHEST.
  _, params = poster
  mixture = gmp_jax.init_mixture(params, 17)
  fn = jax.value_and_grad(gmp_jax.mixture_log_prob, argnums=(0, 1))
  text = _export(fn, 'tpu', params, mixture).mlir_module()
  dots = [line for line in text.splitlines() if 'stablehlo.dot_general' in line]
  assert dots, 'expected the prior to sum with dot_general'
  for line in dots:
    assert 'HIGHEST' in line, line
  assert _custom_call_targets(text) <= ALLOWED_CUSTOM_CALLS


def test_exported_step_runs_here_like_the_step():
  # A module exported the same way for ('cpu', 'tpu') runs on this CPU and
  # matches the jitted step: the modules checked above are the steps.
  params = {'w': jnp.asarray(np.random.default_rng(0).normal(0, .1, (6, 3)),
                             jnp.float32)}
  apply_fn = lambda p, x: x @ p['w']
  tx, state = _state(params, num_components=3)
  step = gmp_jax.make_train_step(apply_fn, tx, tau=1e-2, dataset_size=100)
  rng = np.random.default_rng(1)
  batch = {'x': jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
           'label': jnp.asarray([0, 1, 2, 1], jnp.int32)}
  exported = export.export(jax.jit(step), platforms=('cpu', 'tpu'))(
      state, batch)
  got_state, got_metrics = exported.call(state, batch)
  want_state, want_metrics = jax.jit(step)(state, batch)
  np.testing.assert_allclose(got_metrics['loss'], want_metrics['loss'],
                             rtol=1e-6)
  for g, w in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# The checker itself catches what it is meant to catch.


@pytest.mark.parametrize('platform', PLATFORMS)
def test_checker_flags_a_host_callback(platform):
  def with_print(x):
    jax.debug.print('x = {}', x)
    return x + 1

  def with_pure_callback(x):
    return jax.pure_callback(lambda a: np.asarray(a) + 1,
                             jax.ShapeDtypeStruct((3,), jnp.float32), x)

  x = jnp.zeros(3, jnp.float32)
  assert _lowering_problems(with_print, platform, x)
  assert _lowering_problems(with_pure_callback, platform, x)
  assert _lowering_problems(lambda a: jnp.sin(a) + 1, platform, x) == []


def test_checker_flags_a_custom_call_target():
  text = ('%0 = stablehlo.custom_call @lapack_sgetrf(%arg0) '
          '{call_target_name = "lapack_sgetrf"} : (tensor<2x2xf32>) -> '
          'tensor<2x2xf32>')
  assert _custom_call_targets(text) - ALLOWED_CUSTOM_CALLS == {
      'lapack_sgetrf'}
  with pytest.raises(AssertionError, match='target'):
    _custom_call_targets('stablehlo.custom_call @x(%a)')


@pytest.mark.parametrize('platform', PLATFORMS)
def test_checker_flags_a_primitive_the_platform_lacks(platform):
  # Non-symmetric eig has no TPU lowering, and on CUDA only a cuSOLVER
  # kernel that jax.export does not accept.
  problems = _lowering_problems(jnp.linalg.eig, platform, jnp.eye(3))
  assert problems and problems[0].startswith('lowering failed')


# ----------------------------------------------------------------------------
# Compiler options follow the backend.


@pytest.mark.parametrize('backend', ['tpu', 'gpu'])
def test_no_cpu_compiler_options_off_cpu(monkeypatch, backend):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert compile_lib.default_compiler_options() == {}


def test_cpu_options_are_a_subset_of_the_known_ones():
  options = compile_lib.default_compiler_options()
  assert jax.default_backend() == 'cpu'
  for name, value in options.items():
    assert compile_lib.CPU_COMPILER_OPTIONS[name] == value
    assert name.startswith('xla_cpu_')
