"""The poster's compression pipeline (Figure 2), stage by stage.

teacher -> retrain with the mixture prior (`experiments.retraining.MODES`:
end-to-end distillation, or layer-wise as in Figure 1) -> post-process
(merge, prune, quantise) -> fine-tune the codebook (optional,
`experiments.finetuning`) -> lossless structural cleanup
(`experiments.cleanup`) -> save the compressed file -> report (tables,
figures).

`STAGES` maps each stage's name to a function `stage(ctx) -> record` that
reads what earlier stages left in the workdir, writes its own outputs there
and returns a JSON record. `run_stage` is the one place that runs them: it
times the stage, writes the record as `<workdir>/<stage>/done.json` after
the outputs, and skips a stage whose record and outputs exist unless an
earlier stage ran in the same invocation. Stages talk only through the
workdir (`experiments.workdir_layout`), so a skipped stage needs nothing
but its files:

  teacher/params.gmpz          teacher weights (raw float leaves)
  teacher/checkpoints/         Orbax checkpoints while training
  retrain/state.gmpz           retrained weights + mixture (metadata)
  retrain/checkpoints/
  postprocess/quantized.gmpz   merged, pruned, quantised weights + mixture
  finetune/quantized.gmpz      the same with fine-tuned shared values
  finetune/checkpoints/
  cleanup/quantized.gmpz       the same without dead and unread units
  model.gmpz                   the compressed file
  report.json, report.md, figures/, metrics.jsonl

Before any stage runs, `config_check.check_config` validates the whole
config once and resolves the model, dataset and task it names
(`experiments.registry`); the stages take what depends on the problem
(training arrays, loss, evaluation, metric names) from the task
(`experiments.tasks`), and every training stage's seeds from its name
(`experiments.stage_seeds`). Training stages checkpoint their `TrainState`
with Orbax (`experiments.loop`); a killed run resumes from the last
checkpoint.

On a mesh (`config.mesh`, `experiments.distributed`) the training stages
run data-parallel (or FSDP) over every device of every process. All
processes run every stage that computes on the mesh; process 0 alone
writes the workdir's files (the others write only their checkpoint shards)
and runs the host-only stages (`save`, `report`), and every stage ends at a
barrier, so the next one reads what process 0 wrote.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import gmp_jax
from experiments import augment
from experiments import cleanup
from experiments import config_check
from experiments import data as data_lib
from experiments import distributed
from experiments import evaluation
from experiments import finetuning
from experiments import loop
from experiments import models
from experiments import monitor
from experiments import plots
from experiments import reporting
from experiments import retraining
from experiments import stage_seeds
from experiments import tasks
from experiments import workdir_layout

COMPRESSED_FILE = workdir_layout.COMPRESSED_FILE
Record = dict[str, Any]


# ----------------------------------------------------------------------------
# The stage runner
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
  """What every stage gets: the config, the workdir and shared services.

  Attributes:
    config: the run's config.
    workdir: where the stages read and write.
    timer: wall time per stage and section (`monitor.StageTimer`).
    results: the records of the stages run or skipped so far.
    ran: the stages that ran (were not skipped) in this invocation.
    data_seconds: time spent loading the dataset (0 if never loaded).
    started: `time.perf_counter()` when the invocation started.
    runtime: the mesh, or None for one device (`distributed.make_runtime`).
    current: the stage running now.
    checked: what `config_check.check_config` resolved (None: it runs when
      the context is made).
  """
  config: ml_collections.ConfigDict
  workdir: str
  timer: monitor.StageTimer
  results: dict[str, Record] = dataclasses.field(default_factory=dict)
  ran: list[str] = dataclasses.field(default_factory=list)
  data_seconds: float = 0.0
  started: float = dataclasses.field(default_factory=time.perf_counter)
  runtime: distributed.Runtime | None = None
  current: str = ''
  checked: config_check.CheckedConfig | None = None
  _dataset: data_lib.Dataset | None = None
  _test_set: evaluation.TestSet | None = None
  _evaluators: dict[str, Callable[[Any], dict[str, float]]] = (
      dataclasses.field(default_factory=dict))

  def __post_init__(self):
    if self.checked is None:
      self.checked = config_check.check_config(self.config)

  @property
  def options(self) -> loop.LoopOptions:
    return self.checked.loop_options

  @property
  def task(self) -> tasks.Task:
    return self.checked.task

  @property
  def metric(self) -> str:
    """The task's headline metric, e.g. 'accuracy'."""
    return self.checked.task.metric

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  @property
  def is_writer(self) -> bool:
    """Whether this process writes the workdir's files (process 0)."""
    return self.runtime is None or self.runtime.is_writer

  def apply_fn(self, model_name: str):
    """`(params, x) -> logits` of a model sized for the run's dataset."""
    return retraining.apply_fn(model_name, self.checked.dataset.name)

  @functools.cached_property
  def log(self) -> monitor.MetricsLog:
    tensorboard = self.config.get('tensorboard', True)
    return monitor.MetricsLog(
        self.workdir,
        tensorboard_dir=self.path('tensorboard') if tensorboard else None)

  @property
  def dataset(self) -> data_lib.Dataset:
    """The dataset, loaded on first use (a rerun may need none)."""
    if self._dataset is None:
      start = time.perf_counter()
      with self.timer.section(self.current, 'data'):
        self._dataset = load_data(self.config)
      self.data_seconds = time.perf_counter() - start
    return self._dataset

  @property
  def test_set(self) -> evaluation.TestSet:
    """The test split on the device, uploaded once."""
    if self._test_set is None:
      x, y = self.dataset['test']
      self._test_set = self.task.test_set(
          x, y, batch_size=self.config.eval_batch_size,
          place=None if self.runtime is None else self.runtime.put)
    return self._test_set

  def evaluator(self, model_name: str) -> Callable[[Any], dict[str, float]]:
    """`params -> metrics` on the test split (`{'accuracy',
    'cross_entropy'}` for classification)."""
    if model_name not in self._evaluators:
      self._evaluators[model_name] = self.task.evaluator(
          self.test_set, self.apply_fn(model_name))
    return self._evaluators[model_name]


