"""Shared test setup.

* Two virtual CPU devices for the sharding tests.
* Strict dtype promotion and rank-promotion errors, as in equinox's tests:
  the library must never rely on an implicit dtype or rank promotion.
"""

import os

# Must run before jax initialises its backend.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_numpy_dtype_promotion', 'strict')
jax.config.update('jax_numpy_rank_promotion', 'raise')
