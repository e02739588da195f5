"""Entropy coding of symbol streams with ANS (private to the file format).

A stream of symbols in {0, ..., K-1} is coded under the static categorical
model whose probabilities are proportional to integer `counts` (the file
holds or implies them, so the decoder rebuilds exactly the encoder's model).
The coder is `constriction`'s stack-based ANS coder: `encode_reverse`, so
that the stream decodes in order, and `Categorical(counts, perfect=False)`.
The words are what the file stores; the format modules frame them (a word
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


def categorical_model(counts: np.ndarray):
  """The coder's model of integer `counts`, to reuse across chunks."""
  return _model(counts)


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


# ------------------------------------------------------- chained streams ---
# Format version 2 codes every symbol of a file (of its params, and
# separately of its metadata) in ONE coder: chunks under different models,
# categorical (integer counts) or Bernoulli (one probability per symbol),
# follow each other. One stream pays the coder's flush once instead of once
# per leaf.


def _bernoulli():
  return constriction.stream.model.Bernoulli(perfect=False)


class ReverseEncoder:
  """Codes chunks at once, in REVERSE order of decoding (bounded memory).

  The stream's chunks are passed last chunk first (a chunk may be split
  into pieces, also passed last piece first): the stack coder codes symbol
  by symbol from the end of the stream, so `StreamDecoder` reads them back
  first chunk first.
  """

  def __init__(self):
    self._coder = constriction.stream.stack.AnsCoder()

  def categorical(self, symbols: np.ndarray, model) -> None:
    """Symbols under a `categorical_model`."""
    symbols = np.asarray(symbols).astype(np.int32, copy=False).reshape(-1)
    if symbols.size:
      self._coder.encode_reverse(symbols, model)

  def bernoulli(self, bits: np.ndarray, p: np.ndarray) -> None:
    """Bits in {0, 1}, bit i being 1 with probability `p[i]` (float64)."""
    bits = np.asarray(bits).astype(np.int32, copy=False).reshape(-1)
    p = np.asarray(p, np.float64).reshape(-1)
    if bits.shape != p.shape:
      raise ValueError(f'{bits.size} bits but {p.size} probabilities')
    if bits.size:
      self._coder.encode_reverse(bits, _bernoulli(), p)

  def words(self) -> np.ndarray:
    return self._coder.get_compressed().astype(np.uint32, copy=False)


class StreamDecoder:
  """Decodes the chunks of a `ReverseEncoder` stream in order.

  `bits_read` is the number of bits the chunks decoded so far have taken
  from the stream (its decrease in `num_valid_bits`); after `finish`,
  `32 * len(words) - bits_read` bits were the coder's flush.
  """

  def __init__(self, words: np.ndarray):
    self.num_words = int(np.size(words))
    try:
      self._coder = constriction.stream.stack.AnsCoder(
          np.asarray(words, np.uint32))
      self._start = self._coder.num_valid_bits()
    except Exception as e:  # The coder raises its own types on bad input.
      raise DecodeError(f'undecodable stream: {e}') from e

  @property
  def bits_read(self) -> int:
    return int(self._start - self._coder.num_valid_bits())

  def categorical(self, counts: np.ndarray, n: int, model=None
                  ) -> np.ndarray:
    """`n` symbols under the model of `counts` (or the given `model`)."""
    if n == 0:
      return np.zeros(0, np.int32)
    try:
      return self._coder.decode(
          _model(counts) if model is None else model, n)
    except Exception as e:
      raise DecodeError(f'undecodable stream: {e}') from e

  def bernoulli(self, p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, np.float64).reshape(-1)
    if not p.size:
      return np.zeros(0, np.int32)
    try:
      return self._coder.decode(_bernoulli(), p)
    except Exception as e:
      raise DecodeError(f'undecodable stream: {e}') from e

  def finish(self) -> None:
    """Raises `DecodeError` unless every word was used."""
    if not self._coder.is_empty():
      raise DecodeError('stream has unused words')