StageFn = Callable[[Context], Record]
STAGES: dict[str, StageFn] = {}  # In run order.
_OUTPUTS: dict[str, tuple[str, ...]] = {}
_HOST_ONLY: set[str] = set()


def stage(name: str, *, outputs: tuple[str, ...], host_only: bool = False):
  """Registers a stage; `outputs` are the files (workdir-relative) it makes.

  A `host_only` stage computes nothing on the mesh: in a multi-process run
  only process 0 runs it.
  """

  def register(fn: StageFn) -> StageFn:
    STAGES[name] = fn
    _OUTPUTS[name] = outputs
    if host_only:
      _HOST_ONLY.add(name)
    return fn

  return register


done_path = workdir_layout.done_path


def stage_outputs(name: str) -> tuple[str, ...]:
  """The files (workdir-relative) a registered stage makes."""
  return _OUTPUTS[name]


def is_finished(workdir: str, name: str) -> bool:
  """Whether the stage left its record and all its outputs."""
  return all(os.path.exists(p) for p in (
      done_path(workdir, name),
      *(os.path.join(workdir, o) for o in _OUTPUTS[name])))


def run_stage(ctx: Context, name: str) -> Record:
  """Runs stage `name` or, if it finished before, returns its record.

  A finished stage is rerun when a stage before it ran in this invocation,
  since its inputs may have changed. The record gets the stage's wall time
  and is written last, atomically, so a killed stage is never taken for a
  finished one.
  """
  done = done_path(ctx.workdir, name)
  earlier = list(STAGES)[:list(STAGES).index(name)]
  if is_finished(ctx.workdir, name) and not set(earlier) & set(ctx.ran):
    monitor.log_info('%s: finished earlier (%s), skipping.', name, done)
    record = workdir_layout.read_done(ctx.workdir, name)
  else:
    if ctx.is_writer or name not in _HOST_ONLY:
      start = time.perf_counter()
      ctx.current = name
      with ctx.timer.section(name, 'total'):
        record = STAGES[name](ctx)
      record['wall_time_s'] = time.perf_counter() - start
      if ctx.is_writer:
        workdir_layout.write_done(ctx.workdir, name, record)
    if ctx.runtime is not None:  # Process 0's files are written.
      ctx.runtime.barrier(f'stage {name}')
    if not (ctx.is_writer or name not in _HOST_ONLY):
      record = workdir_layout.read_done(ctx.workdir, name)
    ctx.ran.append(name)
  ctx.results[name] = record
  return record


