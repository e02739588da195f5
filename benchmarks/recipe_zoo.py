"""README's recipe, defaults only, on several model families.

  python -m benchmarks.recipe_zoo --json=results/zoo.json
  python -m benchmarks.recipe_zoo --families=mlp,cnn --smoke   # seconds
  python -m benchmarks.recipe_zoo \\
      --tables_from=results/zoo.json,results/zoo_leaf_scale.json,results/zoo_shared.json
  python -m benchmarks.recipe_zoo --max_components=0 --json=nocap.json

Each family trains a float teacher, then runs "Compress your own model" with
the library's defaults and nothing tuned: `init_mixture(teacher, 17)`
(per-leaf scales), tau by `calibrate_tau` at the default ratio,
`gmp_optimizer()`, KL distillation (`LossOptions().data_loss()`),
`merge_components` + `quantize`, straight-through fine-tuning of each leaf's
values (`codebook_from_quantized(quantized, merged)`), `save_compressed`.
Only the data, the model and the epoch budgets are the family's own
(`FAMILIES`).

Families (all Flax NNX):
  mlp          LeNet-300-100 on MNIST
  cnn          Flax's NNX example CNN with BatchNorm and Dropout, on MNIST
  gru          a GRU reading MNIST images row by row
  transformer  the byte-level Shakespeare transformer (experiments.language)

It reports, per family, the metric of the float teacher, of the quantised
retrained weights (no fine-tuning: what a user who skips it gets), and of
the fine-tuned file reloaded, on the validation split (the last 5,000
training images; Shakespeare's validation bytes) and on the test split;
the kept fraction of the covered weights, the values per leaf and CR_file.
Defaults are judged on the validation figures; the test figures are
reported once. `--leaf_scale=none` runs the same with one mixture in
weight units (`init_mixture(..., leaf_scale=None)`, the default before
per-leaf scales);
`--tau_ratio` is `calibrate_tau`'s ratio (default 0.05, the library's);
`--zero_proportion=0.99` fixes the zero component's share as the published
recipe does (`init_mixture(..., zero_proportion=0.99)`). `--smoke` runs
every stage on a few hundred examples with narrower models (CI).

`--max_components` is `merge_components`' cap on the values per leaf (zero
included): by default the library's, 16 (4-bit indices); `0` turns the cap
off. Each family's figures record it (`max_components`, null = no cap), so
running the zoo both ways measures what the cap costs.
`results/zoo.json` is the defaults (per-leaf scales, capped at 16),
`results/zoo_leaf_scale.json` the same with `--max_components=0`, and
`results/zoo_shared.json` one mixture (run before per-leaf scales became
the default, as with `--leaf_scale=none`; `results/zoo_uncapped.json` is
that without the cap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import dataclasses
import inspect
import json
import os
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gmp_jax
from gmp_jax.calibration import DEFAULT_RATIO
from gmp_jax.flax import nnx_apply
from experiments.infra import cli
from experiments.infra import jsonio

FLAGS = flags.FLAGS
NUM_COMPONENTS = 17
VALID_IMAGES = 5_000
# merge_components' default cap on the values per leaf (16: 4-bit indices).
LIBRARY_MAX_COMPONENTS = inspect.signature(
    gmp_jax.merge_components).parameters['max_components'].default
# init_mixture's default leaf scale ('rms': per-leaf scales).
LIBRARY_LEAF_SCALE = inspect.signature(
    gmp_jax.init_mixture).parameters['leaf_scale'].default


# ------------------------------------------------------------------ models --


class MLP(nnx.Module):
  """LeNet-300-100."""

  def __init__(self, rngs, widths=(300, 100)):
    sizes = (784, *widths, 10)
    self.layers = getattr(nnx, 'List', list)(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)


class CNN(nnx.Module):
  """Flax's NNX MNIST example CNN, with BatchNorm and Dropout added."""

  def __init__(self, rngs, channels=(32, 64), hidden=256):
    c1, c2 = channels
    self.conv1 = nnx.Conv(1, c1, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(c1, rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (3, 3), rngs=rngs)
    self.bn2 = nnx.BatchNorm(c2, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.linear1 = nnx.Linear(7 * 7 * c2, hidden, rngs=rngs)
    self.linear2 = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x):
    pool = lambda h: nnx.avg_pool(h, (2, 2), strides=(2, 2))
    x = pool(nnx.relu(self.bn1(self.conv1(x))))
    x = pool(nnx.relu(self.bn2(self.conv2(x))))
    x = self.dropout(x.reshape((x.shape[0], -1)))
    return self.linear2(nnx.relu(self.linear1(x)))


class GRU(nnx.Module):
  """A GRU over the image's 28 rows; the last hidden state classifies."""

  def __init__(self, rngs, hidden=128):
    self.rnn = nnx.RNN(nnx.GRUCell(28, hidden, rngs=rngs))
    self.head = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x):
    return self.head(self.rnn(x.reshape((x.shape[0], 28, 28)))[:, -1])


