"""The one validation pass over a pipeline config, before any stage runs.

`check_config` looks up every name the config gives (model, student,
dataset, task) in `experiments.infra.registry` and runs each check once:
the stages' own (`stages.teacher.check_config`,
`stages.retrain.check_config`, `stages.finetune.check_config`), the merge
options (`evaluation.merge_options`), augmentation (`augment.max_shift`),
the train loop (`loop.LoopOptions.check`) and the mesh
(`distributed.make_runtime`). A bad value raises ValueError naming the
field before a minute of training is spent; what the checks resolve comes
back as a `CheckedConfig`, which the stages read instead of asking the
config again.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from experiments.image import augment
from experiments.infra import distributed
from experiments.infra import evaluation
from experiments.infra import loop
from experiments.infra import registry
from experiments.infra import tasks
from experiments.stages import finetune
from experiments.stages import retrain
from experiments.stages import student
from experiments.stages import teacher


class CheckedConfig(NamedTuple):
  """What the validation pass resolved from a config.

  Attributes:
    model: the teacher's `registry.ModelEntry`.
    student: the retrained model's entry (the teacher's unless
      `retrain.student` names another).
    dataset: the `registry.DatasetEntry` of `data.name`.
    task: the `tasks.Task` (`config.task`, else the dataset's).
    augment_shift: the largest random shift in pixels (0: off).
    finetune_epochs: epochs of the finetune stage (0: skipped).
    finetune_mode: its mode (a key of `stages.finetune.MODES`).
    loop_options: how the train loop runs (`loop.LoopOptions`).
    runtime: the mesh, or None for one device.
  """
  model: registry.ModelEntry
  student: registry.ModelEntry
  dataset: registry.DatasetEntry
  task: tasks.Task
  augment_shift: int
  finetune_epochs: int
  finetune_mode: str
  loop_options: loop.LoopOptions
  runtime: distributed.Runtime | None


def check_names(config: ml_collections.ConfigDict
                ) -> tuple[registry.ModelEntry, registry.ModelEntry,
                           registry.DatasetEntry, tasks.Task]:
  """The model, student, dataset and task the config names.

  Raises:
    ValueError: a name that is not registered, a data source the dataset
      does not have, or a task that cannot run on the dataset.
  """
  model = registry.model(config.model)
  student_entry = registry.model(student.student_name(config))
  info = registry.dataset(config.data.name)
  source = config.data.get('source') or 'offline'
  if source not in info.sources:
    raise ValueError(f'data.source must be one of {info.sources} for '
                     f'{info.name!r}, got {source!r}.')
  task = tasks.for_config(config)
  task.check_dataset(info)
  return model, student_entry, info, task


def check_augmentation(config: ml_collections.ConfigDict,
                       info: registry.DatasetEntry) -> int:
  """`data.augment_shift`, checked against the dataset's inputs."""
  shift = augment.max_shift(config)
  if shift and not info.is_image:
    raise ValueError(f'data.augment_shift={shift} shifts images, but '
                     f'{info.name!r} has inputs of shape {info.input_shape}; '
                     'use None or 0.')
  if shift and shift >= min(info.input_shape[:2]):
    raise ValueError(f'data.augment_shift must be smaller than the images '
                     f'{info.input_shape[:2]}, got {shift}.')
  return shift


def check_config(config: ml_collections.ConfigDict) -> CheckedConfig:
  """Validates the whole config once; returns what it resolved.

  Raises:
    ValueError: the first bad field, named.
  """
  model, student_entry, info, task = check_names(config)
  teacher.check_config(config, info)
  retrain.check_config(config)
  epochs, mode = finetune.check_config(config)
  evaluation.merge_options(config)
  shift = check_augmentation(config, info)
  options = loop.LoopOptions.from_config(config)
  options.check()
  runtime = distributed.make_runtime(config)
  return CheckedConfig(model=model, student=student_entry, dataset=info,
                       task=task,
                       augment_shift=shift, finetune_epochs=epochs,
                       finetune_mode=mode, loop_options=options,
                       runtime=runtime)


__all__ = ('CheckedConfig', 'check_augmentation', 'check_config',
           'check_names')