def check_stage_name(name: str | None) -> None:
  """Raises ValueError unless `name` is None or a stage's name."""
  if name is not None and name not in STAGES:
    raise ValueError(f'Unknown stage {name!r}; the stages are '
                     f'{tuple(STAGES)}.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       timer: monitor.StageTimer | None = None,
                       stop_after: str | None = None
                       ) -> dict[str, Any] | None:
  """Runs every stage; returns the report (also written to the workdir).

  With `stop_after`, the stages up to that one only, returning None
  (unless it is the last); a later call resumes after it.

  Raises:
    ValueError: a bad config field (`config_check.check_config`) or stage
      name, before any stage runs.
  """
  check_stage_name(stop_after)
  checked = config_check.check_config(config)
  runtime = checked.runtime
  if runtime is None or runtime.is_writer:
    os.makedirs(workdir, exist_ok=True)
  if runtime is not None:
    runtime.barrier('workdir')
  ctx = Context(config, workdir, timer or monitor.StageTimer(),
                runtime=runtime, checked=checked)
  for name in STAGES:
    run_stage(ctx, name)
    if name == stop_after and name != list(STAGES)[-1]:
      monitor.log_info('stopped after %s (--stop_after).', name)
      return None
  with open(ctx.path(workdir_layout.REPORT_FILE)) as f:
    return json.load(f)


# ----------------------------------------------------------------------------
# Helpers of the stages
# ----------------------------------------------------------------------------


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  d = config.data
  return data_lib.load_dataset(
      d.name, source=d.source, data_dir=d.get('data_dir'),
      num_train=d.get('num_train'), num_test=d.get('num_test'),
      seed=config.seed)


def _save_params(ctx: Context, path: str, params, metadata=None) -> None:
  """Stores float params exactly (raw leaves) in the compressed format.

  On a mesh every process takes part in gathering them; process 0 writes.
  """
  params = (jax.device_get(params) if ctx.runtime is None
            else ctx.runtime.gather(params))
  if ctx.is_writer:
    gmp_jax.save_compressed(path, params, metadata=metadata,
                            codebook_dtype=None)


def _load(path: str):
  """(params as device arrays, metadata) of a compressed file."""
  params, metadata = gmp_jax.load_compressed(path, with_metadata=True)
  return jax.tree.map(jnp.asarray, params), metadata


def _flat(params) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float32))
                         for x in jax.tree.leaves(params)])


def _train(ctx: Context, name: str, state, train_step, data, *, epochs: int,
           batch_size: int, eval_fn, summary_fn=None, teacher_params=None):
  """Runs a training stage; `teacher_params` redo distillation targets.

  With `data.augment_shift` the step sees shifted images
  (`experiments.augment`), and batches' `teacher_logits` are recomputed
  from them by the teacher (`teacher_params`, the teacher model's).
  """
  config = ctx.config
  teacher_fn = None
  if teacher_params is not None:
    teacher_apply = ctx.apply_fn(config.model)
    teacher_fn = lambda x: teacher_apply(teacher_params, x)  # pylint: disable=unnecessary-lambda-assignment
  train_step = augment.with_augmentation(
      train_step, ctx.checked.augment_shift,
      seed=stage_seeds.augment_seed(config.seed, name),
      teacher_fn=teacher_fn)
  if ctx.runtime is None:  # On a mesh the loop uploads each epoch's rows.
    data = ctx.timer.run(name, 'data', jax.device_put, data)
  return loop.train_loop(
      stage=name, state=state, train_step=train_step, data=data,
      num_epochs=epochs, batch_size=batch_size,
      seed=stage_seeds.batch_seed(config.seed, name),
      checkpoint_dir=ctx.path(name, 'checkpoints'), options=ctx.options,
      log=ctx.log, eval_fn=eval_fn, summary_fn=summary_fn, timer=ctx.timer,
      runtime=ctx.runtime)


def _mixture_summary(state: gmp_jax.TrainState) -> dict[str, Any]:
  mixture = jax.device_get(state.mixture)  # Replicated on a mesh.
  return {'mixture_means': np.asarray(mixture.means).tolist(),
          'mixture_stds': np.sqrt(np.asarray(mixture.variances)).tolist(),
          'mixture_pis': np.asarray(mixture.mixing_proportions).tolist()}


