"""The pipeline's stages, one module each, in run order.

* `teacher`: trains the model on the task's data loss.
* `retrain`: retraining with the mixture prior (end to end or layer-wise).
* `postprocess`: merges the mixture's components, prunes and quantises.
* `finetune`: fine-tunes the shared values after quantisation (optional).
* `cleanup`: zeroes the weights of dead and unread units (lossless).
* `save`: writes the compressed file, `model.gmpz`.
* `report`: Tables 1 and 2, the file's size, figures, `report.json/.md`.

Each module has `run(ctx) -> record` and `OUTPUTS` (and `HOST_ONLY` where
only process 0 runs it); `retrain` and `finetune` also have the
`check_config` that `experiments.infra.config_check` calls. `student` holds
what retraining and fine-tuning share (the student's model and loss, the
distillation data). `runner` registers the stages (`STAGES`), runs them
with their done records (`run_stage`) and holds `Context` and
`train_and_evaluate(config, workdir)`, which `experiments.main` calls.
"""