# -------------------------------------------------------------- families --


@dataclasses.dataclass(frozen=True)
class Family:
  """A model, its data and its budgets; the recipe is the same for all.

  Attributes:
    model: `(rngs, smoke) -> nnx.Module`.
    data: `smoke -> {'train', 'valid', 'test'}` of `(x, y)` NumPy arrays.
    metric: 'accuracy' (higher is better) or 'bits_per_byte' (lower).
    teacher_epochs, retrain_epochs, finetune_epochs: epoch budgets.
    batch_size: training batch size.
    teacher_lr: the teacher's Adam learning rate (cosine decay).
    tokens: N counts tokens (sequence models), not examples.
  """
  model: Callable[[nnx.Rngs, bool], nnx.Module]
  data: Callable[[bool], dict[str, tuple[np.ndarray, np.ndarray]]]
  metric: str
  teacher_epochs: int
  retrain_epochs: int
  finetune_epochs: int = 1
  batch_size: int = 128
  teacher_lr: float = 1e-3
  tokens: bool = False


def _mnist(smoke: bool):
  from experiments.image import data as image_data  # pylint: disable=g-import-not-at-top
  if smoke:
    ds = image_data.load_dataset('mnist', num_train=768, num_test=256)
    (x, y), test = ds['train'], ds['test']
    return {'train': (x[:512], y[:512]), 'valid': (x[512:], y[512:]),
            'test': test}
  ds = image_data.load_dataset('mnist')
  (x, y), test = ds['train'], ds['test']
  cut = len(x) - VALID_IMAGES
  return {'train': (x[:cut], y[:cut]), 'valid': (x[cut:], y[cut:]),
          'test': test}


def _shakespeare(smoke: bool):
  from experiments.language import data as lm_data  # pylint: disable=g-import-not-at-top
  from experiments.language import task as lm_task  # pylint: disable=g-import-not-at-top
  seq_len = 64 if smoke else lm_task.SEQ_LEN
  if smoke:
    with open(lm_task.SAMPLE_PATH, 'rb') as f:
      sample = np.frombuffer(f.read(), np.uint8)
    splits = lm_data.split_corpus(sample, valid_fraction=0.1,
                                  test_fraction=0.1)
  else:
    splits = lm_data.load_splits()
  return {name: lm_data.eval_windows(getattr(splits, name), seq_len)
          for name in ('train', 'valid', 'test')}


def _transformer(rngs, smoke):
  from experiments.language import transformer  # pylint: disable=g-import-not-at-top
  config = (transformer.TransformerConfig(num_layers=1, d_model=32,
                                          num_heads=2, mlp_dim=64, context=64)
            if smoke else transformer.TransformerConfig())
  return transformer.Transformer(config, rngs=rngs)