def _retrained(ctx: Context):
  """(student, params, mixture) from `retrain/state.gmpz`."""
  params, meta = _load(ctx.path('retrain', 'state.gmpz'))
  mixture = retraining.initial_mixture(params, ctx.config.retrain).replace(
      nonzero_means=jnp.asarray(meta['nonzero_means']),
      log_precisions=jnp.asarray(meta['log_precisions']),
      mixing_logits=jnp.asarray(meta['mixing_logits']))
  return ctx.results['retrain']['student'], params, mixture


# ----------------------------------------------------------------------------
# Stages, in run order
# ----------------------------------------------------------------------------


@stage('teacher', outputs=(workdir_layout.TEACHER_PARAMS,))
def teacher_stage(ctx: Context) -> Record:
  """Trains the teacher on the task's data loss (label cross-entropy)."""
  config, tc = ctx.config, ctx.config.teacher
  data = ctx.task.train_arrays(ctx.dataset['train'])
  x = data['x']
  params = models.init_params(config.model, jax.random.key(config.seed),
                              dataset=ctx.checked.dataset)
  schedule = retraining.cosine_schedule(
      tc.learning_rate, tc.decay_to, epochs=tc.epochs, num_examples=len(x),
      batch_size=tc.batch_size, warmup_steps=tc.get('warmup_steps') or 0)
  tx = gmp_jax.gmp_optimizer(weights=schedule, means=0.0, log_precisions=0.0,
                             mixing=0.0)
  mixture = gmp_jax.init_mixture(params, 2)  # Unused: the prior is off.
  state = gmp_jax.create_train_state(params, mixture, tx)
  step = gmp_jax.make_train_step(ctx.apply_fn(config.model), tx,
                                 tau=0.0, dataset_size=len(x),
                                 use_prior=False,
                                 data_loss_fn=ctx.task.data_loss_fn())
  state = _train(ctx, 'teacher', state, step, data,
                 epochs=tc.epochs, batch_size=tc.batch_size,
                 eval_fn=ctx.task.epoch_metrics(
                     ctx.evaluator(config.model), pruned=False))
  test = ctx.evaluator(config.model)(state.params)
  _save_params(ctx, ctx.path(workdir_layout.TEACHER_PARAMS), state.params)
  monitor.log_info('teacher: test %s %.4f', ctx.metric, test[ctx.metric])
  return {f'test_{k}': v for k, v in test.items()}


@stage('retrain', outputs=('retrain/state.gmpz',))
def retrain_stage(ctx: Context) -> Record:
  """Retraining with the mixture prior (poster eq. 1)."""
  config, rc = ctx.config, ctx.config.retrain
  teacher_params, _ = _load(ctx.path(workdir_layout.TEACHER_PARAMS))
  if ctx.runtime is not None:  # Layer-wise steps close over the teacher.
    teacher_params = ctx.runtime.put(teacher_params)
  student = retraining.student_name(config)
  params = retraining.initial_params(config, teacher_params)
  mixture = retraining.initial_mixture(params, rc)
  record = {'tau': rc.tau}
  scales = n = None
  if rc.mode == 'end_to_end':  # The gradient ratio at the start (rho).
    scales, n = ctx.timer.run('retrain', 'data', retraining.gradient_scales,
                              config, params, mixture, teacher_params,
                              ctx.dataset)
    if rc.get('tau_ratio') is not None:
      record.update(tau=gmp_jax.calibrate_tau(scales, dataset_size=n,
                                              ratio=rc.tau_ratio),
                    tau_ratio=rc.tau_ratio)
    record.update(grad_data_rms=scales.data_rms,
                  grad_prior_rms=scales.prior_rms,
                  initial_grad_ratio=scales.ratio(record['tau'], n))
    monitor.log_info('retrain: tau %.4g, gradient ratio %.3g at the start '
                     '(RMS: data %.3g, prior %.3g per unit tau / N)',
                     record['tau'], record['initial_grad_ratio'],
                     scales.data_rms, scales.prior_rms)
  start = gmp_jax.diagnose(params, mixture, scales=scales, tau=record['tau'],
                           dataset_size=n, warn=False)
  record['initial_nonzero_fraction'] = start.nonzero_fraction
  for message in start.warnings:
    monitor.log_info('retrain: warning: %s', message)
  setup = ctx.timer.run('retrain', 'data', retraining.MODES[rc.mode], config,
                        teacher_params, ctx.dataset, tau=record['tau'])
  state = gmp_jax.create_train_state(params, mixture, setup.optimizer)
  state = _train(ctx, 'retrain', state, setup.train_step, setup.data,
                 epochs=rc.epochs, batch_size=rc.batch_size,
                 eval_fn=ctx.task.epoch_metrics(
                     ctx.evaluator(student), pruned=True,
                     raw=rc.get('eval_raw_each_epoch', False)),
                 summary_fn=_mixture_summary, teacher_params=teacher_params)
  test = ctx.evaluator(student)(state.params)
  mixture = jax.device_get(state.mixture)
  _save_params(ctx, ctx.path('retrain', 'state.gmpz'), state.params,
               metadata={
                   'nonzero_means': np.asarray(mixture.nonzero_means),
                   'log_precisions': np.asarray(mixture.log_precisions),
                   'mixing_logits': np.asarray(mixture.mixing_logits)})
  monitor.log_info('retrain (%s): test %s before pruning %.4f', rc.mode,
                   ctx.metric, test[ctx.metric])
  return {f'test_{ctx.metric}': test[ctx.metric], 'student': student,
          'mode': rc.mode, **record}


