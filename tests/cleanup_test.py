"""Tests of the lossless structural cleanup (experiments/stages/cleanup.py)."""

import copy
import functools
import glob
import os

import jax
import numpy as np
import pytest

from experiments.stages import cleanup
from experiments.image import data as data_lib
from experiments.image import models
from gmp_jax import codec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Spatial shape (H, W) of each model's last conv output after pooling, i.e.
# the NHWC layout the first dense layer flattens.
FLAT_HW = {'poster': (5, 5), 'lenet5caffe': (4, 4), 'lenet300100': None}
CODEBOOK = np.array([-0.3, -0.12, -0.05, 0.07, 0.16, 0.4], np.float32)


def _quantized_like(model, seed, density):
  """Params shaped like Flax's, pruned at random and snapped to a codebook."""
  rng = np.random.default_rng(seed)
  # Only the shapes are used: traced, not compiled (seconds per model).
  params = jax.eval_shape(lambda k: models.init_params(model, k),
                          jax.random.key(seed))
  out = {}
  for name, layer in params.items():
    out[name] = {}
    for k, v in layer.items():
      keep = rng.random(v.shape) < (density[name] if k == 'kernel' else 0.5)
      values = CODEBOOK[rng.integers(0, CODEBOOK.size, v.shape)]
      out[name][k] = np.where(keep, values, 0).astype(np.float32)
  return out


