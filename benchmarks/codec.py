"""Save/load speed and size of the compressed file on the poster's model.

  python -m benchmarks.codec                 # timings and the size report
  python -m benchmarks.codec --coders        # also compare entropy coders
  python -m benchmarks.codec --json out.json
  python -m benchmarks.codec --large=10e6,50e6  # streaming at scale only

The model is the poster's MNIST net in flax layout (642,460 parameters),
quantised synthetically: each layer has 10 shared nonzero values with
unequal frequencies and the poster's per-layer sparsity (92.3% overall).
Times are medians over `--runs` repetitions after one warm-up; saving
includes the fsync of an atomic write to a temporary directory.
"""

from __future__ import annotations

import os
import tempfile
import time
import tracemalloc

from absl import app
from absl import flags
import constriction
import numpy as np

from benchmarks import timing
from experiments.infra import cli
from gmp_jax import codec
from gmp_jax import report
from experiments.infra import jsonio

# (name, kernel shape, bias size, fraction of zeros) from the poster's Table 1.
LAYERS = (
    ('Conv_0', (5, 5, 1, 25), 25, 0.227),
    ('Conv_1', (3, 3, 25, 50), 50, 0.545),
    ('Dense_0', (1250, 500), 500, 0.934),
    ('Dense_1', (500, 10), 10, 0.607),
)


def poster_params(*, seed: int = 0, distinct: int = 10) -> dict:
  """A quantised model with the poster's shapes and sparsity.

  Args:
    seed: NumPy seed.
    distinct: shared nonzero values per layer.

  Returns:
    `{'params': {layer: {'kernel', 'bias'}}}` of float32 NumPy arrays.
  """
  rng = np.random.default_rng(seed)
  params = {}
  for name, shape, bias, sparsity in LAYERS:
    means = (rng.choice([-1.0, 1.0], distinct)
             * rng.uniform(0.02, 0.3, distinct)).astype(np.float32)
    probs = rng.dirichlet(np.full(distinct, 2.0))
    layer = {}
    for leaf, leaf_shape in (('kernel', shape), ('bias', (bias,))):
      values = means[rng.choice(distinct, size=leaf_shape, p=probs)]
      values[rng.random(leaf_shape) < sparsity] = 0.0
      layer[leaf] = values
    params[name] = layer
  return {'params': params}


def compare_coders(params: dict) -> list[dict]:
  """Bits (relative to the empirical entropy) and times of candidate coders.

  The streams are those of the largest leaf: the nonzero mask (positions)
  and the codebook indices of the nonzeros. Model and table sizes are
  included where the coder stores one.

  Args:
    params: a tree from `poster_params`.

  Returns:
    One dict per (coder, stream).
  """
  x = params['params']['Dense_0']['kernel'].reshape(-1)
  mask = x != 0
  _, idx, counts = np.unique(x[mask], return_inverse=True, return_counts=True)
  n, nnz = x.size, int(mask.sum())
  gaps = np.diff(np.flatnonzero(mask), prepend=-1) - 1  # Zeros before each.
  entropy = {'positions': report.entropy_bits([n - nnz, nnz]),
             'indices': report.entropy_bits(counts)}
  streams = {'positions': (mask.astype(np.int32), np.array([n - nnz, nnz])),
             'indices': (idx.astype(np.int32), counts)}
  table_bytes = next(i.table_bits for i in codec.from_bytes(
      codec.to_bytes({'x': x})).leaves) // 8  # The counts table, as stored.
  rows = []

  def add(coder, stream, bits, enc, dec):
    rows.append({'coder': coder, 'stream': stream, 'bits': int(bits),
                 'bits_over_entropy': bits / entropy[stream],
                 'encode_s': enc, 'decode_s': dec})

  model = lambda c: constriction.stream.model.Categorical(
      np.asarray(c, np.float64), perfect=False)
  for stream, (symbols, c) in streams.items():
    for name, enc_cls, dec_cls, encode in (
        ('constriction ANS', constriction.stream.stack.AnsCoder,
         constriction.stream.stack.AnsCoder, 'encode_reverse'),
        ('constriction range', constriction.stream.queue.RangeEncoder,
         constriction.stream.queue.RangeDecoder, 'encode')):
      table_bits = 0 if stream == 'positions' else table_bytes * 8
      coder = enc_cls()
      t0 = time.perf_counter()
      getattr(coder, encode)(symbols, model(c))
      words = coder.get_compressed()
      t1 = time.perf_counter()
      decoded = dec_cls(words).decode(model(c), symbols.size)
      t2 = time.perf_counter()
      assert np.array_equal(decoded, symbols)
      add(name, stream, 32 * words.size + table_bits, t1 - t0, t2 - t1)
  try:
    import dahuffman  # pylint: disable=g-import-not-at-top
  except ImportError:
    return rows
  for stream, symbols in (('positions', gaps), ('indices', idx)):
    data = symbols.tolist()
    t0 = time.perf_counter()
    huff = dahuffman.HuffmanCodec.from_data(data)
    encoded = huff.encode(data)
    t1 = time.perf_counter()
    assert huff.decode(encoded) == data
    t2 = time.perf_counter()
    # Table: one (symbol, code length) byte pair per symbol, a lower bound.
    table_bits = 16 * len(huff.get_code_table())
    label = 'dahuffman (run lengths)' if stream == 'positions' else 'dahuffman'
    add(label, stream, 8 * len(encoded) + table_bits, t1 - t0, t2 - t1)
  return rows


