"""Training-time data augmentation: random translations, inside the step.

`config.data.augment_shift = s` moves every training image by an integer
offset (dy, dx), each drawn uniformly from {-s, ..., s}, filling with zeros:

  x'[i, j] = x[i - dy, j - dx]   (0 outside the image).

The shift happens inside the jitted step (`with_augmentation`), drawn from a
key folded with the state's step count, so a resumed run draws the same
offsets and the data stays on the device. Distillation targets must follow
the shifted images: the wrapped step recomputes `teacher_logits` from the
shifted batch with `teacher_fn`. Evaluation never shifts.

None or 0 turns it off (the default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections


def max_shift(config: ml_collections.ConfigDict) -> int:
  """`data.augment_shift`, 0 when unset."""
  value = config.data.get('augment_shift') or 0
  if not isinstance(value, int) or value < 0:
    raise ValueError(f'data.augment_shift must be an int >= 0, got '
                     f'{value!r}.')
  return value


def random_shift(x: jax.Array, key: jax.Array, shift: int) -> jax.Array:
  """Each NHWC image translated by its own offset in [-shift, shift]^2.

  Args:
    x: (N, H, W, C) images.
    key: a PRNG key; one (dy, dx) per image is drawn from it.
    shift: the largest offset, >= 0, smaller than H and W.

  Returns:
    The shifted images, zero-filled, same shape and dtype.
  """
  if jnp.ndim(x) != 4:
    raise ValueError(f'random_shift needs NHWC images, got shape '
                     f'{jnp.shape(x)}.')
  n, h, w, c = jnp.shape(x)
  if not 0 <= shift < min(h, w):
    raise ValueError(f'shift must lie in [0, {min(h, w)}), got {shift}.')
  if shift == 0:
    return x
  offsets = jax.random.randint(key, (n, 2), -shift, shift + 1)
  padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))

  def crop(image, offset):
    # Output pixel (i, j) reads input (i - dy, j - dx): padded index
    # (i - dy + shift, j - dx + shift).
    return jax.lax.dynamic_slice(
        image, (shift - offset[0], shift - offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def with_augmentation(train_step: Callable[..., Any], shift: int, *,
                      seed: int,
                      teacher_fn: Callable[[jax.Array], jax.Array] | None = None):
  """`train_step` on randomly shifted batches; the identity for shift 0.

  Args:
    train_step: pure `(state, batch) -> (state, metrics)`; the state has a
      `step` count (`TrainState`, `CodebookState`, `StraightThroughState`).
    shift: the largest offset (`random_shift`).
    seed: seed of the offsets; step t uses `fold_in(key(seed), t)`.
    teacher_fn: `x -> logits`; required when batches carry
      `'teacher_logits'`, which are recomputed on the shifted images.

  Returns:
    The wrapped pure step.
  """
  if shift == 0:
    return train_step

  def augmented_step(state, batch):
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    batch = dict(batch, x=random_shift(batch['x'], key, shift))
    if 'teacher_logits' in batch:
      if teacher_fn is None:
        raise ValueError('Batches with teacher_logits need teacher_fn to '
                         'recompute them on the shifted images.')
      batch['teacher_logits'] = jax.lax.stop_gradient(teacher_fn(batch['x']))
    return train_step(state, batch)

  return augmented_step
