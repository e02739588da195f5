"""The XLA compiler options of gmp_jax.compile_step."""

import jax
import jax.numpy as jnp
import numpy as np

import gmp_jax
from gmp_jax import compiling as compile_lib
import helpers


def _setup():
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(0, 0.1, (8, 4)), jnp.float32),
            'b': jnp.zeros((4,), jnp.float32)}
  apply_fn = lambda p, x: x @ p['w'] + p['b'][None]
  tx, state = helpers.train_state(params, 3)
  batch = {'x': jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 4, 16), jnp.int32)}
  return apply_fn, tx, state, batch


def test_cpu_defaults_are_accepted_options():
  options = compile_lib.default_compiler_options()
  assert jax.default_backend() == 'cpu'
  assert set(options) <= set(compile_lib.CPU_COMPILER_OPTIONS)
  # Each option compiles on this XLA.
  jax.jit(lambda x: x * 2, compiler_options=options or None).lower(
      jnp.ones(3)).compile()


def test_unknown_options_are_dropped(monkeypatch):
  monkeypatch.setitem(compile_lib.CPU_COMPILER_OPTIONS,
                      'xla_cpu_no_such_option_for_the_test', True)
  compile_lib._supported_cpu_options.cache_clear()  # pylint: disable=protected-access
  try:
    options = compile_lib.default_compiler_options()
  finally:
    monkeypatch.undo()
    compile_lib._supported_cpu_options.cache_clear()  # pylint: disable=protected-access
  assert 'xla_cpu_no_such_option_for_the_test' not in options


def test_steps_agree_with_and_without_options():
  apply_fn, tx, state, batch = _setup()
  kwargs = dict(tau=1.0, dataset_size=16)
  step = gmp_jax.make_train_step(apply_fn, tx, **kwargs)
  tuned = gmp_jax.compile_step(step)
  plain = gmp_jax.compile_step(step, compiler_options={})
  a, ma = tuned(state, batch)
  b, mb = plain(state, batch)
  np.testing.assert_allclose(ma['loss'], mb['loss'], rtol=1e-6)
  helpers.assert_trees_close(a, b, rtol=1e-5, atol=1e-7)
  ev = gmp_jax.compile_step(gmp_jax.make_eval_step(apply_fn),
                            compiler_options={})
  assert int(ev(a.params, batch)['count']) == 16
  scan = gmp_jax.compile_step(gmp_jax.make_multi_step(step),
                              compiler_options={})
  _, metrics = scan(state, batch, jnp.zeros((2, 4), jnp.int32))
  assert metrics['loss'].shape == (2,)
