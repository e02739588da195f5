"""The byte-level language model, plugged into the pipeline by name.

Registers, through `experiments.infra.registry` and nothing else:

* the dataset ``'shakespeare'`` (`experiments.language.data`): examples are
  non-overlapping windows of ``T = 128`` bytes, inputs ``(N, T)`` and
  next-byte targets ``(N, T)``, int32, in ``'train'``, ``'valid'`` and
  ``'test'`` splits (registered with ``validation=True``: the teacher can
  stop early on ``'valid'``). Sources: ``'offline'`` (the pinned corpus,
  fetched once) and ``'sample'`` (the 64 KiB sample shipped in
  ``tests/data``, split 6:1:1, for smoke runs and tests);
* the task ``'language_model'`` (`LanguageModel`): next-byte cross-entropy,
  bits per byte and per-byte accuracy;
* the model ``'transformer'``: `experiments.language.transformer.Transformer` (Flax
  NNX) behind `NNXModule`, the ``init``/``apply`` pair the pipeline calls on
  every model; and ``'transformer_tiny'``, the same model at 1 layer,
  ``d_model`` 64, 2 heads, MLP 256 (91,328 parameters), which the
  ``:smoke`` config runs.

So ``--config=experiments/configs/shakespeare.py`` runs every stage of the
pipeline on it. N, the ``dataset_size`` of the prior's ``tau / N`` scaling,
is the number of training **tokens** (windows times bytes each), since the
data term is a mean over every predicted byte (`LanguageModel.dataset_size`).
"""

from __future__ import annotations

import math
import os
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from experiments.language import data as lm_data
from experiments.infra import registry
from experiments.infra import tasks
from experiments.language import transformer

SEQ_LEN = 128
# The repository's root is three levels above experiments/language/task.py.
SAMPLE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'tests', 'data', 'shakespeare_sample.txt')
# The sample's validation and test shares (`load_shakespeare`).
SAMPLE_VALID_FRACTION = 1 / 8
SAMPLE_TEST_FRACTION = 1 / 8


# ----------------------------------------------------------------- dataset --


def _keep(x, y, num):
  return (x, y) if num is None else (x[:num], y[:num])


def load_shakespeare(*, source: str = 'offline', data_dir=None,
                     download: bool = True, num_train: int | None = None,
                     num_test: int | None = None,
                     num_valid: int | None = None, seed: int = 0,
                     seq_len: int = SEQ_LEN):
  """``{'train': (x, y), 'valid': (x, y), 'test': (x, y)}`` windows.

  ``'offline'``: `lm_data.load_splits` (validation and test hold other
  plays than training). ``'sample'``: the shipped sample cut by
  `lm_data.split_corpus` into its first 6/8 for training, the next 1/8
  for validation and the last 1/8 for testing (bytes ``[0, 49152)``,
  ``[49152, 57344)`` and ``[57344, 65536)``; no byte of one split is a
  target of another). `num_train` / `num_valid` / `num_test` keep the
  first windows of their split.
  """
  del seed  # The windows are in corpus order; the loop shuffles batches.
  if source == 'offline':
    splits = lm_data.load_splits(data_dir, download=download)
  elif source == 'sample':
    with open(SAMPLE_PATH, 'rb') as f:
      sample = np.frombuffer(f.read(), np.uint8)
    splits = lm_data.split_corpus(sample, valid_fraction=SAMPLE_VALID_FRACTION,
                                  test_fraction=SAMPLE_TEST_FRACTION)
  else:
    raise ValueError(f'Unknown source {source!r} for shakespeare; expected '
                     "'offline' or 'sample'.")
  return {'train': _keep(*lm_data.eval_windows(splits.train, seq_len),
                         num_train),
          'valid': _keep(*lm_data.eval_windows(splits.valid, seq_len),
                         num_valid),
          'test': _keep(*lm_data.eval_windows(splits.test, seq_len),
                        num_test)}


SHAKESPEARE = registry.register_dataset(
    'shakespeare', load_shakespeare, input_shape=(SEQ_LEN,),
    input_dtype='int32', vocab_size=lm_data.VOCAB_SIZE,
    task='language_model', display_name='Shakespeare (bytes)',
    sources=('offline', 'sample'), validation=True)


# -------------------------------------------------------------------- task --


