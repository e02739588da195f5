"""A Pallas lookup-table matmul: x @ W for a 4-bit packed W (experimental).

With W = codebook[indices] of shape (k, n), packed two indices per byte
along n (`gmp_jax.packed`), the even and odd output columns are

  y[:, 2j]     = sum_i x[:, i] codebook[indices[i, j] & 15],
  y[:, 2j + 1] = sum_i x[:, i] codebook[indices[i, j] >> 4].

The kernel computes the two halves as separate outputs over a grid of
(batch, column, reduction) blocks, accumulating in float32; they are
interleaved outside the kernel. Each block of indices is turned into values
by a 16-way select against the codebook (no gather inside the kernel), so
only elementwise ops, a dot and scalar loads are lowered. The dense W
exists only a block at a time.

`interpret=None` runs the kernel in Pallas' interpreter on the CPU backend
(for tests) and compiles it elsewhere (Triton on GPU, Mosaic on TPU). The
block sizes must divide the shapes (batch is zero-padded to `block_b`).
Compiled lowering has not been exercised here (no accelerator at hand):
the CPU interpreter checks the arithmetic, not the lowering.
"""

from __future__ import annotations

import functools

import jax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from gmp_jax.packed import NIBBLE_K
from gmp_jax.packed import PackedArray


def _select16(i: jax.Array, cb_ref) -> jax.Array:
  """codebook[i] for 0 <= i < 16 as a chain of selects (entry 0 is 0)."""
  w = jnp.zeros(i.shape, jnp.float32)
  for k in range(1, NIBBLE_K):
    w = jnp.where(i == k, cb_ref[k].astype(jnp.float32), w)
  return w


def _kernel(x_ref, idx_ref, cb_ref, lo_ref, hi_ref):
  @pl.when(pl.program_id(2) == 0)
  def _():
    lo_ref[...] = jnp.zeros(lo_ref.shape, lo_ref.dtype)
    hi_ref[...] = jnp.zeros(hi_ref.shape, hi_ref.dtype)

  x = x_ref[...].astype(jnp.float32)
  b = idx_ref[...].astype(jnp.int32)
  lo_ref[...] += jnp.dot(x, _select16(b & 15, cb_ref),
                         preferred_element_type=jnp.float32)
  hi_ref[...] += jnp.dot(x, _select16(b >> 4, cb_ref),
                         preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=('interpret', 'block_b',
                                             'block_n', 'block_k'))
def _lut_matmul(x, indices, codebook, *, interpret, block_b, block_n,
                block_k):
  b, k = x.shape
  half = indices.shape[1]
  grid = (b // block_b, 2 * half // block_n, k // block_k)
  out = jax.ShapeDtypeStruct((b, half), jnp.float32)
  lo, hi = pl.pallas_call(
      _kernel,
      out_shape=(out, out),
      grid=grid,
      in_specs=[
          pl.BlockSpec((block_b, block_k), lambda i, j, r: (i, r)),
          pl.BlockSpec((block_k, block_n // 2), lambda i, j, r: (r, j)),
          pl.BlockSpec((NIBBLE_K,), lambda i, j, r: (0,)),
      ],
      out_specs=[
          pl.BlockSpec((block_b, block_n // 2), lambda i, j, r: (i, j)),
          pl.BlockSpec((block_b, block_n // 2), lambda i, j, r: (i, j)),
      ],
      interpret=interpret,
  )(x, indices, codebook)
  return jnp.stack([lo, hi], axis=-1).reshape(b, 2 * half)


def lut_matmul(x, w: PackedArray, *, interpret: bool | None = None,
               block_b: int = 16, block_n: int = 128,
               block_k: int = 128) -> jax.Array:
  """x @ W for a packed (k, n) W with 4-bit indices, by the Pallas kernel.

  Args:
    x: (b, k) array.
    w: a 2-D `PackedArray` with `bits == 4` and an even n.
    interpret: run in Pallas' interpreter; None: on the CPU backend only.
    block_b, block_n, block_k: block sizes (batch, output columns,
      reduction); n and k must be multiples of `block_n` and `block_k`
      (each capped at the dimension), `block_n` even.

  Returns:
    (b, n) array of x's and W's result dtype, accumulated in float32.

  Raises:
    ValueError: 8-bit indices, a non-2-D W, mismatched or indivisible
      shapes.
  """
  if not isinstance(w, PackedArray) or w.ndim != 2 or w.bits != 4:
    raise ValueError('lut_matmul needs a 2-D PackedArray with 4-bit '
                     f'indices, got {w!r}')
  k, n = w.shape
  if x.ndim != 2 or x.shape[1] != k:
    raise ValueError(f'x of shape {x.shape} does not contract with W of '
                     f'shape {w.shape}')
  block_n, block_k = min(block_n, n), min(block_k, k)
  if n % 2 or block_n % 2 or n % block_n or k % block_k:
    raise ValueError(f'W of shape {w.shape} is not a multiple of the blocks '
                     f'({block_k}, {block_n}) with an even block_n')
  if interpret is None:
    interpret = jax.default_backend() == 'cpu'
  out_dtype = jnp.result_type(x.dtype, w.dtype)
  b = x.shape[0]
  padded = -(-max(b, 1) // block_b) * block_b
  xp = jnp.pad(x, ((0, padded - b), (0, 0)))
  cb = jnp.pad(w.codebook, (0, NIBBLE_K - w.codebook.shape[0]))
  y = _lut_matmul(xp, w.indices, cb, interpret=interpret, block_b=block_b,
                  block_n=block_n, block_k=block_k)
  return y[:b].astype(out_dtype)