def large_leaf(n: int, *, seed: int = 0) -> np.ndarray:
  """One float32 (4096, n / 4096) leaf: 16 shared values, 95% zeros."""
  rng = np.random.default_rng(seed)
  values = rng.uniform(-0.3, 0.3, 16).astype(np.float32)
  x = values[rng.integers(0, 16, (4096, max(1, n // 4096)), dtype=np.int8)]
  x[rng.random(x.shape, np.float32) < 0.95] = 0
  return x


def _peak(fn) -> int:
  """Peak bytes NumPy and Python allocate while `fn` runs (tracemalloc)."""
  tracemalloc.start()
  try:
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def scale(sizes: list[int]) -> list[dict]:
  """Save / load speed and peak added memory on one large leaf per size.

  Times are single runs (save: an atomic write with fsync to a temporary
  directory); the peaks are measured in separate runs under tracemalloc,
  relative to the leaf's bytes.
  """
  rows = []
  for n in sizes:
    x = large_leaf(n)
    params = {'w': x}
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'model.gmp')
      t0 = time.perf_counter()
      size = codec.save_compressed(path, params)
      t1 = time.perf_counter()
      out = codec.load_compressed(path)
      t2 = time.perf_counter()
      assert out['w'].tobytes() == x.tobytes()
      del out
      save_peak = _peak(lambda: codec.save_compressed(path, params))
      load_peak = _peak(lambda: codec.load_compressed(path))
    row = {'weights': int(x.size), 'file_bytes': size,
           'save_weights_per_s': x.size / (t1 - t0),
           'load_weights_per_s': x.size / (t2 - t1),
           'save_peak_over_leaf': save_peak / x.nbytes,
           'load_peak_over_leaf': load_peak / x.nbytes}
    rows.append(row)
    print(f'{x.size / 1e6:.1f}M weights ({size:,} bytes): save '
          f'{row["save_weights_per_s"] / 1e6:.1f} M/s, load '
          f'{row["load_weights_per_s"] / 1e6:.1f} M/s; peak added memory: '
          f'save {row["save_peak_over_leaf"]:.2f}x, load '
          f'{row["load_peak_over_leaf"]:.2f}x the leaf')
  return rows


def _define_flags() -> None:
  flags.DEFINE_integer('runs', 7, 'Repetitions after one warm-up.')
  flags.DEFINE_bool('coders', False,
                    'Also compare entropy coders on the largest leaf.')
  flags.DEFINE_string('json', None, 'Write the results as JSON here.')
  flags.DEFINE_list('large', [], 'Only the streaming benchmark: one leaf of '
                    'about N weights per entry, e.g. 10e6,50e6.')


def main(argv: list[str]) -> int:
  """Runs the benchmark and prints the results (and writes --json)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  if args.large:
    results = {'scale': scale([int(float(n)) for n in args.large])}
    if args.json:
      jsonio.write_json_atomic(args.json, results)
    return 0

  params = poster_params()
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'model.gmp')
    save_s = timing.median_seconds(
        lambda: codec.save_compressed(path, params), args.runs)['median_s']
    load_s = timing.median_seconds(
        lambda: codec.load_compressed(path), args.runs)['median_s']
    rep = report.compression_report(path=path)
  results = {'runs': args.runs, 'save_s': save_s, 'load_s': load_s,
             'report': rep.to_dict()}
  t = rep.totals()
  print(f'poster model: {t["parameters"]:,} parameters, '
        f'{1 - t["nonzeros"] / t["parameters"]:.1%} zeros')
  print(f'save {1e3 * save_s:.1f} ms, load {1e3 * load_s:.1f} ms '
        f'(median of {args.runs})')
  print(f'positions {t["position_bits_over_entropy"]:.4f}× and indices '
        f'{t["index_bits_over_entropy"]:.4f}× their empirical entropy\n')
  print(rep.to_markdown())
  if args.coders:
    results['coders'] = compare_coders(params)
    print('\n| coder | stream | bits | / entropy | encode ms | decode ms |')
    print('|---|---|---:|---:|---:|---:|')
    for r in results['coders']:
      print(f'| {r["coder"]} | {r["stream"]} | {r["bits"]:,} '
            f'| {r["bits_over_entropy"]:.4f} | {1e3 * r["encode_s"]:.1f} '
            f'| {1e3 * r["decode_s"]:.1f} |')
  if args.json:
    jsonio.write_json_atomic(args.json, results)
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