class LanguageModel(tasks.Task):
  r"""Next-token prediction: labels (B, T), logits (B, T, V).

  .. math::

    \mathrm{bits\_per\_byte} = \frac{1}{n \ln 2} \sum_{b,t}
    -\log \mathrm{softmax}(z_{bt})_{y_{bt}}, \qquad
    \mathrm{accuracy} = \frac{1}{n} \sum_{b,t} [\arg\max_v z_{btv} = y_{bt}]

  over the n predicted bytes. The training loss is `gmp_jax`'s label
  cross-entropy, which averages over every axis of (B, T, V) logits.
  """
  name = 'language_model'
  metric = 'bits_per_byte'
  higher_is_better = False

  def dataset_size(self, x: np.ndarray) -> int:
    """N = training tokens (windows times bytes each): the loss is a mean
    over every predicted byte."""
    return int(np.prod(np.shape(x)))

  def check_dataset(self, info: registry.DatasetEntry) -> None:
    if info.vocab_size is None or len(info.input_shape) != 1:
      raise ValueError(
          f'The language_model task needs a token dataset with inputs '
          f'(T,) and a vocabulary; {info.name!r} has inputs '
          f'{info.input_shape} and {info.num_classes} classes.')

  def eval_step(self, apply_fn):

    def step(params, batch):
      logits = apply_fn(params, batch['x']).astype(jnp.float32)
      labels = batch['label'].astype(jnp.int32)
      if logits.shape[:-1] != labels.shape:
        raise ValueError(f'logits {logits.shape} and labels {labels.shape} '
                         'disagree along the sequence axis.')
      log_p = jax.nn.log_softmax(logits, axis=-1)
      picked = jnp.take_along_axis(log_p, labels[..., None], axis=-1)
      hits = jnp.argmax(logits, axis=-1) == labels
      return {'nll_sum': -jnp.sum(picked),
              'correct': jnp.sum(hits.astype(jnp.int32)),
              'count': jnp.asarray(labels.size, jnp.int32)}

    return step

  def summarize(self, totals):
    count = float(totals['count'])
    return {'bits_per_byte': float(totals['nll_sum']) / (count * math.log(2)),
            'accuracy': float(totals['correct']) / count}


LANGUAGE_MODEL = registry.register_task('language_model', LanguageModel(),
                                        aliases=('lm',))


# ------------------------------------------------------------------- model --


def _int_keys(tree):
  """The blocks' str keys back to the ints `nnx.merge` expects."""
  if isinstance(tree, dict):
    return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v)
            for k, v in tree.items()}
  return tree


def _str_keys(tree):
  if isinstance(tree, dict):
    return {str(k): _str_keys(v) for k, v in tree.items()}
  return tree


class NNXModule:
  """An NNX model as the pipeline's ``init(rng, x)`` / ``apply(vars, x)``.

  ``init`` returns ``{'params': pure dict}`` (`nnx.to_pure_dict`, the
  block list's int keys as str so that every checkpoint format takes them);
  ``apply({'params': p}, x)`` merges them into the model and calls it.
  Both are pure functions of arrays.
  """

  def __init__(self, config: transformer.TransformerConfig):
    self.config = config
    self._graphdef = None

  def _make(self, rng) -> transformer.Transformer:
    return transformer.Transformer(self.config, rngs=nnx.Rngs(params=rng))

  @property
  def graphdef(self):
    if self._graphdef is None:
      abstract = nnx.eval_shape(lambda: self._make(0))
      self._graphdef = nnx.split(abstract, nnx.Param)[0]
    return self._graphdef

  def init(self, rng, x) -> dict[str, Any]:
    del x  # The shapes come from the config.
    _, params = nnx.split(self._make(rng), nnx.Param)
    return {'params': _str_keys(nnx.to_pure_dict(params))}

  def apply(self, variables, x):
    return nnx.merge(self.graphdef, _int_keys(variables['params']))(x)


def build_transformer(info: registry.DatasetEntry) -> NNXModule:
  return NNXModule(transformer.TransformerConfig(
      vocab_size=info.vocab_size, context=info.input_shape[0]))


TRANSFORMER = registry.register_model(
    'transformer', build_transformer,
    display_name='Transformer LM (4 layers, d 128)',
    default_dataset='shakespeare', aliases=('transformer_lm',))


def build_tiny_transformer(info: registry.DatasetEntry) -> NNXModule:
  """1 layer, d_model 64, 2 heads, MLP 256: the smoke runs' model."""
  return NNXModule(transformer.TransformerConfig(
      num_layers=1, d_model=64, num_heads=2, mlp_dim=256,
      vocab_size=info.vocab_size, context=info.input_shape[0]))


TINY_TRANSFORMER = registry.register_model(
    'transformer_tiny', build_tiny_transformer,
    display_name='Transformer LM (1 layer, d 64)',
    default_dataset='shakespeare')
