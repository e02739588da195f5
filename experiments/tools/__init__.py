"""Tools on top of the pipeline and its results (`python -m experiments.tools.<name>`).

* `sweep`: the pipeline over a grid of tau (and other knobs), one
  accuracy-against-bytes figure.
* `compare`: the committed runs beside the literature.
* `baselines`: k-means and int-b quantisation of a run's teacher, through
  the same codec.
* `quickstart`: the mixture prior on a small Flax model, random data.
* `tensorboard`: a run's `metrics.jsonl` as TensorBoard event files.
* `finetune_committed`: what codebook fine-tuning recovers on committed
  models (labels only).
* `plots`: the report's figures (no entry point).
"""