@stage('postprocess', outputs=('postprocess/quantized.gmpz',))
def postprocess_stage(ctx: Context) -> Record:
  """Merges components, prunes and quantises; evaluates."""
  student, params, mixture = _retrained(ctx)
  merged = gmp_jax.merge_components(
      mixture, threshold=ctx.config.postprocess.merge_threshold)
  quantized = gmp_jax.quantize(params, merged)
  test = ctx.evaluator(student)(quantized)
  # float32 codebooks hold float32 weights exactly.
  if ctx.is_writer:
    gmp_jax.save_compressed(
        ctx.path('postprocess', 'quantized.gmpz'), jax.device_get(quantized),
        codebook_dtype='float32', metadata={
            'mixture_means': np.asarray(merged.means),
            'mixture_variances': np.asarray(merged.variances),
            'mixture_proportions': np.asarray(merged.mixing_proportions)})
  monitor.log_info('postprocess: %d -> %d components, pruned test %s %.4f',
                   mixture.num_components, merged.num_components, ctx.metric,
                   test[ctx.metric])
  return {f'test_{ctx.metric}': test[ctx.metric],
          'components_before_merge': mixture.num_components,
          'components_after_merge': merged.num_components}


@stage('finetune', outputs=('finetune/quantized.gmpz',))
def finetune_stage(ctx: Context) -> Record:
  """Trains the shared values, mask and assignment fixed (optional)."""
  config, metric = ctx.config, ctx.metric
  epochs = ctx.checked.finetune_epochs
  student = ctx.results['retrain']['student']
  quantized, meta = gmp_jax.load_compressed(
      ctx.path('postprocess', 'quantized.gmpz'), with_metadata=True)
  pruned = ctx.results['postprocess'][f'test_{metric}']
  record = {'epochs': epochs, f'pruned_{metric}': pruned,
            f'test_{metric}': pruned}
  if epochs and not any(np.any(x) for x in jax.tree.leaves(quantized)):
    record['epochs'], record['skipped'] = 0, 'no non-zero weight'
  elif epochs:
    teacher_params, _ = _load(ctx.path(workdir_layout.TEACHER_PARAMS))
    mode = ctx.checked.finetune_mode
    retrained = (_retrained(ctx)[1] if mode == 'straight_through' else None)
    setup = ctx.timer.run('finetune', 'data', finetuning.setup, config,
                          student, quantized, teacher_params, ctx.dataset,
                          retrained)
    evaluate = ctx.evaluator(student)
    start = evaluate(setup.params_of(setup.state))[metric]
    state = _train(ctx, 'finetune', setup.state, setup.train_step,
                   setup.data, epochs=epochs,
                   batch_size=finetuning.batch_size(config),
                   eval_fn=finetuning.epoch_metrics(evaluate, setup.params_of),
                   teacher_params=teacher_params)
    record['mode'] = mode
    record[f'start_{metric}'] = start
    record['codebook_before'] = setup.codebook_of(setup.state).tolist()
    record['codebook_after'] = setup.codebook_of(state).tolist()
    quantized = jax.device_get(setup.params_of(state))
    record[f'test_{metric}'] = evaluate(quantized)[metric]
    monitor.log_info('finetune (%s): %d epochs, test %s %.4f -> %.4f',
                     mode, epochs, metric, pruned, record[f'test_{metric}'])
  if ctx.is_writer:
    gmp_jax.save_compressed(ctx.path('finetune', 'quantized.gmpz'),
                            quantized, codebook_dtype='float32', metadata=meta)
  return record