FAMILIES: dict[str, Family] = {
    'mlp': Family(
        model=lambda rngs, smoke: MLP(rngs, (32, 16) if smoke else (300, 100)),
        data=_mnist, metric='accuracy', teacher_epochs=5, retrain_epochs=5),
    'cnn': Family(
        model=lambda rngs, smoke: CNN(rngs, *(((4, 8), 16) if smoke else ())),
        data=_mnist, metric='accuracy', teacher_epochs=1, retrain_epochs=3),
    'gru': Family(
        model=lambda rngs, smoke: GRU(rngs, 8 if smoke else 128),
        data=_mnist, metric='accuracy', teacher_epochs=3, retrain_epochs=3),
    'transformer': Family(
        model=_transformer, data=_shakespeare, metric='bits_per_byte',
        teacher_epochs=4, retrain_epochs=1, batch_size=32, teacher_lr=3e-3,
        tokens=True),
}


# ---------------------------------------------------------------- the run --


def _batches(x, y, batch_size: int, rng: np.random.Generator | None
             ) -> Iterator[dict[str, np.ndarray]]:
  """Shuffled full batches (rng) or every example in order (rng None)."""
  if rng is None:
    for i in range(0, len(x), batch_size):
      yield {'x': x[i:i + batch_size], 'label': y[i:i + batch_size]}
    return
  order = rng.permutation(len(x))
  for i in range(0, len(x) - batch_size + 1, batch_size):
    idx = order[i:i + batch_size]
    yield {'x': x[idx], 'label': y[idx]}


def _metric_fn(metric: str):
  """`(logits, labels) -> (sum over examples or tokens, count)`."""
  def fn(logits, labels):
    if metric == 'accuracy':
      hits = jnp.argmax(logits, -1) == labels
      return hits.sum().astype(jnp.float32), labels.size
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return ce.sum() / np.log(2), labels.size
  return fn


def _evaluator(predict, metric: str, split, batch_size: int = 500):
  """`(params, model_state) -> metric` over a whole split."""
  total = _metric_fn(metric)
  batch_total = jax.jit(lambda p, m, x, y: total(predict(p, m, x), y)[0])

  def evaluate(params, model_state) -> float:
    s = sum(float(batch_total(params, model_state, b['x'], b['label']))
            for b in _batches(*split, batch_size, None))
    return s / split[1].size

  return evaluate


def _train_teacher(family, apply_fn, params, model_state, data, seed, log,
                   epochs):
  """Adam with cosine decay on the label cross-entropy."""
  steps = epochs * (len(data['train'][0]) // family.batch_size)
  tx = optax.adam(optax.cosine_decay_schedule(family.teacher_lr, steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, model_state, opt_state, batch, key):
    def loss(p):
      logits, new_state = apply_fn(p, model_state, batch['x'], train=True,
                                   rng=key)
      ce = optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['label']).mean()
      return ce, new_state
    grads, model_state = jax.grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), model_state, opt_state

  rng, i = np.random.default_rng(seed), 0
  for epoch in range(epochs):
    for batch in _batches(*data['train'], family.batch_size, rng):
      params, model_state, opt_state = step(
          params, model_state, opt_state, batch,
          jax.random.fold_in(jax.random.key(seed), i))
      i += 1
    log(f'teacher epoch {epoch + 1}/{epochs}')
  return params, model_state


def _values_per_leaf(quantized, params) -> int:
  """Most distinct values (zero included) in one quantised leaf.

  `quantize` passes the uncovered leaves through, so the quantised leaves
  are those that differ from `params`.
  """
  return max(len(np.unique(np.asarray(q))) for q, w in
             zip(jax.tree.leaves(quantized), jax.tree.leaves(params))
             if not np.array_equal(np.asarray(q), np.asarray(w)))


def max_components_of(flag: int) -> int | None:
  """The `--max_components` flag as `merge_components`' argument: 0 = None."""
  if flag == 1 or flag < 0:
    raise ValueError('--max_components must be 0 (no cap) or >= 2 (the '
                     f'zero value and one other), got {flag}.')
  return None if flag == 0 else flag


