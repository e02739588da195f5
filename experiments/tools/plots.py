"""Figures for the compression report: Figures 3 and 4 and training curves.

All functions take NumPy arrays (JAX arrays are converted), write a PNG
atomically (`gmp_jax.codec.fileio.write_atomic`: a synced temp file in the same
dir, then a rename) and return its path.
They draw on `matplotlib.figure.Figure` objects rendered by the Agg backend
and never touch `pyplot`, so they change no global backend or state and work
the same headless, in tests and in notebooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import math
import os
from typing import Any

import matplotlib
from matplotlib import cm
from matplotlib import colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from gmp_jax.codec import fileio

PRUNED_COLOR = (1.0, 1.0, 1.0, 1.0)  # White: pruned (exactly zero) weights.
GAP_COLOR = (0.55, 0.55, 0.55, 1.0)  # Grey: space between filter tiles.
WEIGHT_CMAP = 'coolwarm'  # Diverging, with a grey (not white) centre.


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> str:
  """Renders ``fig`` with Agg and writes it to ``path`` atomically."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  FigureCanvasAgg(fig)
  fileio.write_atomic(path, lambda f: fig.savefig(f, format='png', dpi=dpi))
  return path


def plot_retraining_clustering(pretrained_flat: np.ndarray,
                               retrained_flat: np.ndarray,
                               means: np.ndarray, variances: np.ndarray,
                               path: str | os.PathLike, *,
                               mixing_proportions: np.ndarray | None = None,
                               max_points: int = 20_000, seed: int = 0,
                               title: str = 'Retraining clustering') -> str:
  """Figure 3: each weight's pretrained value against its retrained value.

  The scatter shows a random subsample of ``max_points`` weights; the marginal
  histograms (log counts) use all of them. Each final mixture component is a
  horizontal band ``mean +- 2 std`` across the scatter and the right
  histogram; the zero component (mean closest to 0) is drawn in grey.

  Args:
    pretrained_flat: weights before retraining, any shape (flattened).
    retrained_flat: the same weights after retraining, same size.
    means: component means, shape ``(J,)``.
    variances: component variances, shape ``(J,)``.
    path: output PNG path.
    mixing_proportions: optional ``(J,)``; shown as the bands' opacity.
    max_points: scatter subsample size.
    seed: subsample seed.
    title: figure title.

  Returns:
    ``path``.
  """
  w0 = np.asarray(pretrained_flat, np.float64).ravel()
  w1 = np.asarray(retrained_flat, np.float64).ravel()
  if w0.shape != w1.shape:
    raise ValueError(f'pretrained ({w0.size}) and retrained ({w1.size}) '
                     'weights differ in size.')
  means = np.asarray(means, np.float64).ravel()
  stds = np.sqrt(np.asarray(variances, np.float64).ravel())
  if means.shape != stds.shape:
    raise ValueError('means and variances differ in shape.')
  if mixing_proportions is None:
    alphas = np.full(means.shape, 0.25)
  else:
    pi = np.asarray(mixing_proportions, np.float64).ravel()
    alphas = 0.12 + 0.3 * np.sqrt(pi / max(pi.max(), 1e-12))
  if w0.size > max_points:
    idx = np.random.default_rng(seed).choice(w0.size, max_points,
                                             replace=False)
    s0, s1 = w0[idx], w1[idx]
  else:
    s0, s1 = w0, w1

  fig = Figure(figsize=(7.5, 7.5))
  grid = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4),
                          wspace=0.04, hspace=0.04)
  ax = fig.add_subplot(grid[1, 0])
  ax_top = fig.add_subplot(grid[0, 0], sharex=ax)
  ax_right = fig.add_subplot(grid[1, 1], sharey=ax)

  zero = int(np.argmin(np.abs(means))) if means.size else -1
  for j, (mu, sd) in enumerate(zip(means, stds)):
    color = 'grey' if j == zero else f'C{j % 10}'
    for a in (ax, ax_right):
      a.axhspan(mu - 2 * sd, mu + 2 * sd, color=color, alpha=alphas[j],
                lw=0, zorder=0)
      a.axhline(mu, color=color, lw=0.6, alpha=0.8, zorder=1)
  ax.scatter(s0, s1, s=2, c='k', alpha=0.35, lw=0, rasterized=True, zorder=2)
  lo = min(w0.min(initial=0.0), w1.min(initial=0.0))
  hi = max(w0.max(initial=0.0), w1.max(initial=0.0))
  pad = 0.05 * (hi - lo) if hi > lo else 1.0
  ax.set_xlim(w0.min(initial=0.0) - pad, w0.max(initial=0.0) + pad)
  ax.set_ylim(w1.min(initial=0.0) - pad, w1.max(initial=0.0) + pad)
  ax.set_xlabel('pretrained weight')
  ax.set_ylabel('retrained weight')

  ax_top.hist(w0, bins=200, color='tab:blue', log=True)
  ax_right.hist(w1, bins=200, color='tab:blue', log=True,
                orientation='horizontal')
  ax_top.set_ylabel('count')
  ax_right.set_xlabel('count')
  ax_top.tick_params(labelbottom=False)
  ax_right.tick_params(labelleft=False)
  fig.suptitle(f'{title} ({w0.size:,} weights, {means.size} components)')
  return _save(fig, path)


