"""Packed weights: resident bytes and latency of one linear layer, y = x @ W.

  python -m benchmarks.packed --out results/packed_cpu.json  # 1024..8192
  python -m benchmarks.packed --quick       # 1024 and 4096 only
  python -m benchmarks.packed --smoke --out /tmp/p.json  # tiny, 1 repeat

W is (n, n) float32 with K = 16 shared values (entry 0 = 0), indices drawn
uniformly. Variants, each a `jax.jit` function of x and the resident form
of W (`resident_bytes` is what it holds between calls):

* `dense_f32`: x @ W, W float32.
* `dense_bf16`: x @ W in bfloat16 (x cast), W bfloat16 (other values).
* `packed_xla`: `gmp_jax.packed_apply(lambda p, x: x @ p['w'])` on the
  4-bit `PackedArray`: `packed_matmul`, W dequantised a block of rows at a
  time through a 256-entry table of value pairs (no dense W).
* `packed_xla_whole`: the same with `fuse_matmul=False`: the whole W is
  dequantised (pair table) on every call, then x @ W.
* `naive_u8` and `naive_4bit`: x @ codebook[indices], an element-wise
  gather from uint8 indices or from unpacked 4-bit pairs (the issue's
  reference formulation).
* `kernel`: the Pallas `lut_matmul`, timed only where it compiles natively;
  on the CPU backend it would run in Pallas' interpreter, which is no
  speed measurement, so the JSON records why it was skipped.

Each is compiled ahead of time (`compile_ms`), called once (warm-up;
`first_ms`) and then `runs` times; `median_ms` is the median. `temp_bytes`
is the temporary buffer size of the compiled function (XLA's
`memory_analysis`): the peak memory added to the arguments and output.
`max_rel_err` compares the output with `dense_f32` (max |diff| / max |y|).

`models`: the committed Shakespeare LM, poster MNIST net and LeNet-5,
loaded with `load_compressed(path, packed=True)` (sparse leaves by the
'auto' rule): resident bytes against float32 (also without sparse leaves),
bits per weight of the packed leaves (codebooks included) and the leaves
left dense, with the reason.

`sparse`: leaves of 1250 x 500 (the poster net's big layer) and 4096 x 4096
at densities 1% to 25%, x @ W at batch 1 and 64 for dense float32,
`packed_xla`, `sparse` (`SparsePackedArray` through `packed_apply`) and, on
the first shape, `jax.experimental.sparse` BCSR and BCOO as they come;
`crossover` gives per shape and batch the densest tested leaf where sparse
beats dense float32, and `auto_rule` the density `pack` uses.

`end_to_end`: the poster net and LeNet-5 from their committed files, built
from the experiments registry (read only): resident bytes and latency of
dense float32, packed and sparse at batch 1 and 64.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from absl import app
from absl import flags
import jax
from jax.experimental import sparse as jsparse
import jax.numpy as jnp
import numpy as np

import gmp_jax
from gmp_jax import packed as packed_lib
from gmp_jax import packed_kernel
from benchmarks import timing
from experiments.infra import jsonio
from experiments.infra import cli

K = 16
RESULTS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'results')
MODELS = {'shakespeare_lm': 'shakespeare/model.gmpz',
          'poster_mnist': 'mnist/model.gmpz',
          'lenet5': 'lenet5/model.gmpz'}
SPARSE_SHAPES = ((1250, 500), (4096, 4096))
SPARSE_DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.25)
VARIANTS = ('dense_f32', 'dense_bf16', 'packed_xla', 'packed_xla_whole',
            'naive_u8', 'naive_4bit', 'kernel')


def _codebook(rng) -> np.ndarray:
  cb = np.sort(rng.normal(0, 0.05, K)).astype(np.float32)
  cb[np.argmin(np.abs(cb))] = 0.0
  return np.concatenate([[0.0], cb[cb != 0]]).astype(np.float32)


def _runs_for(n: int, args) -> int:
  if args.runs:
    return args.runs
  return 1 if args.smoke else 30 if n <= 1024 else 10 if n <= 4096 else 3


def _compile(fn, *a):
  """The compiled `fn` for `a` and its XLA temporary bytes (or None)."""
  compiled = fn.lower(*a).compile()
  try:
    temp = int(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    temp = None
  return compiled, temp


def _time(fn, args_, runs: int) -> dict[str, float]:
  t = timing.median_seconds(lambda: jax.block_until_ready(fn(*args_)), runs)
  return {'first_ms': 1e3 * t['first_s'], 'median_ms': 1e3 * t['median_s'],
          'runs': runs}


def _naive_4bit(x, packed, codebook):
  idx = jnp.stack([packed & 15, packed >> 4], axis=-1)
  return x @ codebook[idx.reshape(packed.shape[0], -1)]


def layer_variants(w: np.ndarray, codebook: np.ndarray):
  """`{name: (jitted fn, args without x, resident bytes)}` for one W."""
  p = jax.device_put(packed_lib.pack_array(w))
  assert p.bits == 4 and p.num_values == K
  idx_u8 = jax.device_put(packed_lib.unpack_nibbles(
      np.asarray(p.indices), p.shape).astype(np.uint8))
  cb = jax.device_put(p.codebook)
  n = w.size
  out = {
      'dense_f32': (jax.jit(lambda x, a: x @ a), (jax.device_put(w),),
                    n * 4),
      'dense_bf16': (jax.jit(lambda x, a: x.astype(jnp.bfloat16) @ a),
                     (jax.device_put(w.astype(jnp.bfloat16)),), n * 2),
      'packed_xla': (jax.jit(gmp_jax.packed_apply(lambda q, x: x @ q['w'])),
                     ({'w': p},), p.nbytes),
      'packed_xla_whole': (
          jax.jit(gmp_jax.packed_apply(lambda q, x: x @ q['w'],
                                       fuse_matmul=False)),
          ({'w': p},), p.nbytes),
      'naive_u8': (jax.jit(lambda x, i, c: x @ c[i]), (idx_u8, cb),
                   n + cb.nbytes),
      'naive_4bit': (jax.jit(_naive_4bit), (p.indices, cb), p.nbytes),
  }
  if jax.default_backend() != 'cpu':
    out['kernel'] = (jax.jit(lambda x, q: packed_kernel.lut_matmul(
        x, q, interpret=False)), (p,), p.nbytes)
  return out


def bench_layers(sizes, batches, args, rng) -> list[dict[str, Any]]:
  rows = []
  codebook = _codebook(rng)
  for n in sizes:
    w = codebook[rng.integers(0, K, size=(n, n))]
    variants = layer_variants(w, codebook)
    runs = _runs_for(n, args)
    for b in batches:
      x = jax.device_put(rng.normal(size=(b, n)).astype(np.float32))
      ref = None
      for name in VARIANTS:
        row = {'size': n, 'batch': b, 'variant': name}
        if name not in variants:
          row.update(skipped='Pallas kernel on the CPU backend runs only in '
                     'interpret mode: no speed measurement')
          row['resident_bytes'] = variants['packed_xla'][2]
          rows.append(row)
          continue
        fn, extra, resident = variants[name]
        call_args = ((extra[0], x) if name.startswith('packed_xla')
                     else (x, *extra))
        start = time.perf_counter()
        fn, temp = _compile(fn, *call_args)
        compile_ms = 1e3 * (time.perf_counter() - start)
        y = np.asarray(jax.block_until_ready(fn(*call_args)), np.float64)
        if ref is None:
          ref = y
        row.update(resident_bytes=int(resident), temp_bytes=temp,
                   compile_ms=compile_ms,
                   max_rel_err=float(np.max(np.abs(y - ref))
                                     / max(np.max(np.abs(ref)), 1e-30)))
        row.update(_time(fn, call_args, runs))
        rows.append(row)
        print(f'n={n:5d} b={b:3d} {name:17s} {row["median_ms"]:9.3f} ms '
              f'{row["resident_bytes"] / 2**20:9.2f} MiB', flush=True)
      del x
    del w, variants
  return rows


def bench_models() -> list[dict[str, Any]]:
  rows = []
  for name, rel in MODELS.items():
    path = os.path.join(RESULTS, rel)
    if not os.path.exists(path):
      rows.append({'model': name, 'file': rel, 'skipped': 'file missing'})
      continue
    start = time.perf_counter()
    tree = gmp_jax.load_compressed(path, packed=True)
    load_s = time.perf_counter() - start
    leaves = packed_lib.summary(tree)
    f32 = sum(4 * math.prod(r.shape) for r in leaves)
    packed = [r for r in leaves if r.kind == 'packed']
    sparse = [r for r in leaves if r.kind == 'sparse']
    dense = [r for r in leaves if r.kind == 'dense']
    packed_only = packed_lib.resident_bytes(
        gmp_jax.load_compressed(path, packed=True, layout='packed'))
    resident = sum(r.nbytes for r in leaves)
    packed_weights = sum(math.prod(r.shape) for r in packed)
    matrices = [r for r in packed if len(r.shape) >= 2]
    rows.append({
        'model': name, 'file': rel, 'file_bytes': os.path.getsize(path),
        'load_packed_s': load_s, 'weights': sum(math.prod(r.shape)
                                                for r in leaves),
        'float32_bytes': f32, 'resident_bytes': resident,
        'times_smaller_than_float32': f32 / resident,
        'packed_leaves': len(packed), 'dense_leaves': len(dense),
        'sparse_leaves': len(sparse),
        'sparse_leaf_names': [r.name for r in sparse],
        'resident_bytes_without_sparse': packed_only,
        'times_smaller_without_sparse': f32 / packed_only,
        'dense_leaf_names': [r.name for r in dense],
        'dense_leaf_reasons': {r.name: r.reason for r in dense},
        'dense_bytes': sum(r.nbytes for r in dense),
        'packed_bits_per_weight': 8 * sum(r.nbytes for r in packed)
                                  / max(packed_weights, 1),
        'packed_leaf_max_bits_per_weight': max(
            (r.bits_per_weight for r in packed), default=None),
        'matrix_leaf_max_bits_per_weight': max(
            (r.bits_per_weight for r in matrices), default=None),
        'leaves_over_4_5_bits': [
            {'name': r.name, 'shape': list(r.shape),
             'bits_per_weight': r.bits_per_weight}
            for r in packed if r.bits_per_weight > 4.5],
    })
    r = rows[-1]
    print(f'{name}: {r["resident_bytes"]:,} bytes resident vs '
          f'{f32:,} float32 ({r["times_smaller_than_float32"]:.2f}x); '
          f'packed leaves {r["packed_bits_per_weight"]:.3f} bits/weight',
          flush=True)
  return rows


def _bcsr(a: np.ndarray) -> jsparse.BCSR:
  """`BCSR.fromdense(a)`, built with NumPy (the jax one runs op by op)."""
  rows, cols = np.nonzero(a)
  indptr = np.concatenate([[0], np.cumsum(np.bincount(rows,
                                                      minlength=a.shape[0]))])
  return jsparse.BCSR((jnp.asarray(a[rows, cols]),
                       jnp.asarray(cols, jnp.int32),
                       jnp.asarray(indptr, jnp.int32)), shape=a.shape)


def _bcoo(a: np.ndarray) -> jsparse.BCOO:
  rows, cols = np.nonzero(a)
  return jsparse.BCOO((jnp.asarray(a[rows, cols]),
                       jnp.asarray(np.stack([rows, cols], 1), jnp.int32)),
                      shape=a.shape)


def _sparse_forms(w: np.ndarray, reference_formats: bool):
  """`{format: (jitted fn(x, arg), arg, resident bytes)}` for one W."""
  p = jax.device_put(packed_lib.pack_array(w))
  s = jax.device_put(gmp_jax.pack(w, layout='sparse'))
  assert isinstance(s, packed_lib.SparsePackedArray)
  run = gmp_jax.packed_apply(lambda q, x: x @ q)
  forms = {
      'dense_f32': (jax.jit(lambda x, a: x @ a), jax.device_put(w),
                    w.nbytes),
      'packed_xla': (jax.jit(lambda x, q: run(q, x)), p, p.nbytes),
      'sparse': (jax.jit(lambda x, q: run(q, x)), s, s.nbytes),
  }
  if reference_formats:  # jax.experimental.sparse on float32 values.
    for name, make in (('bcsr', _bcsr), ('bcoo', _bcoo)):
      m = make(w.T)
      forms[name] = (jax.jit(lambda x, a: (a @ x.T).T), m,
                     sum(int(a.nbytes) for a in jax.tree.leaves(m)))
  return forms


def bench_sparse(shapes, densities, batches, runs, rng) -> dict[str, Any]:
  """Sparse against dense and packed x @ W: latency, bytes, crossover.

  `sparse` is `packed_apply` on a `SparsePackedArray` (4-bit codes): at
  batch >= `SPARSE_KERNEL_MIN_BATCH` the CSR kernel of
  `jax.experimental.sparse`, at batch 1 a gather and scatter-add. `bcsr`
  and `bcoo` (float32 values, int32 indices) are `jax.experimental.sparse`
  as is, timed on the first shape only. Rounds of all formats alternate
  (median over rounds) so that a change of machine load hits them alike.
  """
  codebook = _codebook(rng)
  rows = []
  for si, shape in enumerate(shapes):
    n_runs = runs if math.prod(shape) <= 1 << 20 else max(1, runs // 6)
    for density in densities:
      values = codebook[rng.integers(1, K, size=shape)]
      w = np.where(rng.random(shape) < density, values,
                   np.float32(0)).astype(np.float32)
      forms = _sparse_forms(w, reference_formats=si == 0)
      for b in batches:
        x = jax.device_put(rng.normal(size=(b, shape[0])).astype(np.float32))
        ref = np.asarray(x, np.float64) @ w
        times = {name: [] for name in forms}
        for name, (fn, arg, _) in forms.items():
          y = np.asarray(jax.block_until_ready(fn(x, arg)), np.float64)
          assert np.allclose(y, ref, rtol=1e-4, atol=1e-4), name
        for _ in range(3):
          for name, (fn, arg, _) in forms.items():
            times[name].append(_time(fn, (x, arg), n_runs)['median_ms'])
        for name, (fn, arg, nbytes) in forms.items():
          rows.append({'shape': list(shape), 'density': density,
                       'nonzeros': int(np.count_nonzero(w)), 'batch': b,
                       'format': name, 'resident_bytes': int(nbytes),
                       'median_ms': float(np.median(times[name])),
                       'runs': 3 * n_runs})
        print(f'{shape} d={density:.2f} b={b:3d} ' + ' '.join(
            f'{r["format"]}={r["median_ms"]:.3f}' for r in rows[-len(forms):]),
              flush=True)
  return {'shapes': [list(s) for s in shapes], 'densities': list(densities),
          'batches': list(batches), 'rows': rows,
          'crossover': crossover(rows),
          'auto_rule': {
              'sparse_max_density': packed_lib.SPARSE_MAX_DENSITY,
              'kernel_min_batch': packed_lib.SPARSE_KERNEL_MIN_BATCH}}


def crossover(rows) -> dict[str, Any]:
  """Per shape and batch, the densest tested leaf where `sparse` beats
  `dense_f32` (and `packed_xla`); `all` the smallest of those: the density
  below which sparse won in every tested case."""
  out: dict[str, Any] = {}
  densest = []
  for shape in sorted({tuple(r['shape']) for r in rows}):
    key = 'x'.join(map(str, shape))
    out[key] = {}
    for b in sorted({r['batch'] for r in rows}):
      by_d: dict[float, dict[str, float]] = {}
      for r in rows:
        if tuple(r['shape']) == shape and r['batch'] == b:
          by_d.setdefault(r['density'], {})[r['format']] = r['median_ms']
      beats_dense = [d for d, f in sorted(by_d.items())
                     if f['sparse'] < f['dense_f32']]
      beats_packed = [d for d, f in sorted(by_d.items())
                      if f['sparse'] < f['packed_xla']]
      wins = max(beats_dense, default=None)
      out[key][str(b)] = {'sparse_beats_dense_up_to': wins,
                          'sparse_beats_packed_up_to': max(beats_packed,
                                                           default=None),
                          'beats_dense_at': beats_dense}
      densest.append(wins or 0.0)
  out['all'] = min(densest, default=None)
  return out


# (name, committed file, registered model name) of the end-to-end section.
SPARSE_MODELS = (('poster_mnist', 'mnist/model.gmpz', 'poster'),
                 ('lenet5', 'lenet5/model.gmpz', 'lenet5caffe'))


def _model_builder():
  """`name -> flax module` from the experiments registry (read only)."""
  try:
    from experiments.image import models  # pylint: disable=g-import-not-at-top
    return models.get_model
  except ImportError:
    pass
  from experiments.infra import registry  # pylint: disable=g-import-not-at-top
  import experiments.image  # pylint: disable=g-import-not-at-top,unused-import
  return lambda name: registry.model(name).build(None)


def bench_end_to_end(batches, runs, rounds=3,
                     which=SPARSE_MODELS) -> list[dict[str, Any]]:
  """The MNIST nets from their committed files: dense, packed, sparse.

  `dense_f32`: `load_compressed(path)` and the model's jitted apply;
  `packed`: `load_compressed(path, packed=True, layout='packed')` run by
  `packed_apply`; `sparse`: the same with `layout='auto'` (the sparse leaves
  chosen by the measured crossover). Rounds alternate the variants; the
  median over rounds is kept. The input is a random image batch (the
  latency does not depend on it); outputs are checked against dense.
  """
  try:
    build = _model_builder()
  except ImportError as e:
    return [{'model': name, 'skipped': f'experiments not importable: {e}'}
            for name, _, _ in which]
  rows = []
  for name, rel, model_name in which:
    path = os.path.join(RESULTS, rel)
    if not os.path.exists(path):
      rows.append({'model': name, 'file': rel, 'skipped': 'file missing'})
      continue
    model = build(model_name)
    apply_fn = lambda p, x, m=model: m.apply({'params': p}, x)
    trees = {
        'dense_f32': gmp_jax.load_compressed(path),
        'packed': gmp_jax.load_compressed(path, packed=True, layout='packed'),
        'sparse': gmp_jax.load_compressed(path, packed=True),
    }
    fns = {'dense_f32': jax.jit(apply_fn),
           'packed': jax.jit(gmp_jax.packed_apply(apply_fn)),
           'sparse': jax.jit(gmp_jax.packed_apply(apply_fn))}
    resident = {k: packed_lib.resident_bytes(t) for k, t in trees.items()}
    on_device = {k: jax.device_put(t) for k, t in trees.items()}
    row = {'model': name, 'file': rel, 'resident_bytes': resident,
           'float32_bytes': resident['dense_f32'],
           'times_smaller_than_float32': {
               k: resident['dense_f32'] / v for k, v in resident.items()},
           'sparse_leaves': [r.name for r in packed_lib.summary(
               trees['sparse']) if r.kind == 'sparse'],
           'latency_ms': {}, 'sparse_speedup_over_dense': {},
           'packed_speedup_over_dense': {}}
    for b in batches:
      x = jax.device_put(np.random.default_rng(b).random(
          (b, 28, 28, 1), np.float32))
      ref = np.asarray(fns['dense_f32'](on_device['dense_f32'], x))
      times = {k: [] for k in fns}
      for k, fn in fns.items():
        np.testing.assert_allclose(np.asarray(fn(on_device[k], x)), ref,
                                   rtol=1e-4, atol=1e-4)
      for _ in range(rounds):
        for k, fn in fns.items():
          times[k].append(_time(fn, (on_device[k], x), runs)['median_ms'])
      ms = {k: float(np.median(v)) for k, v in times.items()}
      row['latency_ms'][str(b)] = ms
      row['sparse_speedup_over_dense'][str(b)] = ms['dense_f32'] / ms['sparse']
      row['packed_speedup_over_dense'][str(b)] = ms['dense_f32'] / ms['packed']
      print(f'{name} b={b}: ' + ' '.join(f'{k}={v:.3f} ms'
                                         for k, v in ms.items()), flush=True)
    row['targets'] = {
        'resident_20x_smaller': (row['times_smaller_than_float32']['sparse']
                                 >= 20),
        'sparse_2x_dense_every_batch': all(
            v >= 2 for v in row['sparse_speedup_over_dense'].values())}
    rows.append(row)
  return rows


def targets(rows) -> list[dict[str, Any]]:
  """The issue's speed targets for `packed_xla` against `dense_f32`."""
  out = []
  by = {(r['size'], r['batch'], r['variant']): r for r in rows
        if 'median_ms' in r}
  for (n, b, v), r in sorted(by.items()):
    if v != 'packed_xla':
      continue
    dense = by[(n, b, 'dense_f32')]['median_ms']
    limit = 2.0 if b >= 64 else 3.0
    ratio = r['median_ms'] / dense
    out.append({'size': n, 'batch': b, 'packed_over_dense': ratio,
                'limit': limit, 'met': ratio <= limit})
  return out


