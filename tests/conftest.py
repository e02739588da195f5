"""Shared test setup.

* Four virtual CPU devices for the sharding tests. JAX reads the device
  count when its backend starts, so it is set here, before any test imports
  jax. Tests that do not ask for a mesh run on the first device as with
  one; `tests/sharding_test.py` uses all four. `JAX_NUM_CPU_DEVICES` takes
  precedence over XLA's `--xla_force_host_platform_device_count`.
* Strict dtype promotion and rank-promotion errors, as in equinox's tests:
  the library must never rely on an implicit dtype or rank promotion.
"""

import os

# Must run before jax initialises its backend.
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

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
