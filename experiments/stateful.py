"""The Flax adapters, now `gmp_jax.flax`; kept so old imports still work.

  from experiments.stateful import nnx_apply   # same as gmp_jax.flax's
"""

from gmp_jax.flax import linen_apply
from gmp_jax.flax import nnx_apply

__all__ = ('linen_apply', 'nnx_apply')
