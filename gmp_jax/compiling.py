"""`compile_step`, the one place that jits, and its XLA:CPU options.

Every `make_*` constructor returns a pure function; `compile_step` jits it
with `default_compiler_options()` unless given `compiler_options` (`{}` for
XLA's own defaults).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import functools
from typing import Any

import jax
import jax.numpy as jnp

# XLA:CPU options `compile_step` uses by default (measured with
# jax 0.10.2, poster network, batch 128; BUILD_NOTES.md). YNNPACK fusions are
# switched off: they take the convolutions, whose weight gradients then run
# about half as fast as with XLA's own convolutions (data loss forward and
# backward 55-57 ms vs 29 ms; the whole plain step 64 vs 38 ms). 512-bit
# vectors speed up the prior's exponentials by about 30% on AVX-512 CPUs;
# LLVM never uses wider vectors than the CPU has.
CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': '',
    'xla_cpu_prefer_vector_width': 512,
}


@functools.cache
def _supported_cpu_options() -> tuple[tuple[str, Any], ...]:
  # Option names change between XLA versions; keep those this one accepts.
  supported = []
  for name, value in CPU_COMPILER_OPTIONS.items():
    try:
      jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(
          jnp.zeros((), jnp.float32)).compile()
    except Exception:  # pylint: disable=broad-except
      continue
    supported.append((name, value))
  return tuple(supported)


def default_compiler_options() -> dict[str, Any]:
  """Compiler options `compile_step` uses when given none.

  `CPU_COMPILER_OPTIONS` (those this XLA accepts) on the CPU backend, and
  none elsewhere.
  """
  if jax.default_backend() != 'cpu':
    return {}
  return dict(_supported_cpu_options())


def compile_step(fn: Callable[..., Any], *, donate_state: bool = False,
                 compiler_options: Mapping[str, Any] | None = None,
                 out_shardings: Any = None, **jit_kwargs):
  """`jax.jit` of a step from one of the `make_*` constructors.

  Args:
    fn: a pure step; its first argument is the state (or the params).
    donate_state: donate the first argument's buffers (saves memory; the
      old state must not be used afterwards).
    compiler_options: XLA options for `jax.jit`; None uses
      `default_compiler_options()`, `{}` none at all.
    out_shardings: passed to `jax.jit`; None lets XLA choose. On a mesh,
      `(state_shardings, None)` returns the state laid out as it came in,
      so a sharded state keeps its layout and the step compiles once.
    **jit_kwargs: further `jax.jit` arguments (e.g. `static_argnames`).

  Returns:
    The jitted function. It compiles once per distinct input shapes (and
    shardings).
  """
  options = (default_compiler_options() if compiler_options is None
             else dict(compiler_options))
  if out_shardings is not None:
    jit_kwargs['out_shardings'] = out_shardings
  return jax.jit(fn, donate_argnums=(0,) if donate_state else (),
                 compiler_options=options or None, **jit_kwargs)


def is_compiled(fn) -> bool:
  """Whether `fn` is what `jax.jit` returns."""
  return hasattr(fn, 'lower')
