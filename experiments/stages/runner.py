"""The stage runner: the stage registry, done records and `train_and_evaluate`.

The poster's compression pipeline (Figure 2), stage by stage, in run order
(`STAGES`, one module each under `experiments.stages`):

  teacher -> retrain with the mixture prior (`retrain.MODES`: end-to-end
  distillation, or layer-wise as in Figure 1) -> postprocess (merge,
  prune, quantise) -> finetune the codebook (optional) -> cleanup
  (lossless structural cleanup) -> save the compressed file -> report
  (tables, figures).

`STAGES` maps each stage's name to a function `run(ctx) -> record` that
reads what earlier stages left in the workdir, writes its own outputs there
and returns a JSON record; `stage` registers one. `run_stage` is the one
place that runs them: it times the stage, writes the record as
`<workdir>/<stage>/done.json` after the outputs, and skips a stage whose
record and outputs exist unless an earlier stage ran in the same
invocation. Stages talk only through the workdir
(`experiments.infra.workdir_layout`), so a skipped stage needs nothing but
its files:

  teacher/params.gmpz          teacher weights (raw float leaves)
  teacher/checkpoints/         Orbax checkpoints while training
  teacher/early_stopping/      with teacher.patience: the stop state and the
                               best validation epoch's weights
  retrain/state.gmpz           retrained weights + mixture (metadata)
  retrain/checkpoints/
  postprocess/quantized.gmpz   merged, pruned, quantised weights + mixture
  finetune/quantized.gmpz      the same with fine-tuned shared values
  finetune/checkpoints/
  cleanup/quantized.gmpz       the same without dead and unread units
  model.gmpz                   the compressed file
  report.json, report.md, figures/, metrics.jsonl

Before any stage runs, `config_check.check_config` validates the whole
config once (each stage's own check included) and resolves the model,
dataset and task it names (`experiments.infra.registry`); the stages take
what depends on the problem (training arrays, loss, evaluation, metric
names) from the task (`experiments.infra.tasks`), and every training
stage's seeds from its name (`experiments.infra.stage_seeds`). Training
stages checkpoint their `TrainState` with Orbax (`Context.train`,
`experiments.infra.loop`); a killed run resumes from the last checkpoint.

On a mesh (`config.mesh`, `experiments.infra.distributed`) the training
stages run data-parallel (or FSDP) over every device of every process. All
processes run every stage that computes on the mesh; process 0 alone
writes the workdir's files (the others write only their checkpoint shards)
and runs the host-only stages (`cleanup`, `save`, `report`), and every
stage ends at a barrier, so the next one reads what process 0 wrote.
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
import ml_collections

import gmp_jax
from experiments.image import augment
from experiments.image import data as data_lib
from experiments.infra import config_check
from experiments.infra import distributed
from experiments.infra import evaluation
from experiments.infra import loop
from experiments.infra import monitor
from experiments.infra import stage_seeds
from experiments.infra import tasks
from experiments.infra import workdir_layout
from experiments.stages import cleanup
from experiments.stages import finetune
from experiments.stages import postprocess
from experiments.stages import report
from experiments.stages import retrain
from experiments.stages import save
from experiments.stages import student
from experiments.stages import teacher

COMPRESSED_FILE = workdir_layout.COMPRESSED_FILE
Record = dict[str, Any]


# ----------------------------------------------------------------------------
# The stage runner
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
  """What every stage gets: the config, the workdir and shared services.

  A stage reads its inputs from the workdir (`path`), the dataset and test
  set (loaded on first use), the task's evaluation (`evaluator` on the
  test split, `valid_evaluator` on the validation split of a dataset that
  has one), trains through `train` and writes float weights through
  `save_params`.

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
  _valid_set: evaluation.TestSet | None = None
  _valid_evaluators: dict[str, Callable[[Any], dict[str, float]]] = (
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
    return student.apply_fn(model_name, self.checked.dataset.name)

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

  @property
  def valid_set(self) -> evaluation.TestSet:
    """The validation split on the device, uploaded once.

    Raises:
      ValueError: the dataset has no validation split.
    """
    if self._valid_set is None:
      if 'valid' not in self.dataset:
        raise ValueError(
            f'{self.checked.dataset.name!r} has no validation split '
            f'(its splits: {sorted(self.dataset)}).')
      x, y = self.dataset['valid']
      self._valid_set = self.task.test_set(
          x, y, batch_size=self.config.eval_batch_size,
          place=None if self.runtime is None else self.runtime.put)
    return self._valid_set

  def valid_evaluator(self, model_name: str
                      ) -> Callable[[Any], dict[str, float]]:
    """`params -> metrics` on the validation split, as `evaluator` on
    the test split."""
    if model_name not in self._valid_evaluators:
      self._valid_evaluators[model_name] = self.task.evaluator(
          self.valid_set, self.apply_fn(model_name))
    return self._valid_evaluators[model_name]

  def valid_record(self, model_name: str, params) -> dict[str, float]:
    """`{'valid_<metric>': value}` of `params` on the validation split;
    `{}` when the dataset has none (the image datasets)."""
    if 'valid' not in self.dataset:
      return {}
    value = self.valid_evaluator(model_name)(params)[self.metric]
    return {f'valid_{self.metric}': value}

  def train(self, name: str, state, train_step, data, *, epochs: int,
            batch_size: int, eval_fn, summary_fn=None, teacher_params=None,
            stop_fn=None):
    """Runs training stage `name`'s loop; `teacher_params` redo
    distillation targets.

    With `data.augment_shift` the step sees shifted images
    (`experiments.image.augment`), and batches' `teacher_logits` are
    recomputed from them by the teacher (`teacher_params`, the teacher
    model's). Seeds come from the stage's name (`stage_seeds`); the loop
    checkpoints to `<workdir>/<name>/checkpoints`. `stop_fn` may end
    training early (`loop.train_loop`).
    """
    config = self.config
    teacher_fn = None
    if teacher_params is not None:
      teacher_apply = self.apply_fn(config.model)
      teacher_fn = lambda x: teacher_apply(teacher_params, x)  # pylint: disable=unnecessary-lambda-assignment
    train_step = augment.with_augmentation(
        train_step, self.checked.augment_shift,
        seed=stage_seeds.augment_seed(config.seed, name),
        teacher_fn=teacher_fn)
    if self.runtime is None:  # On a mesh the loop uploads each epoch's rows.
      data = self.timer.run(name, 'data', jax.device_put, data)
    return loop.train_loop(
        stage=name, state=state, train_step=train_step, data=data,
        num_epochs=epochs, batch_size=batch_size,
        seed=stage_seeds.batch_seed(config.seed, name),
        checkpoint_dir=self.path(name, 'checkpoints'), options=self.options,
        log=self.log, eval_fn=eval_fn, summary_fn=summary_fn,
        timer=self.timer, runtime=self.runtime, stop_fn=stop_fn)

  def save_params(self, path: str, params, metadata=None) -> None:
    """Stores float params exactly (raw leaves) in the compressed format.

    On a mesh every process takes part in gathering them; process 0
    writes.
    """
    self.write_host_params(path, self.host_params(params), metadata)

  def host_params(self, params):
    """Host NumPy copies of (device or mesh) params; on a mesh every
    process must call it, and each gets the whole arrays."""
    return (jax.device_get(params) if self.runtime is None
            else self.runtime.gather(params))

  def write_host_params(self, path: str, params, metadata=None) -> None:
    """`save_params` of params already on the host (`host_params`):
    process 0 writes them exactly; the others do nothing."""
    if self.is_writer:
      gmp_jax.save_compressed(path, params, metadata=metadata,
                              codebook_dtype=None)


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


# The stages, in run order: each module's `run`, `OUTPUTS` and `HOST_ONLY`.
for _name, _module in (('teacher', teacher), ('retrain', retrain),
                       ('postprocess', postprocess), ('finetune', finetune),
                       ('cleanup', cleanup), ('save', save),
                       ('report', report)):
  stage(_name, outputs=_module.OUTPUTS,
        host_only=getattr(_module, 'HOST_ONLY', False))(_module.run)
del _name, _module


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
# Data
# ----------------------------------------------------------------------------


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  d = config.data
  return data_lib.load_dataset(
      d.name, source=d.source, data_dir=d.get('data_dir'),
      num_train=d.get('num_train'), num_test=d.get('num_test'),
      seed=config.seed, num_valid=d.get('num_valid'))