def _kernels(params: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
  """(name, kernel) pairs: conv (4-D) and dense (2-D) kernels, in order."""
  out = []
  for name, leaf in params.items():
    if isinstance(leaf, Mapping):
      if 'kernel' not in leaf:
        continue
      leaf = leaf['kernel']
    leaf = np.asarray(leaf, np.float32)
    if leaf.ndim in (2, 4):
      out.append((name, leaf))
  return out


def _tile_conv(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Tiles an HWIO kernel into a 2-D image plus a mask of the gaps.

  Filters of one input channel are laid out in a near-square grid; otherwise
  rows are input channels and columns output channels. Tiles are separated
  by one-pixel gaps.
  """
  kh, kw, cin, cout = kernel.shape
  if cin == 1:
    cols = math.ceil(math.sqrt(cout))
    rows = math.ceil(cout / cols)
    tiles = [kernel[:, :, 0, o] for o in range(cout)]
  else:
    rows, cols = cin, cout
    tiles = [kernel[:, :, i, o] for i in range(cin) for o in range(cout)]
  image = np.zeros((rows * (kh + 1) + 1, cols * (kw + 1) + 1), np.float32)
  gap = np.ones(image.shape, bool)
  for t, tile in enumerate(tiles):
    r, c = divmod(t, cols)
    y, x = 1 + r * (kh + 1), 1 + c * (kw + 1)
    image[y:y + kh, x:x + kw] = tile
    gap[y:y + kh, x:x + kw] = False
  return image, gap


def plot_model_weights(quantized_params_dict: Mapping[str, Any],
                       path: str | os.PathLike, *,
                       title: str = 'Pruned and quantized weights') -> str:
  """Figure 4: every layer's (quantized) kernel as an image.

  Conv kernels are tiled filter images (grey gaps between tiles); dense
  kernels are heat maps of shape (outputs, inputs). Weights exactly equal to
  zero (pruned) are white; the rest use a diverging colormap centred on zero
  whose centre is grey, so no surviving weight is drawn white. Biases are not
  drawn.

  Args:
    quantized_params_dict: ``{layer: {'kernel': array, ...}}`` (a Flax params
      dict) or ``{layer: kernel}``. Leaves that are not 2-D or 4-D kernels
      are skipped.
    path: output PNG path.
    title: figure title.

  Returns:
    ``path``.
  """
  kernels = _kernels(quantized_params_dict)
  if not kernels:
    raise ValueError('No 2-D or 4-D kernels to plot.')
  fig = Figure(figsize=(10, 3.2 * len(kernels)))
  cmap = matplotlib.colormaps[WEIGHT_CMAP]
  for i, (name, k) in enumerate(kernels):
    ax = fig.add_subplot(len(kernels), 1, i + 1)
    if k.ndim == 4:
      image, gap = _tile_conv(k)
      kind = 'filters (rows: in, cols: out)' if k.shape[2] > 1 else (
          'filters')
    else:
      image, gap = k.T, np.zeros(k.T.shape, bool)
      kind = 'transposed (rows: out, cols: in)'
    vmax = float(np.abs(k).max()) or 1.0
    norm = colors.Normalize(-vmax, vmax)
    rgba = cmap(norm(image))
    rgba[(image == 0) & ~gap] = PRUNED_COLOR
    rgba[gap] = GAP_COLOR
    ax.imshow(rgba, interpolation='nearest',
              aspect='equal' if k.ndim == 4 else 'auto')
    ax.set_xticks([])
    ax.set_yticks([])
    nonzero = k[k != 0]
    sparsity = 1.0 - nonzero.size / k.size
    ax.set_title(f'{name} {tuple(k.shape)}, {kind}\n{sparsity:.1%} pruned, '
                 f'{np.unique(nonzero).size} distinct nonzero values',
                 fontsize=9)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                 fraction=0.03, pad=0.01)
  fig.suptitle(f'{title} (white: pruned)')
  fig.tight_layout(rect=(0, 0, 1, 0.97))
  return _save(fig, path)


_EXCLUDED = ('stage', 'step', 'epoch')


def _numeric(value) -> float | None:
  if isinstance(value, bool):
    return None
  try:
    v = float(value)
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


def _metric_group(key: str) -> str:
  k = key.lower()
  if 'acc' in k:
    return 'accuracy'
  if 'loss' in k or 'nll' in k or 'mse' in k or 'error' in k:
    return 'loss'
  return 'other'


def plot_training_curves(history_records: Iterable[Mapping[str, Any]],
                         path: str | os.PathLike, *,
                         title: str = 'Training curves') -> str:
  """Loss and accuracy curves, one column per stage.

  Rows are metric groups: keys containing ``loss``/``nll``/``mse``/``error``,
  keys containing ``acc``, and (if any) other numeric keys. Keys ending in
  ``time``/``_s`` and non-numeric or non-finite values are skipped.

  Args:
    history_records: dicts with ``'stage'``, ``'step'`` and metric keys, e.g.
      the lines of a metrics JSONL file.
    path: output PNG path.
    title: figure title.

  Returns:
    ``path``.
  """
  series: dict[str, dict[str, dict[str, list[tuple[float, float]]]]] = {}
  for rec in history_records:
    stage = str(rec.get('stage', ''))
    step = _numeric(rec.get('step'))
    if step is None:
      continue
    for key, value in rec.items():
      if key in _EXCLUDED or key.endswith(('time', '_s')):
        continue
      v = _numeric(value)
      if v is None:
        continue
      series.setdefault(stage, {}).setdefault(
          _metric_group(key), {}).setdefault(key, []).append((step, v))
  if not series:
    raise ValueError('No numeric metrics with a step to plot.')
  stages = list(series)
  groups = [g for g in ('loss', 'accuracy', 'other')
            if any(g in series[s] for s in stages)]
  fig = Figure(figsize=(4.2 * len(stages), 3.0 * len(groups)))
  axes = fig.subplots(len(groups), len(stages), squeeze=False)
  for c, stage in enumerate(stages):
    for r, group in enumerate(groups):
      ax = axes[r][c]
      curves: Mapping[str, Sequence[tuple[float, float]]] = (
          series[stage].get(group, {}))
      for key, points in sorted(curves.items()):
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key,
                marker='.' if len(points) < 30 else None)
      if group == 'loss' and curves and all(
          v > 0 for pts in curves.values() for _, v in pts):
        ax.set_yscale('log')
      if curves:
        ax.legend(fontsize=7)
      else:
        ax.text(0.5, 0.5, 'no data', ha='center', va='center',
                transform=ax.transAxes, color='grey')
      ax.grid(alpha=0.3)
      if r == 0:
        ax.set_title(stage or '(no stage)')
      if r == len(groups) - 1:
        ax.set_xlabel('step')
      if c == 0:
        ax.set_ylabel(group)
  fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)
