"""gmp_jax's experiments: a resumable pipeline that any model and dataset plug into.

Where things are, by role:

* Entry points (`python -m experiments.<name>`): `mnist` (the pipeline;
  any registered model and dataset, not only MNIST), `sweep`, `compare`,
  `quickstart`, `finetuning`, `monitor`, `tensorboard`, `data` and
  `lm_data` (fetch and cache datasets), `transformer` (a language-model
  baseline), `baselines` (k-means and int-b on a run's teacher, through
  the same codec).
* Plug-ins by name: `registry` (`register_model`, `register_dataset`,
  `register_task`), `tasks` (what a task evaluates), `models` and
  `transformer` (the built-in networks), `data`, `mnist_offline` and
  `lm_data` (the built-in datasets), `language_model` (the Shakespeare
  dataset, the language-model task and the NNX transformer, registered
  by name), `configs/` (one file per run, the command and expected
  result in its docstring).
* Stages, in order: `retraining` (teacher, retraining), `cleanup`,
  `finetuning`, `reporting`; `pipeline` runs them through its stage
  registry, after `config_check` has validated the whole config once.
* Infrastructure: `loop` (the train loop), `evaluation`, `augment`,
  `distributed`, `stage_seeds`, `workdir_layout` (paths, done records,
  `metrics.jsonl`), `plots`.
* `stateful` is kept for old imports; the adapters live in `gmp_jax.flax`.
"""