def run_family(name: str, *, smoke: bool = False, seed: int = 0,
               leaf_scale: str | None = LIBRARY_LEAF_SCALE,
               zero_proportion: float | None = None,
               max_components: int | None = LIBRARY_MAX_COMPONENTS,
               tau_ratio: float = DEFAULT_RATIO,
               workdir: str | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
  """README's recipe on one family; returns its figures (see the docstring).

  `max_components` is `merge_components`' cap (None: none). The compressed
  file is written to `workdir/<name>.gmpz` (a temporary directory when
  None, removed afterwards).
  """
  family = FAMILIES[name]
  say = lambda msg: log(f'[{name}] {msg}')
  start = time.time()
  data = family.data(smoke)
  model = family.model(nnx.Rngs(params=seed, dropout=seed + 1), smoke)
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  apply_fn = nnx_apply(graphdef, rng_streams=('dropout', 'carry'))
  # Smoke runs one epoch of each stage: compilation is most of their time.
  epochs = lambda e: 1 if smoke else e
  params, model_state = _train_teacher(family, apply_fn, params, model_state,
                                       data, seed, say,
                                       epochs(family.teacher_epochs))
  teacher, teacher_state = params, model_state
  # Inference runs in eval mode; the state (BatchNorm statistics) is an
  # argument, never a traced-in constant, as retraining changes it.
  predict = lambda p, m, x: apply_fn(p, m, x, train=False)[0]
  evals = {s: _evaluator(predict, family.metric, data[s])
           for s in ('valid', 'test')}
  measure = lambda p, m: {s: evals[s](p, m) for s in evals}
  figures: dict[str, Any] = {'family': name, 'metric': family.metric,
                             'teacher': measure(teacher, teacher_state)}
  say(f'teacher {figures["teacher"]}')

  logits_of = jax.jit(predict)
  def with_teacher(batch):
    return dict(batch, teacher_logits=logits_of(teacher, teacher_state,
                                                batch['x']))

  x_train, y_train = data['train']
  n = int(y_train.size) if family.tokens else len(x_train)

  # 1-2. The prior from the weights, tau by the rule.
  mixture = gmp_jax.init_mixture(teacher, NUM_COMPONENTS,
                                 leaf_scale=leaf_scale,
                                 zero_proportion=zero_proportion)
  data_loss = gmp_jax.LossOptions().data_loss()
  probe = [with_teacher(b) for b in
           _batches(x_train, y_train, family.batch_size, np.random.default_rng(
               seed))][:8]
  scales = gmp_jax.gradient_scales(
      lambda p, b: data_loss(predict(p, teacher_state, b['x']), b)[0],
      teacher, mixture,
      probe)
  tau = gmp_jax.calibrate_tau(scales, dataset_size=n, ratio=tau_ratio)
  figures['tau'] = float(tau)
  initial = gmp_jax.quantize(teacher, mixture)
  figures['quantized_initial'] = measure(initial, teacher_state)

  # 3. Retraining.
  tx = gmp_jax.gmp_optimizer()
  state = gmp_jax.create_train_state(teacher, mixture, tx,
                                     model_state=teacher_state)
  step = gmp_jax.compile_step(gmp_jax.make_train_step(
      apply_fn, tx, tau=tau, dataset_size=n, stateful=True, seed=seed))
  rng = np.random.default_rng(seed + 1)
  for epoch in range(epochs(family.retrain_epochs)):
    for batch in _batches(x_train, y_train, family.batch_size, rng):
      state, metrics = step(state, with_teacher(batch))
    if not np.isfinite(float(metrics['loss'])):
      raise FloatingPointError(f'{name}: retraining diverged at epoch '
                               f'{epoch + 1}.')
    say(f'retrain epoch {epoch + 1}/{epochs(family.retrain_epochs)} '
        f'loss {float(metrics["loss"]):.4f}')
  # The retrained model, its quantisation and fine-tuning use the retrained
  # BatchNorm statistics.
  student_state = state.model_state
  figures['retrained'] = measure(state.params, student_state)

  # 4. Merge, prune, quantise.
  merged = gmp_jax.merge_components(state.mixture,
                                    max_components=max_components)
  figures['max_components'] = max_components
  quantized = gmp_jax.quantize(state.params, merged)
  figures['quantized'] = measure(quantized, student_state)
  figures['kept'] = gmp_jax.diagnose(state.params, merged,
                                     warn=False).nonzero_fraction
  figures['values_per_leaf'] = _values_per_leaf(quantized, state.params)
  say(f'quantized {figures["quantized"]} kept {figures["kept"]:.4f}')

  # 5. Straight-through fine-tuning of the shared values, mask fixed.
  # Under per-leaf scales each leaf snaps to its own values only.
  codebook, _, mask = gmp_jax.codebook_from_quantized(quantized, merged)
  ft_tx = optax.adam(1e-4)
  ft = gmp_jax.create_straight_through_state(
      gmp_jax.masked_latent(state.params, mask), codebook, mask, ft_tx,
      frozen=quantized)
  ft_step = gmp_jax.compile_step(gmp_jax.make_straight_through_step(
      lambda p, x: predict(p, student_state, x), ft_tx))
  for _ in range(epochs(family.finetune_epochs)):
    for batch in _batches(x_train, y_train, family.batch_size, rng):
      ft, _ = ft_step(ft, with_teacher(batch))
  finetuned = ft.quantized_params()

  # 6. The file, reloaded.
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(workdir or tmp, f'{name}.gmpz')
    stats = nnx.to_pure_dict(
        nnx.split_state(student_state, nnx.BatchStat, ...)[0])
    gmp_jax.save_compressed(path, nnx.to_pure_dict(finetuned),
                            metadata={'batch_stats': stats} if stats else None)
    loaded = gmp_jax.load_compressed(path)
    totals = gmp_jax.compression_report(path=path).totals()
  weights = nnx.state(nnx.merge(graphdef, teacher, student_state), nnx.Param)
  nnx.replace_by_pure_dict(weights, loaded)
  figures['finetuned'] = measure(weights, student_state)
  figures['file_bytes'] = int(totals['file_bytes'])
  figures['cr_file'] = float(totals['cr_file'])
  figures['parameters'] = int(sum(x.size for x in jax.tree.leaves(teacher)))
  figures['seconds'] = round(time.time() - start, 1)
  say(f'finetuned {figures["finetuned"]} file {figures["file_bytes"]} B '
      f'({figures["cr_file"]:.1f}x) in {figures["seconds"]} s')
  return figures


def run(families: Sequence[str], *, smoke: bool = False, seed: int = 0,
        leaf_scale: str | None = LIBRARY_LEAF_SCALE,
        zero_proportion: float | None = None,
        max_components: int | None = LIBRARY_MAX_COMPONENTS,
        tau_ratio: float = DEFAULT_RATIO,
        workdir: str | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown:
    raise ValueError(f'Unknown families {unknown}; choose from '
                     f'{sorted(FAMILIES)}.')
  return {'command': 'python -m benchmarks.recipe_zoo', 'smoke': smoke,
          'seed': seed, 'leaf_scale': leaf_scale,
          'zero_proportion': zero_proportion,
          'max_components': max_components, 'tau_ratio': tau_ratio,
          'versions': {'jax': jax.__version__},
          'families': {f: run_family(f, smoke=smoke, seed=seed,
                                     leaf_scale=leaf_scale,
                                     zero_proportion=zero_proportion,
                                     max_components=max_components,
                                     tau_ratio=tau_ratio,
                                     workdir=workdir, log=log)
                       for f in families}}


def _rows(reports, middle):
  """Table rows: family, leaf_scale, cap, `middle(f, fmt)` cells, kept,
  CR_file. A report without `max_components` predates the cap: none."""
  for report in reports:
    cap = report.get('max_components')
    for name, f in report['families'].items():
      fmt = ((lambda v: f'{100 * v:.2f}%') if f['metric'] == 'accuracy'
             else (lambda v: f'{v:.4f}'))
      # A report without the key predates per-leaf scales: one mixture.
      start = str(report.get('leaf_scale') or 'none')
      if start == LIBRARY_LEAF_SCALE:
        start += ' (default)'
      if report.get('zero_proportion') is not None:
        start += f", pi_0 {report['zero_proportion']} fixed"
      ratio = report.get('tau_ratio', DEFAULT_RATIO)
      if ratio != DEFAULT_RATIO:
        start += f', tau ratio {ratio:g}'
      cells = [name, start,
               'none' if cap is None else str(cap),
               *middle(f, fmt), f'{100 * f["kept"]:.2f}%',
               f'{f["cr_file"]:.1f}x']
      yield '| ' + ' | '.join(cells) + ' |'


def format_table(*reports: dict[str, Any]) -> str:
  """README's table: one row per family and report (e.g. default, 'rms')."""
  head = ['| family | leaf_scale | values cap | metric (test) | teacher | '
          'quantised, no fine-tuning | fine-tuned file | kept | CR_file |',
          '|---|---|---:|---|---:|---:|---:|---:|---:|']
  return '\n'.join(head + list(_rows(reports, lambda f, fmt: (
      f['metric'], *(fmt(f[s]['test'])
                     for s in ('teacher', 'quantized', 'finetuned'))))))


def stages_table(*reports: dict[str, Any]) -> str:
  """Every stage on the validation split, with tau, kept and CR_file."""
  stages = ('teacher', 'quantized_initial', 'retrained', 'quantized',
            'finetuned')
  head = ['| family | leaf_scale | values cap | tau (rule) | '
          + ' | '.join(stages) + ' | kept | CR_file |',
          '|---|---|' + '---:|' * (len(stages) + 4)]
  return '\n'.join(head + list(_rows(reports, lambda f, fmt: (
      f'{f["tau"]:.3f}', *(fmt(f[s]['valid']) for s in stages)))))


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.tables_from:
    reports = []
    for path in FLAGS.tables_from:
      with open(path) as f:
        reports.append(json.load(f))
    print(format_table(*reports), stages_table(*reports), sep='\n\n')
    return 0
  cap = max_components_of(FLAGS.max_components)
  report = run(FLAGS.families, smoke=FLAGS.smoke, seed=FLAGS.seed,
               leaf_scale=(None if FLAGS.leaf_scale == 'none'
                           else FLAGS.leaf_scale),
               zero_proportion=FLAGS.zero_proportion, max_components=cap,
               tau_ratio=FLAGS.tau_ratio, workdir=FLAGS.workdir)
  report['command'] = cli.command('benchmarks.recipe_zoo')
  print(format_table(report))
  if FLAGS.json:
    jsonio.write_json_atomic(FLAGS.json, report)
  return 0


def _define_flags():
  flags.DEFINE_list('families', list(FAMILIES), 'Families to run.')
  flags.DEFINE_bool('smoke', False, 'A few hundred examples, narrow models.')
  flags.DEFINE_integer('seed', 0, 'Seed of the teacher, data order and '
                       'dropout.')
  flags.DEFINE_string('json', None, 'Write the figures here.')
  flags.DEFINE_string('leaf_scale', LIBRARY_LEAF_SCALE,
                      "init_mixture's leaf_scale: 'rms' (the library's "
                      "default), or 'none' for one mixture in weight units.")
  flags.DEFINE_float('zero_proportion', None, "init_mixture's zero_proportion "
                     '(e.g. 0.99, fixed as in the published recipe); None: '
                     'the library default (learned, from the weights).')
  flags.DEFINE_integer('max_components', LIBRARY_MAX_COMPONENTS,
                       "merge_components' cap on the values per leaf, zero "
                       'included (the library default: 4-bit indices); 0: '
                       'no cap.', lower_bound=0)
  flags.DEFINE_float('tau_ratio', DEFAULT_RATIO,
                     "calibrate_tau's ratio rho (the library default).",
                     lower_bound=0.0)
  flags.DEFINE_string('workdir', None, 'Keep each family\'s file here.')
  flags.DEFINE_list('tables_from', [], 'Only print the tables of these '
                    'JSON reports (test split; every stage on validation).')


if __name__ == '__main__':
  cli.run(_define_flags, main)
