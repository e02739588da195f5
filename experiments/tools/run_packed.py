"""Runs a pipeline's compressed model from its file, packed.

  python -m experiments.tools.run_packed classify results/mnist
  python -m experiments.tools.run_packed generate results/shakespeare \\
      --prompt='ROMEO:' --length=200

RUN is a pipeline workdir (or committed run): its `report.json` names the
model and dataset, its `model.gmpz` holds the weights. The file is loaded with
`gmp_jax.load_compressed(path, packed=True)` (quantised leaves as indices and
codebooks, very sparse ones as positions and codes) and the registered model
runs on it through `gmp_jax.packed_apply`, its code unchanged; no dense float
copy of a packed leaf is kept between calls.

* `classify`: accuracy on the dataset's test split, batch by batch, beside
  the run's own (dense) figure from `report.json`.
* `generate`: bytes from a language model, one at a time: each step runs the
  model on the last `context` bytes and samples the next one (greedy at
  `--temperature=0`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import gmp_jax
from gmp_jax import packed as packed_lib
from experiments.infra import cli
from experiments.infra import registry


def load_run(run: str) -> tuple[dict[str, Any], Any, Any]:
  """(config, model, packed params) of a workdir or committed run."""
  report_path = os.path.join(run, 'report.json')
  file_path = os.path.join(run, 'model.gmpz')
  for path in (report_path, file_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} not found: RUN must be a finished '
                              'pipeline workdir (report.json, model.gmpz)')
  with open(report_path) as f:
    config = json.load(f)['config']
  model = registry.model(config['model']).build(config['data']['name'])
  params = gmp_jax.load_compressed(file_path, packed=True)
  return config, model, params


def resident_line(params) -> str:
  rows = packed_lib.summary(params)
  resident = sum(r.nbytes for r in rows)
  f32 = sum(4 * int(np.prod(r.shape)) for r in rows)
  kinds = {k: sum(r.kind == k for r in rows)
           for k in ('packed', 'sparse', 'dense')}
  return (f'resident parameters: {resident:,} bytes ({f32 / resident:.1f}x '
          f'smaller than float32); leaves: {kinds["packed"]} packed, '
          f'{kinds["sparse"]} sparse, {kinds["dense"]} dense')


def classify(run: str, *, batch_size: int = 1000, num_test: int | None = None,
             data_dir: str | None = None) -> dict[str, Any]:
  """Test accuracy of the packed model of `run`."""
  from experiments.image import data  # pylint: disable=import-outside-toplevel
  config, model, params = load_run(run)
  with open(os.path.join(run, 'report.json')) as f:
    reported = json.load(f).get('table2', {}).get('finetuned')
  ds = data.load_dataset(config['data']['name'], data_dir=data_dir,
                         num_test=num_test)
  x, y = ds['test']
  run_fn = jax.jit(gmp_jax.packed_apply(
      lambda p, xb: model.apply({'params': p}, xb)))
  params = jax.device_put(params)
  correct = 0
  start = time.perf_counter()
  for i in range(0, len(x), batch_size):
    logits = run_fn(params, jnp.asarray(x[i:i + batch_size]))
    correct += int(np.sum(np.argmax(np.asarray(logits), -1)
                          == y[i:i + batch_size]))
  seconds = time.perf_counter() - start
  return {'accuracy': correct / len(x), 'examples': len(x),
          'reported_accuracy': reported, 'seconds': seconds,
          'resident': resident_line(params)}


def generate(run: str, *, prompt: bytes, length: int = 200,
             temperature: float = 0.8, seed: int = 0) -> bytes:
  """`length` bytes sampled from the packed language model of `run`."""
  if length < 0:
    raise ValueError(f'length must be >= 0, got {length}')
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0, got {temperature}')
  if not prompt:
    raise ValueError('the prompt must hold at least one byte')
  _, model, params = load_run(run)
  print(resident_line(params), file=sys.stderr, flush=True)
  context = int(model.config.context)
  params = jax.device_put(params)

  @jax.jit
  def next_byte(p, window, n, key):
    # window: (1, context) bytes, the last n of them real (left-aligned).
    logits = gmp_jax.packed_apply(
        lambda q, t: model.apply({'params': q}, t))(p, window)[0]
    last = jnp.take(logits, n - 1, axis=0)
    if temperature == 0:
      return jnp.argmax(last)
    return jax.random.categorical(key, last / temperature)

  out = list(prompt)
  key = jax.random.key(seed)
  for _ in range(length):
    tail = out[-context:]
    window = np.zeros((1, context), np.int32)
    window[0, :len(tail)] = tail
    key, sub = jax.random.split(key)
    out.append(int(next_byte(params, jnp.asarray(window), len(tail), sub)))
  return bytes(out[len(prompt):])


def _define_flags() -> None:
  flags.DEFINE_integer('batch_size', 1000, 'classify: test examples per call.')
  flags.DEFINE_integer('num_test', None,
                       'classify: the first N test examples (default: all).')
  flags.DEFINE_string('prompt', '\n', 'generate: the text to continue.')
  flags.DEFINE_integer('length', 200, 'generate: bytes to sample.')
  flags.DEFINE_float('temperature', 0.8, 'generate: 0 is greedy.')
  flags.DEFINE_integer('seed', 0, 'generate: sampling seed.')


def main(argv: list[str]) -> int:
  """`run_packed {classify,generate} RUN`: see the module docstring."""
  if len(argv) != 3 or argv[1] not in ('classify', 'generate'):
    raise app.UsageError('expected: classify RUN or generate RUN')
  args = flags.FLAGS
  command, run = argv[1], argv[2]
  try:
    if command == 'classify':
      r = classify(run, batch_size=args.batch_size,
                   num_test=args.num_test)
      print(r['resident'])
      reported = r['reported_accuracy']
      print(f'test accuracy {r["accuracy"]:.4%} on {r["examples"]:,} '
            f'examples in {r["seconds"]:.2f} s'
            + (f' (report.json: {reported:.4%})' if reported is not None
               else ''))
    else:
      text = generate(run, prompt=args.prompt.encode(),
                      length=args.length, temperature=args.temperature,
                      seed=args.seed)
      sys.stdout.write(args.prompt + text.decode('utf-8', 'replace') + '\n')
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
