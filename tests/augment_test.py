"""Tests for experiments.image.augment against a NumPy translation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.image import augment


def _np_shift(image, dy, dx):
  """Output (i, j) = input (i - dy, j - dx), zero outside."""
  h, w = image.shape[:2]
  out = np.zeros_like(image)
  for i in range(h):
    for j in range(w):
      if 0 <= i - dy < h and 0 <= j - dx < w:
        out[i, j] = image[i - dy, j - dx]
  return out


def _images(n=6, h=7, w=5, c=2, seed=0):
  return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(
      np.float32)


def test_random_shift_matches_numpy_translation():
  x = _images()
  key = jax.random.key(3)
  got = np.asarray(augment.random_shift(jnp.asarray(x), key, 2))
  # The offsets are the only random draw: recover each from the output by
  # trying all 25 and requiring exactly one NumPy translation to match.
  for image, out in zip(x, got):
    matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
               if np.array_equal(_np_shift(image, dy, dx), out)]
    assert len(matches) == 1


def test_offsets_cover_the_square_uniformly():
  # One-pixel images of ones on a 5 x 5 canvas: where the pixel lands is
  # the offset.
  n, s = 5000, 2
  x = np.zeros((n, 5, 5, 1), np.float32)
  x[:, 2, 2, 0] = 1
  out = np.asarray(augment.random_shift(jnp.asarray(x), jax.random.key(0), s))
  where = np.argwhere(out[..., 0] == 1)
  assert len(where) == n  # Shifts of at most 2 keep the centre pixel.
  counts = np.zeros((5, 5))
  np.add.at(counts, (where[:, 1], where[:, 2]), 1)
  # Each of the 25 offsets: expected 200; a 5-sigma band.
  assert counts.min() > 200 - 5 * np.sqrt(200)
  assert counts.max() < 200 + 5 * np.sqrt(200)


def test_shift_zero_is_the_identity():
  x = jnp.asarray(_images())
  assert augment.random_shift(x, jax.random.key(0), 0) is x
  step = lambda state, batch: (state, batch)
  assert augment.with_augmentation(step, 0, seed=0) is step


@pytest.mark.parametrize('shape, shift, match', [
    ((7, 5, 2), 1, 'NHWC'),
    ((1, 7, 5, 2), 5, r'\[0, 5\)'),
    ((1, 7, 5, 2), -1, r'\[0, 5\)'),
])
def test_bad_shift_input(shape, shift, match):
  with pytest.raises(ValueError, match=match):
    augment.random_shift(jnp.zeros(shape), jax.random.key(0), shift)


@pytest.mark.parametrize('value', [-1, 1.5, '2'])
def test_bad_config_value(value):
  config = ml_collections.ConfigDict({'data': {'augment_shift': value}})
  with pytest.raises(ValueError, match='augment_shift'):
    augment.max_shift(config)


def test_unset_config_is_off():
  assert augment.max_shift(ml_collections.ConfigDict({'data': {}})) == 0
  config = ml_collections.ConfigDict({'data': {'augment_shift': None}})
  assert augment.max_shift(config) == 0


class _State:

  def __init__(self, step):
    self.step = jnp.asarray(step)


def test_wrapped_step_shifts_and_recomputes_teacher_logits():
  x = _images(n=4, h=6, w=6, c=1)
  weights = np.random.default_rng(1).normal(size=(36, 3)).astype(np.float32)
  teacher_fn = lambda images: images.reshape(len(images), -1) @ weights
  seen = []

  def step(state, batch):
    seen.append(jax.device_get(batch))
    return state, {}

  wrapped = augment.with_augmentation(step, 1, seed=7, teacher_fn=teacher_fn)
  batch = {'x': jnp.asarray(x), 'teacher_logits': jnp.zeros((4, 3)),
           'label': jnp.arange(4)}
  wrapped(_State(5), batch)
  wrapped(_State(5), batch)
  wrapped(_State(6), batch)
  first, again, other = seen
  np.testing.assert_array_equal(first['x'], again['x'])  # Same step, same draw.
  assert not np.array_equal(first['x'], other['x'])
  assert not np.array_equal(first['x'], x)
  np.testing.assert_allclose(first['teacher_logits'],
                             first['x'].reshape(4, -1) @ weights, rtol=1e-5)
  np.testing.assert_array_equal(first['label'], np.arange(4))
  for image, out in zip(x, first['x']):
    assert any(np.array_equal(_np_shift(image, dy, dx), out)
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_teacher_logits_without_teacher_fn_are_rejected():
  wrapped = augment.with_augmentation(lambda s, b: (s, {}), 1, seed=0)
  with pytest.raises(ValueError, match='teacher_fn'):
    wrapped(_State(0), {'x': jnp.zeros((2, 4, 4, 1)),
                        'teacher_logits': jnp.zeros((2, 3))})
