"""Shared test setup: four virtual CPU devices for the sharding tests.

JAX reads the device count when its backend starts, so it is set here,
before any test imports jax. Tests that do not ask for a mesh run on the
first device as with one; `tests/sharding_test.py` uses all four.
`JAX_NUM_CPU_DEVICES` takes precedence over XLA's
`--xla_force_host_platform_device_count`.
"""

import os

# Must run before jax initialises its backend.
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
