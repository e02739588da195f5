"""Tests for experiments.tools.plots: every figure is written as a valid PNG."""

import os

from matplotlib import image as mpimg
import numpy as np
import pytest

from experiments.tools import plots

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _check_png(path):
  assert os.path.isfile(path)
  with open(path, 'rb') as f:
    assert f.read(8) == _PNG_MAGIC
  img = mpimg.imread(path)
  assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
  # Only the PNG is left in its dir: no temp files.
  assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]


def _quantized_params(seed=0):
  rng = np.random.default_rng(seed)
  levels = np.array([-0.2, -0.1, 0.0, 0.0, 0.0, 0.1, 0.15])

  def q(shape):
    return rng.choice(levels, size=shape).astype(np.float32)

  return {'conv1': {'kernel': q((5, 5, 1, 6)), 'bias': q((6,))},
          'conv2': {'kernel': q((3, 3, 6, 4)), 'bias': q((4,))},
          'dense1': {'kernel': q((64, 20)), 'bias': q((20,))},
          'dense2': {'kernel': q((20, 10)), 'bias': q((10,))}}


@pytest.mark.parametrize('num_weights,proportions', [(500, None),
                                                      (30_000, True)])
def test_retraining_clustering(tmp_path, num_weights, proportions):
  rng = np.random.default_rng(0)
  means = np.array([0.0, -0.1, 0.1])
  variances = np.array([1e-4, 4e-4, 4e-4])
  w0 = rng.normal(0, 0.08, num_weights)
  w1 = means[np.abs(w0[:, None] - means).argmin(1)] + rng.normal(
      0, 0.01, num_weights)
  pi = np.array([0.8, 0.1, 0.1]) if proportions else None
  path = str(tmp_path / 'new' / 'fig3.png')
  assert plots.plot_retraining_clustering(
      w0, w1, means, variances, path, mixing_proportions=pi,
      max_points=2000) == path
  _check_png(path)


def test_retraining_clustering_rejects_mismatch(tmp_path):
  with pytest.raises(ValueError, match='differ'):
    plots.plot_retraining_clustering(np.zeros(5), np.zeros(6), [0.0], [1.0],
                                     str(tmp_path / 'x.png'))


@pytest.mark.parametrize('flat', [False, True])
def test_model_weights(tmp_path, flat):
  params = _quantized_params()
  if flat:
    params = {k: v['kernel'] for k, v in params.items()}
  path = str(tmp_path / 'fig4.png')
  plots.plot_model_weights(params, path)
  _check_png(path)


def test_model_weights_shows_pruned_as_white_and_gaps_grey():
  kernel = np.zeros((2, 2, 1, 4), np.float32)
  kernel[0, 0, 0, :] = 1.0
  image, gap = plots._tile_conv(kernel)  # pylint: disable=protected-access
  assert image.shape == (7, 7)  # 2x2 tiles of 2x2 plus 1-pixel gaps.
  assert gap.sum() == 49 - 16 and (image[~gap] == 0).sum() == 12
  kernel = np.zeros((3, 3, 2, 5), np.float32)
  image, gap = plots._tile_conv(kernel)  # pylint: disable=protected-access
  assert image.shape == (2 * 4 + 1, 5 * 4 + 1)


def test_model_weights_rejects_no_kernels(tmp_path):
  with pytest.raises(ValueError, match='kernels'):
    plots.plot_model_weights({'b': np.zeros(3)}, str(tmp_path / 'x.png'))


def test_training_curves(tmp_path):
  records = []
  for stage, steps in (('teacher', 12), ('retrain', 40)):
    for step in range(steps):
      records.append({'stage': stage, 'step': step, 'loss': 1.0 / (step + 1),
                      'prior_loss': -3.0 + step, 'test_accuracy': 0.9,
                      'nonzero_fraction': 0.5, 'wall_time_s': 1.0,
                      'note': 'text', 'bad': float('nan')})
  path = str(tmp_path / 'curves.png')
  plots.plot_training_curves(records, path)
  _check_png(path)


def test_training_curves_rejects_empty(tmp_path):
  with pytest.raises(ValueError, match='No numeric'):
    plots.plot_training_curves([{'stage': 'a'}], str(tmp_path / 'x.png'))
