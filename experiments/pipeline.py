"""The poster's compression pipeline (Figure 2), stage by stage.

teacher -> retrain with the mixture prior (end-to-end distillation, or
layer-wise: Figure 1) -> post-process (merge, prune, quantise) -> save the
compressed file -> report (tables, figures).

Each stage writes `<workdir>/<stage>/done.json` when it finishes and is
skipped on a rerun that finds it. Training stages checkpoint their
`TrainState` with Orbax every `config.checkpoint_every` steps and at every
epoch end; a killed run resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

import gmp_jax
from gmp_jax import codec
from gmp_jax import report as report_lib
from experiments import data as data_lib
from experiments import models
from experiments import plots

STAGES = ('teacher', 'retrain', 'postprocess', 'save', 'report')
COMPRESSED_FILE = 'model.gmpz'


# ----------------------------------------------------------------------------
# Small utilities
# ----------------------------------------------------------------------------


def write_json_atomic(path: str, obj: Any) -> None:
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(obj, f, indent=2, default=_jsonable)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _jsonable(x):
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f'not JSON serialisable: {type(x).__name__}')


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


class MetricsLog:
  """Appends one JSON record per line to `<workdir>/metrics.jsonl`."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')

  def write(self, record: dict[str, Any]) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps(record, default=_jsonable) + '\n')
      f.flush()

  def records(self) -> list[dict[str, Any]]:
    """The records, keeping the last one per (stage, step) after resumes."""
    if not os.path.exists(self.path):
      return []
    latest = {}
    with open(self.path) as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue  # A line cut short by a kill.
        latest[(rec.get('stage'), rec.get('step'))] = rec
    return list(latest.values())


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
  """Means over the scan axis of the scalar metrics."""
  out = {}
  for k, v in metrics.items():
    v = np.asarray(v)
    if v.ndim == 1:
      out[k] = float(v.mean())
  return out


def _stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage)


def _done_path(workdir: str, stage: str) -> str:
  return os.path.join(_stage_dir(workdir, stage), 'done.json')


def _flat(params) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float32))
                         for x in jax.tree.leaves(params)])


# ----------------------------------------------------------------------------
# Training loop shared by every stage
# ----------------------------------------------------------------------------


def train_loop(*, stage: str, workdir: str, state: gmp_jax.TrainState,
               scan_step, data: dict[str, jax.Array], num_epochs: int,
               batch_size: int, seed: int, config: ml_collections.ConfigDict,
               log: MetricsLog, eval_fn=None) -> gmp_jax.TrainState:
  """Trains `state` for `num_epochs`, checkpointing and resuming.

  Batches are drawn on the device from `data` (a dict of arrays with a
  leading example axis) by index arrays, `steps_per_dispatch` steps per
  call. The epoch's permutation depends only on (seed, stage, epoch), so a
  resumed run sees the same batches as an uninterrupted one.

  Raises:
    FloatingPointError: the loss became NaN or inf.
  """
  n = int(next(iter(data.values())).shape[0])
  if batch_size > n:
    raise ValueError(f'{stage}: batch_size {batch_size} exceeds the '
                     f'{n} training examples.')
  steps_per_epoch = n // batch_size
  total = num_epochs * steps_per_epoch
  chunk = max(1, int(config.steps_per_dispatch))
  ckpt_dir = os.path.abspath(os.path.join(_stage_dir(workdir, stage),
                                          'checkpoints'))
  manager = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(
          max_to_keep=2, create=True, enable_async_checkpointing=False))
  step = 0
  latest = manager.latest_step()
  if latest is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    step = int(latest)
    logging.info('%s: resumed from the checkpoint at step %d of %d.', stage,
                 step, total)
    print(f'{stage}: resuming from step {step}/{total}', flush=True)
  stage_seed = [seed, STAGES.index(stage)]
  last_saved = step
  epoch_metrics: list[dict[str, float]] = []
  bar = tqdm.tqdm(total=total, initial=step, desc=stage, unit='step',
                  dynamic_ncols=True, mininterval=2.0)
  try:
    while step < total:
      epoch, offset = divmod(step, steps_per_epoch)
      order = data_lib.epoch_batches(
          np.random.default_rng(stage_seed + [epoch]), n, batch_size)
      size = min(chunk, steps_per_epoch - offset)
      state, metrics = scan_step(state, data,
                                 jnp.asarray(order[offset:offset + size]))
      scalars = _scalars(metrics)
      if not all(math.isfinite(v) for v in scalars.values()):
        bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
        raise FloatingPointError(
            f'Stage {stage!r}: non-finite metrics {bad} in steps '
            f'{step + 1}-{step + size} (epoch {epoch + 1}). Lower the '
            'learning rates or tau; the run stops here and the last '
            'checkpoint is kept.')
      step += size
      epoch_metrics.append(scalars)
      bar.update(size)
      bar.set_postfix(loss=f"{scalars['loss']:.4g}")
      epoch_end = step % steps_per_epoch == 0
      if epoch_end or step - last_saved >= config.checkpoint_every:
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        last_saved = step
      if epoch_end:
        record = {'stage': stage, 'step': step, 'epoch': epoch + 1}
        for k in epoch_metrics[0]:
          record[k] = float(np.mean([m[k] for m in epoch_metrics]))
        epoch_metrics = []
        if eval_fn is not None:
          record.update(eval_fn(state))
        summary = record_summary(state.mixture, stage)
        record.update(summary)
        log.write(record)
        shown = ' '.join(f'{k}={v:.4g}' for k, v in record.items()
                         if k not in ('stage', 'step', 'epoch')
                         and isinstance(v, float))
        bar.write(f'{stage} epoch {epoch + 1}/{num_epochs}: {shown}')
  finally:
    bar.close()
    manager.close()
  return state


