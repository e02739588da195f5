"""Shared test setup: two virtual CPU devices for the sharding tests."""

import os

# Must run before jax initialises its backend.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