@stage('cleanup', outputs=('cleanup/quantized.gmpz',), host_only=True)
def cleanup_stage(ctx: Context) -> Record:
  """Zeroes the weights of dead and unread units (predictions unchanged)."""
  student = ctx.results['retrain']['student']
  quantized, meta = gmp_jax.load_compressed(
      ctx.path('finetune', 'quantized.gmpz'), with_metadata=True)
  key = f'test_{ctx.metric}'
  record = {key: ctx.results['finetune'][key]}
  enabled = ctx.config.postprocess.get('cleanup', True)
  net = models.get_model(student, ctx.checked.dataset)
  if enabled and isinstance(net, models.SequentialNet):
    quantized, found = cleanup.cleanup(quantized, net)
    record.update(found.to_dict())
    monitor.log_info('%s', found.summary())
  else:
    record['skipped'] = 'disabled' if not enabled else 'not a SequentialNet'
  gmp_jax.save_compressed(ctx.path('cleanup', 'quantized.gmpz'), quantized,
                          codebook_dtype='float32', metadata=meta)
  return record


@stage('save', outputs=(COMPRESSED_FILE,), host_only=True)
def save_stage(ctx: Context) -> Record:
  """The compressed file, with the model name as its only metadata."""
  quantized = gmp_jax.load_compressed(ctx.path('cleanup', 'quantized.gmpz'))
  file_bytes = gmp_jax.save_compressed(
      ctx.path(COMPRESSED_FILE), quantized,
      metadata={'model': ctx.results['retrain']['student']},
      codebook_dtype=ctx.config.postprocess.codebook_dtype)
  return {'compressed_file': COMPRESSED_FILE, 'file_bytes': file_bytes}


@stage('report', outputs=(workdir_layout.REPORT_FILE,
                          workdir_layout.REPORT_MARKDOWN), host_only=True)
def report_stage(ctx: Context) -> Record:
  """Figures 3 and 4, training curves, report.json and report.md."""
  start = time.perf_counter()
  config, workdir = ctx.config, ctx.workdir
  teacher_params, _ = _load(ctx.path(workdir_layout.TEACHER_PARAMS))
  _, retrained, _ = _retrained(ctx)
  # The float32 weights of the compressed file, as the tables always showed
  # them, and the merged mixture.
  quantized, meta = gmp_jax.load_compressed(
      ctx.path('cleanup', 'quantized.gmpz'), with_metadata=True)
  fig_dir = ctx.path('figures')
  figures = {
      'retraining_clustering': plots.plot_retraining_clustering(
          _flat(retraining.initial_params(config, teacher_params)),
          _flat(retrained), meta['mixture_means'],
          meta['mixture_variances'],
          os.path.join(fig_dir, 'retraining_clustering.png'),
          mixing_proportions=meta['mixture_proportions']),
      'model_weights': plots.plot_model_weights(
          quantized, os.path.join(fig_dir, 'model_weights.png')),
      'training_curves': plots.plot_training_curves(
          ctx.log.records(), os.path.join(fig_dir, 'training_curves.png')),
  }
  size_report = gmp_jax.compression_report(path=ctx.path(COMPRESSED_FILE))
  stage_times = {name: ctx.results[name]['wall_time_s']
                 for name in STAGES if name in ctx.results}
  stage_times['report'] = time.perf_counter() - start
  stage_times['total_this_invocation'] = time.perf_counter() - ctx.started
  result = reporting.build_report(
      config=config, results=ctx.results, quantized=quantized,
      size_report=size_report, compressed_file=COMPRESSED_FILE,
      wall_time_s={'data': ctx.data_seconds, **stage_times},
      distributed={'num_processes': jax.process_count(),
                   'num_devices': (1 if ctx.runtime is None
                                   else ctx.runtime.num_devices)},
      figures={k: os.path.relpath(v, workdir) for k, v in figures.items()},
      metric=ctx.metric)
  reporting.write_report(workdir, result, size_report.to_markdown())
  monitor.log_info('done: %s', reporting.summary_line(result))
  return {'report': workdir_layout.REPORT_FILE}