def record_summary(mixture: gmp_jax.GaussianMixture, stage: str
                   ) -> dict[str, Any]:
  if stage == 'teacher':
    return {}
  return {'mixture_means': np.asarray(mixture.means).tolist(),
          'mixture_stds': np.sqrt(np.asarray(mixture.variances)).tolist(),
          'mixture_pis': np.asarray(mixture.mixing_proportions).tolist()}


# ----------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------


def _load_data(config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  d = config.data
  return data_lib.load_dataset(
      d.name, source=d.source, data_dir=d.data_dir or None,
      num_train=d.num_train or None, num_test=d.num_test or None,
      seed=config.seed)


def _apply_fn(model_name: str):
  model = models.get_model(model_name)
  return lambda params, x: model.apply({'params': params}, x)


@functools.cache
def _eval_step(model_name: str):
  # One jitted eval step per model, shared by every stage and epoch.
  return gmp_jax.compile_step(gmp_jax.make_eval_step(_apply_fn(model_name)))


def _eval_fn(model_name: str, test, batch_size: int):
  eval_step = _eval_step(model_name)
  x, y = test
  return lambda params: gmp_jax.evaluate(eval_step, params, x, y,
                                         batch_size=batch_size)


def _state_eval_fn(model_name: str, test, batch_size: int, *, prune: bool):
  """Per-epoch test metrics; with `prune`, also of the quantised weights."""
  evaluate = _eval_fn(model_name, test, batch_size)

  def eval_fn(state: gmp_jax.TrainState) -> dict[str, float]:
    out = {f'test_{k}': v for k, v in evaluate(state.params).items()}
    if prune:
      q = gmp_jax.quantize(state.params, state.mixture)
      out['test_pruned_accuracy'] = evaluate(q)['accuracy']
      nonzero = sum(int(jnp.count_nonzero(x)) for x in jax.tree.leaves(q))
      size = sum(x.size for x in jax.tree.leaves(q))
      out['nonzero_fraction'] = nonzero / size
    return out

  return eval_fn


def _save_params(path: str, params) -> None:
  """Stores float params exactly (raw leaves) in the compressed format."""
  codec.save_compressed(path, jax.device_get(params), codebook_dtype=None)


def _load_params(path: str):
  params = codec.load_compressed(path)
  return jax.tree.map(jnp.asarray, params)


@contextlib.contextmanager
def _timed(times: dict[str, float], stage: str):
  start = time.perf_counter()
  yield
  times[stage] = time.perf_counter() - start


def run_teacher(config, workdir, dataset, log) -> tuple[Any, dict]:
  """Stage 1: trains the teacher with label cross-entropy."""
  done = _done_path(workdir, 'teacher')
  params_path = os.path.join(_stage_dir(workdir, 'teacher'), 'params.gmpz')
  if os.path.exists(done):
    logging.info('teacher: found %s, skipping.', done)
    return _load_params(params_path), read_json(done)
  start = time.perf_counter()
  tc = config.teacher
  x, y = dataset['train']
  steps = tc.epochs * (len(x) // tc.batch_size)
  params = models.init_params(config.model, jax.random.key(config.seed))
  schedule = optax.cosine_decay_schedule(tc.learning_rate, max(steps, 1),
                                         alpha=tc.decay_to)
  tx = gmp_jax.gmp_optimizer(weights=schedule, means=0.0, log_precisions=0.0,
                             mixing=0.0)
  mixture = gmp_jax.init_mixture(params, 2)  # Unused: the prior is off.
  state = gmp_jax.create_train_state(params, mixture, tx)
  step = gmp_jax.make_train_step(_apply_fn(config.model), tx, tau=0.0,
                                 dataset_size=len(x), use_prior=False)
  data = jax.device_put({'x': x, 'label': y})
  state = train_loop(
      stage='teacher', workdir=workdir, state=state,
      scan_step=gmp_jax.compile_step(gmp_jax.make_multi_step(step)), data=data,
      num_epochs=tc.epochs, batch_size=tc.batch_size, seed=config.seed,
      config=config, log=log,
      eval_fn=_state_eval_fn(config.model, dataset['test'],
                             config.eval_batch_size, prune=False))
  test = _eval_fn(config.model, dataset['test'],
                  config.eval_batch_size)(state.params)
  _save_params(params_path, state.params)
  result = {'test_accuracy': test['accuracy'],
            'test_cross_entropy': test['cross_entropy'],
            'wall_time_s': time.perf_counter() - start}
  write_json_atomic(done, result)
  print(f"teacher: test accuracy {test['accuracy']:.4f}", flush=True)
  return state.params, result


def _hyperpriors(rc) -> gmp_jax.Hyperpriors:
  return gmp_jax.Hyperpriors(
      zero_gamma=tuple(rc.zero_gamma) or None,
      gamma=tuple(rc.gamma) or None,
      zero_beta=tuple(rc.zero_beta) or None)


def _mixture_from_params(params, rc) -> gmp_jax.GaussianMixture:
  return gmp_jax.init_mixture(
      params, rc.num_components, init_std=rc.init_std,
      zero_proportion=rc.zero_proportion,
      learn_zero_proportion=rc.learn_zero_proportion)


def _retrain_optimizer(rc, lr_weights):
  return gmp_jax.gmp_optimizer(
      weights=lr_weights, means=rc.lr_means,
      log_precisions=rc.lr_log_precisions, mixing=rc.lr_mixing)


def _teacher_logits(model_name, params, x, batch_size):
  apply = jax.jit(_apply_fn(model_name))
  return np.concatenate([np.asarray(apply(params, x[i:i + batch_size]))
                         for i in range(0, len(x), batch_size)])


def _student(config, teacher_params):
  """The student's architecture and initial params (the teacher's if same)."""
  student = config.retrain.student or config.model
  if student == config.model:
    return student, teacher_params
  return student, models.init_params(student, jax.random.key(config.seed + 1))


def _end_to_end_step(config, teacher_params, dataset):
  """Train step and device data for end-to-end distillation."""
  rc = config.retrain
  x, y = dataset['train']
  student, _ = _student(config, teacher_params)
  data = {'x': x}
  if rc.distillation_weight > 0:
    data['teacher_logits'] = _teacher_logits(
        config.model, teacher_params, x, config.eval_batch_size)
  if rc.label_weight > 0 or 'teacher_logits' not in data:
    data['label'] = y
  tx = _retrain_optimizer(rc, rc.lr_weights)
  step = gmp_jax.make_train_step(
      _apply_fn(student), tx, tau=rc.tau, dataset_size=len(x),
      temperature=rc.temperature, distillation=rc.distillation,
      distillation_weight=rc.distillation_weight,
      label_weight=rc.label_weight, hyperpriors=_hyperpriors(rc))
  return tx, step, data


def _layerwise_step(config, teacher_params, dataset):
  """Every layer trained at once, each on the teacher's input to it.

  The data loss is the sum over layers of the MSE between the student
  block's output and the teacher's, each divided by the mean square of the
  teacher's output so that layers of different scales count equally.
  """
  rc = config.retrain
  x, _ = dataset['train']
  blocks = models.layer_blocks(config.model)
  teacher_params = jax.device_put(teacher_params)

  def apply_fn(params, xb):
    io = models.layer_io(config.model, teacher_params, xb)
    outputs = {b.name: b.apply(params[b.name],
                               jax.lax.stop_gradient(io[b.name][0]))
               for b in blocks}
    targets = {name: jax.lax.stop_gradient(out) for name, (_, out) in
               io.items()}
    return outputs, targets

  def data_loss_fn(outputs, batch):
    del batch
    student, teacher = outputs
    metrics, total = {}, 0.0
    for name in student:
      scale = jnp.mean(jnp.square(teacher[name])) + 1e-8
      mse = gmp_jax.mse_loss(student[name], teacher[name]) / scale
      metrics[f'rel_mse_{name}'] = mse
      total = total + mse
    return total, metrics

  tx = _retrain_optimizer(rc, rc.layerwise_lr_weights)
  step = gmp_jax.make_train_step(
      apply_fn, tx, tau=rc.tau, dataset_size=len(x),
      hyperpriors=_hyperpriors(rc), data_loss_fn=data_loss_fn)
  return tx, step, {'x': x}


def run_retrain(config, workdir, dataset, teacher_params, log):
  """Stage 2: retraining with the mixture prior (poster eq. 1)."""
  rc = config.retrain
  done = _done_path(workdir, 'retrain')
  stage_dir = _stage_dir(workdir, 'retrain')
  if rc.mode not in ('end_to_end', 'layerwise'):
    raise ValueError(f"retrain.mode must be 'end_to_end' or 'layerwise', got "
                     f'{rc.mode!r}.')
  if rc.mode == 'layerwise' and rc.student not in ('', config.model):
    raise ValueError('Layer-wise distillation needs the teacher architecture '
                     f'for the student; got student={rc.student!r}.')
  student, params = _student(config, teacher_params)
  if os.path.exists(done):
    logging.info('retrain: found %s, skipping.', done)
    result = read_json(done)
    loaded = codec.load_compressed(
        os.path.join(stage_dir, 'state.gmpz'), with_metadata=True)
    state_params, meta = loaded
    mixture = _mixture_from_params(params, rc)
    mixture = mixture.replace(
        nonzero_means=jnp.asarray(meta['nonzero_means']),
        log_precisions=jnp.asarray(meta['log_precisions']),
        mixing_logits=jnp.asarray(meta['mixing_logits']))
    return student, params, jax.tree.map(jnp.asarray, state_params), \
        mixture, result
  start = time.perf_counter()
  builder = _end_to_end_step if rc.mode == 'end_to_end' else _layerwise_step
  tx, step, data = builder(config, teacher_params, dataset)
  mixture = _mixture_from_params(params, rc)
  state = gmp_jax.create_train_state(params, mixture, tx)
  evaluate = _eval_fn(student, dataset['test'], config.eval_batch_size)
  state = train_loop(
      stage='retrain', workdir=workdir, state=state,
      scan_step=gmp_jax.compile_step(gmp_jax.make_multi_step(step)), data=jax.device_put(data),
      num_epochs=rc.epochs, batch_size=rc.batch_size, seed=config.seed,
      config=config, log=log,
      eval_fn=_state_eval_fn(student, dataset['test'],
                             config.eval_batch_size, prune=True))
  test = evaluate(state.params)
  codec.save_compressed(
      os.path.join(stage_dir, 'state.gmpz'), jax.device_get(state.params),
      codebook_dtype=None,
      metadata={'nonzero_means': np.asarray(state.mixture.nonzero_means),
                'log_precisions': np.asarray(state.mixture.log_precisions),
                'mixing_logits': np.asarray(state.mixture.mixing_logits)})
  result = {'test_accuracy': test['accuracy'], 'student': student,
            'mode': rc.mode, 'wall_time_s': time.perf_counter() - start}
  write_json_atomic(done, result)
  print(f"retrain ({rc.mode}): test accuracy before pruning "
        f"{test['accuracy']:.4f}", flush=True)
  return student, params, state.params, state.mixture, result


def run_postprocess(config, workdir, dataset, student, params, mixture):
  """Stage 3: merge components, prune and quantise; evaluate."""
  start = time.perf_counter()
  merged = gmp_jax.merge_components(
      mixture, threshold=config.postprocess.merge_threshold)
  quantized = jax.block_until_ready(gmp_jax.quantize(params, merged))
  test = _eval_fn(student, dataset['test'],
                  config.eval_batch_size)(quantized)
  result = {'test_accuracy': test['accuracy'],
            'components_before_merge': mixture.num_components,
            'components_after_merge': merged.num_components,
            'wall_time_s': time.perf_counter() - start}
  write_json_atomic(_done_path(workdir, 'postprocess'), result)
  print(f"postprocess: {mixture.num_components} -> {merged.num_components} "
        f"components, pruned test accuracy {test['accuracy']:.4f}",
        flush=True)
  return merged, quantized, result


def layer_table(quantized) -> list[dict[str, Any]]:
  """Table 1 rows: one per top-level layer (kernel and bias together)."""
  rows = []
  for layer, sub in quantized.items():
    leaves = {k: np.asarray(v) for k, v in sub.items()}
    values = np.concatenate([v.ravel().astype(np.float32)
                             for v in leaves.values()])
    nonzero = values[values != 0]
    kernel = leaves.get('kernel', next(iter(leaves.values())))
    rows.append({'layer': layer, 'shape': list(kernel.shape),
                 'parameters': int(values.size),
                 'nonzero': int(nonzero.size),
                 'sparsity': 1.0 - nonzero.size / values.size,
                 'distinct_values': int(np.unique(nonzero).size)})
  n = sum(r['parameters'] for r in rows)
  nz = sum(r['nonzero'] for r in rows)
  all_values = _flat(quantized)
  rows.append({'layer': 'total', 'shape': None, 'parameters': n,
               'nonzero': nz, 'sparsity': 1.0 - nz / n,
               'distinct_values': int(np.unique(
                   all_values[all_values != 0]).size)})
  return rows


def run_save(config, workdir, quantized, merged, student):
  """Stage 4: the compressed file and its size report."""
  start = time.perf_counter()
  path = os.path.join(workdir, COMPRESSED_FILE)
  metadata = {'model': student,
              'mixture_means': np.asarray(merged.means),
              'mixture_variances': np.asarray(merged.variances),
              'mixture_proportions': np.asarray(merged.mixing_proportions)}
  codec.save_compressed(path, jax.device_get(quantized), metadata=metadata,
                        codebook_dtype=config.postprocess.codebook_dtype)
  size_report = report_lib.compression_report(path=path)
  return path, size_report, time.perf_counter() - start


def _fmt(value, spec: str) -> str:
  return 'n/a' if value is None else format(value, spec)


def _markdown(report: dict[str, Any], size_markdown: str) -> str:
  t2 = report['table2']
  lines = ['# MNIST soft weight-sharing report', '',
           f"Mode: `{report['config']['retrain']['mode']}`, student "
           f"`{report['student']}`.", '',
           '## Table 1: sparsity', '',
           '| Layer | Shape | Parameters | Sparsity | Distinct values |',
           '|---|---|---:|---:|---:|']
  for r in report['table1']:
    shape = '' if r['shape'] is None else str(tuple(r['shape']))
    name = '**Total**' if r['layer'] == 'total' else r['layer']
    lines.append(f"| {name} | {shape} | {r['parameters']:,} | "
                 f"{100 * r['sparsity']:.2f}% | {r['distinct_values']} |")
  lines += ['', '## Table 2: test accuracy', '',
            '| | Original | Retrained | Pruned |', '|---|---:|---:|---:|',
            f"| Accuracy | {100 * t2['original']:.2f}% | "
            f"{100 * t2['retrained']:.2f}% | {100 * t2['pruned']:.2f}% |", '',
            '## Compressed file', '',
            f"`{report['compressed_file']}`: {report['file_bytes']:,} bytes, "
            f"CR_file {_fmt(report['cr_file'], '.1f')}x, "
            f"CR_Han {_fmt(report['cr_han'], '.1f')}x, "
            f"non-zero fraction {100 * report['nonzero_fraction']:.3f}%.", '',
            size_markdown, '',
            '## Wall time (s)', '']
  lines += [f'- {k}: {v:.1f}' for k, v in report['wall_time_s'].items()]
  lines += ['', '## Figures', '']
  lines += [f'![{k}]({v})' for k, v in report['figures'].items()]
  return '\n'.join(lines) + '\n'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict[str, Any]:
  """Runs every stage; returns the report (also written to the workdir)."""
  os.makedirs(workdir, exist_ok=True)
  log = MetricsLog(workdir)
  total_start = time.perf_counter()
  times: dict[str, float] = {}
  with _timed(times, 'data'):
    dataset = _load_data(config)
  teacher_params, teacher = run_teacher(config, workdir, dataset, log)
  times['teacher'] = teacher['wall_time_s']
  student, initial, params, mixture, retrain = run_retrain(
      config, workdir, dataset, teacher_params, log)
  times['retrain'] = retrain['wall_time_s']
  merged, quantized, post = run_postprocess(config, workdir, dataset,
                                            student, params, mixture)
  times['postprocess'] = post['wall_time_s']
  path, size_report, times['save'] = run_save(config, workdir, quantized,
                                              merged, student)
  start = time.perf_counter()
  fig_dir = os.path.join(workdir, 'figures')
  figures = {
      'retraining_clustering': plots.plot_retraining_clustering(
          _flat(initial), _flat(params), np.asarray(merged.means),
          np.asarray(merged.variances),
          os.path.join(fig_dir, 'retraining_clustering.png'),
          mixing_proportions=np.asarray(merged.mixing_proportions)),
      'model_weights': plots.plot_model_weights(
          jax.device_get(quantized),
          os.path.join(fig_dir, 'model_weights.png')),
      'training_curves': plots.plot_training_curves(
          log.records(), os.path.join(fig_dir, 'training_curves.png')),
  }
  figures = {k: os.path.relpath(v, workdir) for k, v in figures.items()}
  times['report'] = time.perf_counter() - start
  size = size_report.to_dict()
  totals = size['totals']
  table1 = layer_table(jax.device_get(quantized))
  report = {
      'table1': table1,
      'table2': {'original': teacher['test_accuracy'],
                 'retrained': retrain['test_accuracy'],
                 'pruned': post['test_accuracy']},
      'student': student,
      'compressed_file': os.path.relpath(path, workdir),
      'file_bytes': totals['file_bytes'],
      'cr_file': totals['cr_file'],
      'cr_han': totals['cr_han'],
      'nonzero_fraction': table1[-1]['nonzero'] / table1[-1]['parameters'],
      'components': {'before_merge': post['components_before_merge'],
                     'after_merge': post['components_after_merge']},
      'size_report': size,
      'wall_time_s': {**times,
                      'total_this_invocation': time.perf_counter()
                      - total_start},
      'config': config.to_dict(),
      'figures': figures,
  }
  write_json_atomic(os.path.join(workdir, 'report.json'), report)
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(_markdown(report, size_report.to_markdown()))
  print(f"done: pruned accuracy {100 * report['table2']['pruned']:.2f}%, "
        f"non-zero {100 * report['nonzero_fraction']:.3f}%, "
        f"{report['file_bytes']:,} bytes "
        f"(CR_file {_fmt(report['cr_file'], '.1f')}x)",
        flush=True)
  return report
