"""Entropy coding of symbol streams with ANS (private to the file format).

A stream of symbols in {0, ..., K-1} is coded under the static categorical
model whose probabilities are proportional to integer `counts` (the file
holds or implies them, so the decoder rebuilds exactly the encoder's model).
The coder is `constriction`'s stack-based ANS coder: `encode_reverse`, so
that the stream decodes in order, and `Categorical(counts, perfect=False)`.
The words are what the file stores; `gmp_jax.codec` frames them (a word
count, then the words little-endian).

Changing the coder changes the bytes of every coded leaf: bump
`codec.FORMAT_VERSION` with it.

References:
  Bamler, "Understanding Entropy Coding With Asymmetric Numeral Systems (ANS):
  a Statistician's Perspective", 2022 (the `constriction` library).
  Duda, "Asymmetric numeral systems", arXiv:0902.0271, 2009.
"""

from __future__ import annotations

import constriction
import numpy as np


class DecodeError(ValueError):
  """The words do not decode to the requested stream."""


def _model(counts: np.ndarray):
  return constriction.stream.model.Categorical(
      np.asarray(counts, np.float64), perfect=False)


def encode(symbols: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """The uint32 words of `symbols` coded under the model of `counts`.

  Args:
    symbols: integer symbols, each with a positive count.
    counts: (K,) positive integer counts.

  Returns:
    A uint32 array; about sum_s -log2(counts[s] / sum(counts)) bits plus at
    most a few words of flush.
  """
  coder = constriction.stream.stack.AnsCoder()
  coder.encode_reverse(np.asarray(symbols).astype(np.int32, copy=False),
                       _model(counts))
  return coder.get_compressed().astype(np.uint32, copy=False)


def decode(words: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
  """Inverse of `encode`: the `n` symbols coded in `words`.

  Raises:
    DecodeError: the words are not exactly the coding of `n` symbols under
      this model.
  """
  try:
    coder = constriction.stream.stack.AnsCoder(words)
    symbols = coder.decode(_model(counts), n)
    empty = coder.is_empty()
  except Exception as e:  # The coder raises its own types on bad input.
    raise DecodeError(f'undecodable stream: {e}') from e
  if not empty:
    raise DecodeError('stream has unused words')
  return symbols