def plot(results: dict[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [r for r in results['layers'] if 'median_ms' in r]
  cases = sorted({(r['size'], r['batch']) for r in rows})
  names = [v for v in VARIANTS if any(r['variant'] == v for r in rows)]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
  width = 0.8 / len(names)
  for i, name in enumerate(names):
    ms = [next((r['median_ms'] for r in rows if (r['size'], r['batch'])
                == c and r['variant'] == name), np.nan) for c in cases]
    ax1.bar(np.arange(len(cases)) + i * width, ms, width, label=name)
  ax1.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
  ax1.set_xticklabels([f'{n}²\nbatch {b}' for n, b in cases])
  ax1.set_yscale('log')
  ax1.set_ylabel('median latency (ms)')
  ax1.set_title('x @ W, one linear layer (CPU)')
  ax1.legend(fontsize=7)
  sizes = sorted({n for n, _ in cases})
  for i, name in enumerate(names):
    mib = [next((r['resident_bytes'] / 2**20 for r in rows
                 if r['size'] == n and r['variant'] == name), np.nan)
           for n in sizes]
    ax2.bar(np.arange(len(sizes)) + i * width, mib, width, label=name)
  ax2.set_xticks(np.arange(len(sizes)) + 0.4 - width / 2)
  ax2.set_xticklabels([f'{n}²' for n in sizes])
  ax2.set_yscale('log')
  ax2.set_ylabel('resident W (MiB)')
  ax2.set_title('resident parameter bytes')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _table(results) -> str:
  lines = ['| layer | batch | variant | median ms | resident bytes |',
           '|---|---:|---|---:|---:|']
  for r in results['layers']:
    ms = f'{r["median_ms"]:.3f}' if 'median_ms' in r else 'skipped'
    lines.append(f'| {r["size"]}² | {r["batch"]} | {r["variant"]} | {ms} '
                 f'| {r["resident_bytes"]:,} |')
  return '\n'.join(lines)


def models_table(results) -> str:
  """README's table: the committed models' resident bytes and latency."""
  lines = ['| model | float32 | packed | packed + sparse | ms, batch 1: dense / packed / sparse '
           '| ms, batch 64 |', '|---|---:|---:|---:|---:|---:|']
  e2e = {m['model']: m for m in results['end_to_end']}
  for m in results['models']:
    f32 = m['float32_bytes']
    row = (f'| {m["model"]} | {f32:,} B | '
           f'{m["resident_bytes_without_sparse"]:,} B '
           f'({m["times_smaller_without_sparse"]:.1f}×) | '
           f'{m["resident_bytes"]:,} B ({m["times_smaller_than_float32"]:.1f}×)')
    if m['model'] in e2e:
      lat = e2e[m['model']]['latency_ms']
      row += ''.join(
          ' | ' + ' / '.join(f'{lat[b][k]:.2f}'
                             for k in ('dense_f32', 'packed', 'sparse'))
          for b in sorted(lat, key=int))
      row += ' |'
    else:
      row += ' | | |'
    lines.append(row)
  return '\n'.join(lines)


def _define_flags() -> None:
  flags.DEFINE_string('out', os.path.join(RESULTS, 'packed_cpu.json'),
                      'The JSON report.')
  flags.DEFINE_string('plot', None, 'Figure path (default: --out with .png).')
  flags.DEFINE_string('sizes', None, 'Comma-separated n of the n x n layer.')
  flags.DEFINE_string('batches', '1,64', 'Comma-separated batch sizes.')
  flags.DEFINE_integer('runs', 0, 'Timed calls per case (0: by size).')
  flags.DEFINE_bool('quick', False, 'No 8192².')
  flags.DEFINE_bool('smoke', False, 'Tiny sizes, one run each (for tests).')
  flags.DEFINE_bool('sparse', True, 'Also the sparse layouts and the '
                    'end-to-end models (--nosparse skips them).')


def main(argv: list[str]) -> int:
  """Runs the benchmark; writes the JSON (and figure) and prints tables."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  if args.sizes:
    sizes = [int(s) for s in args.sizes.split(',')]
  elif args.smoke:
    sizes = [64]
  else:
    sizes = [1024, 4096] + ([] if args.quick else [8192])
  batches = [int(b) for b in args.batches.split(',')]
  if args.smoke:
    batches = [1, 4]
  rng = np.random.default_rng(0)
  results: dict[str, Any] = {
      'command': cli.command('benchmarks.packed'),
      'machine': timing.machine(), 'load': timing.load(),
      'settings': {'sizes': sizes, 'batches': batches, 'codebook_size': K,
                   'block_bytes': packed_lib.BLOCK_BYTES,
                   'smoke': args.smoke},
      'kernel': ({'ran': False,
                  'reason': 'CPU backend: the Pallas kernel runs only in '
                            'interpret mode here (checked for correctness '
                            'in tests/packed_kernel_test.py, not timed)'}
                 if jax.default_backend() == 'cpu' else {'ran': True}),
  }
  results['layers'] = bench_layers(sizes, batches, args, rng)
  results['targets'] = targets(results['layers'])
  results['models'] = bench_models()
  if args.sparse:
    shapes = ((125, 50),) if args.smoke else SPARSE_SHAPES
    densities = (0.05,) if args.smoke else SPARSE_DENSITIES
    results['sparse'] = bench_sparse(shapes, densities,
                                     [4] if args.smoke else batches,
                                     1 if args.smoke else 30, rng)
    results['end_to_end'] = bench_end_to_end(
        [4] if args.smoke else batches, 1 if args.smoke else 20,
        rounds=1 if args.smoke else 3,
        which=SPARSE_MODELS[:1] if args.smoke else SPARSE_MODELS)
  results['load_after'] = timing.load()
  jsonio.write_json_atomic(args.out, results)
  plot(results, args.plot or os.path.splitext(args.out)[0] + '.png')
  print(_table(results))
  print(models_table(results))
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