def _inject(params, model, seed):
  """Empties some units' inputs (bias < 0, 0, > 0) and others' readers."""
  rng = np.random.default_rng(seed)
  specs = models._specs(model)  # pylint: disable=protected-access
  for j, spec in enumerate(specs[:-1]):
    kernel, bias = params[spec.name]['kernel'], params[spec.name]['bias']
    units = spec.features
    emptied = rng.choice(units, max(3, units // 5), replace=False)
    kernel[..., emptied] = 0
    bias[emptied] = rng.choice([-0.12, 0.0, 0.07], emptied.size)
    nxt = params[specs[j + 1].name]['kernel']
    unread = rng.choice(units, max(2, units // 10), replace=False)
    if specs[j + 1].kind == 'conv':
      nxt[:, :, unread, :] = 0
    else:
      for r in range(nxt.shape[0]):
        if r % units in unread:
          nxt[r] = 0
  return params


def _reference(params, model):
  """Loop-per-unit fixed point, written independently of the module."""
  p = copy.deepcopy(params)
  specs = models._specs(model)  # pylint: disable=protected-access
  name = models._canonical_name(model)  # pylint: disable=protected-access

  def reader_rows(j, c):
    # Indices into the next layer's kernel that read unit c of layer j.
    nxt = specs[j + 1]
    k = p[nxt.name]['kernel']
    if nxt.kind == 'conv':
      return (slice(None), slice(None), c, slice(None))
    if specs[j].kind == 'conv':
      h, w = FLAT_HW[name]
      rows = [r for r in range(k.shape[0])
              if np.unravel_index(r, (h, w, specs[j].features))[2] == c]
    else:
      rows = [c]
    return (np.array(rows, int), slice(None))

  changed = True
  while changed:
    changed = False
    for j, spec in enumerate(specs[:-1]):
      kernel, bias = p[spec.name]['kernel'], p[spec.name]['bias']
      nk = p[specs[j + 1].name]['kernel']
      for c in range(spec.features):
        sel = reader_rows(j, c)
        no_input = not np.any(kernel[..., c])
        zero_output = bias[c] <= 0 if spec.relu else bias[c] == 0
        if no_input and zero_output and np.any(nk[sel]):
          nk[sel] = 0
          changed = True
        if not np.any(nk[sel]) and (np.any(kernel[..., c]) or bias[c] != 0):
          kernel[..., c] = 0
          bias[c] = 0
          changed = True
  return p


@functools.cache
def _apply(model):
  """The model's jitted apply, one per model: compiled once per shape."""
  net = models.get_model(model)
  return jax.jit(lambda p, x: net.apply({'params': p}, x))


def _logits(model, params, x):
  return np.asarray(_apply(model)(params, x))


def _nonzero(tree):
  return sum(int(np.count_nonzero(v)) for v in jax.tree.leaves(tree))


DENSITY = {
    'poster': {'conv1': 0.9, 'conv2': 0.4, 'dense1': 0.01, 'dense2': 0.4},
    'lenet300100': {'dense1': 0.01, 'dense2': 0.05, 'dense3': 0.3},
    'lenet5caffe': {'conv1': 0.9, 'conv2': 0.1, 'dense1': 0.01,
                    'dense2': 0.4},
}


@pytest.mark.parametrize('model', sorted(DENSITY))
@pytest.mark.parametrize('seed', [0, 1])
def test_random_params_keep_bit_identical_logits(model, seed):
  params = _inject(_quantized_like(model, seed, DENSITY[model]), model, seed)
  original = copy.deepcopy(params)
  cleaned, report = cleanup.cleanup(params, model)
  # The input is not modified.
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(original)):
    np.testing.assert_array_equal(a, b)
  want = _reference(params, model)
  for a, b in zip(jax.tree.leaves(cleaned), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert report.nonzero_before == _nonzero(params)
  assert report.nonzero_after == _nonzero(want) < _nonzero(params)
  assert report.removed == sum(
      r.dead_outgoing_weights + r.unread_kernel_weights + r.unread_biases
      for r in report.layers.values())
  # Only zeros are introduced, and every surviving weight is unchanged.
  for a, b in zip(jax.tree.leaves(cleaned), jax.tree.leaves(params)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a[a != 0], b[a != 0])
  x = np.random.default_rng(seed).normal(0, 1, (64, 28, 28, 1)).astype(
      np.float32)
  before, after = _logits(model, params, x), _logits(model, cleaned, x)
  assert np.array_equal(before, after)
  # A second cleanup finds nothing.
  again, report2 = cleanup.cleanup(cleaned, model)
  assert report2.removed == 0 and report2.passes == 1


def test_cascade_reaches_a_fixed_point():
  # conv1 channel 3 is read only by conv2 channel 7, which dense1 never
  # reads: removing channel 7 leaves channel 3 unread in a second pass.
  model = 'poster'
  params = _quantized_like(model, 5, DENSITY[model])
  params['conv2']['kernel'][:, :, 3, :] = 0
  params['conv2']['kernel'][1, 1, 3, 7] = 0.4
  params['dense1']['kernel'][7::50] = 0
  cleaned, report = cleanup.cleanup(params, model)
  assert report.passes == 3
  assert not np.any(cleaned['conv1']['kernel'][..., 3])
  assert cleaned['conv1']['bias'][3] == 0
  assert report.layers['conv1'].unread_units >= 1
  assert report.layers['conv2'].unread_units >= 1
  x = np.random.default_rng(0).normal(0, 1, (16, 28, 28, 1)).astype(
      np.float32)
  assert np.array_equal(_logits(model, params, x),
                        _logits(model, cleaned, x))


def test_no_relu_units_with_a_bias_are_not_dead():
  # LeNet-5-Caffe's convs have no ReLU: an input-less unit with bias -0.12
  # outputs -0.12 everywhere, which conv2 reads; with bias 0 it is dead.
  model = 'lenet5caffe'
  params = _quantized_like(model, 2, DENSITY[model])
  params['conv1']['kernel'][..., :2] = 0
  params['conv1']['bias'][:2] = [-0.12, 0.0]
  params['conv2']['kernel'][:, :, :2, :] = 0.07
  cleaned, report = cleanup.cleanup(params, model)
  assert np.all(cleaned['conv2']['kernel'][:, :, 0, :] == np.float32(0.07))
  assert not np.any(cleaned['conv2']['kernel'][:, :, 1, :])
  assert report.layers['conv1'].dead_units == 1
  assert report.layers['conv1'].dead_outgoing_weights == 5 * 5 * 50
  x = np.random.default_rng(1).normal(0, 1, (16, 28, 28, 1)).astype(
      np.float32)
  assert np.array_equal(_logits(model, params, x),
                        _logits(model, cleaned, x))


def test_committed_poster_model_counts_and_predictions():
  params = codec.load_compressed(
      os.path.join(REPO, 'results', 'mnist_v1', 'model.gmpz'))
  cleaned, report = cleanup.cleanup(params, 'poster')
  dense1, conv2 = report.layers['dense1'], report.layers['conv2']
  assert (dense1.dead_units, dense1.units) == (201, 500)
  assert dense1.dead_outgoing_weights == 288
  assert (conv2.unread_units, conv2.units) == (5, 50)
  assert conv2.unread_kernel_weights == 258
  # Independent counts: dense1 columns with no input and bias <= 0, and the
  # non-zero dense2 rows they feed.
  k1, b1 = params['dense1']['kernel'], params['dense1']['bias']
  dead = (np.count_nonzero(k1, axis=0) == 0) & (b1 <= 0)
  assert dead.sum() == 201
  assert np.count_nonzero(params['dense2']['kernel'][dead]) == 288
  unread = [c for c in range(50) if not np.any(k1[c::50])]
  assert np.count_nonzero(params['conv2']['kernel'][..., unread]) == 258
  assert report.removed == 288 + 258 + conv2.unread_biases
  assert report.removed == _nonzero(params) - _nonzero(cleaned)


def _committed_models():
  out = []
  for path in sorted(glob.glob(os.path.join(REPO, 'results', '*',
                                            'model.gmpz'))):
    meta = codec.load_compressed_with_info(path).metadata
    meta = meta or {}
    model = meta.get('model', 'poster')
    # Cleanup applies to SequentialNets only, as the pipeline's stage does.
    if isinstance(models.get_model(model), models.SequentialNet):
      out.append((os.path.relpath(path, REPO), model))
  return out


@pytest.fixture(scope='module')
def mnist_test():
  """Every 4th MNIST test image: 2,500 real digits, one forward pass each.

  A dead or unread unit contributes exact zeros whatever the input, so a
  quarter of the split checks the same property at a quarter of the cost.
  """
  x, _ = data_lib.load_dataset('mnist', source='offline')['test']
  return x[::4]


@pytest.mark.parametrize('path,model', _committed_models())
def test_committed_models_keep_bit_identical_logits(path, model, mnist_test):
  params = codec.load_compressed(os.path.join(REPO, path))
  cleaned, report = cleanup.cleanup(params, model)
  assert np.array_equal(_logits(model, params, mnist_test),
                        _logits(model, cleaned, mnist_test))
  assert report.nonzero_after == _nonzero(cleaned)


def test_bad_inputs_raise():
  params = _quantized_like('poster', 0, DENSITY['poster'])
  with pytest.raises(ValueError, match='layers'):
    cleanup.cleanup({'conv1': params['conv1']}, 'poster')
  with pytest.raises(ValueError, match='units'):
    cleanup.cleanup(params, 'lenet5caffe')
  bad = copy.deepcopy(params)
  bad['dense1']['bias'][0] = np.nan
  with pytest.raises(ValueError, match='non-finite'):
    cleanup.cleanup(bad, 'poster')
  bad = copy.deepcopy(params)
  del bad['dense2']['bias']
  with pytest.raises(ValueError, match='kernel and bias'):
    cleanup.cleanup(bad, 'poster')
  with pytest.raises(ValueError, match='Unknown model'):
    cleanup.cleanup(params, 'resnet')
  # The {'params': ...} wrapper is accepted.
  _, report = cleanup.cleanup({'params': params}, 'poster')
  assert report.nonzero_before == _nonzero(params)
