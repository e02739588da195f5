"""Per-stage seeds, derived from the stage's name.

Every training stage draws its batch order from `batch_seed` and its
random image shifts from `augment_seed`. Both depend on the run's
`config.seed` and the stage's *name*, never on where the stage sits in the
run order, so adding a stage changes no other stage's seeds.

The stages that existed when seeds came from their position keep that
position as their index (`STAGE_INDEX`), and the shift seed keeps its old
form ``seed * 7 + index`` (7 was the number of stages), so every committed
run's batches and shifts are reproduced bit for bit. A stage not in the
table gets an index from its name's CRC-32,

  index(name) = 7 + crc32(name) mod (2^20 - 7),

which never equals an index of the table.
"""

from __future__ import annotations

import zlib

# The run order of the stages when these seeds were frozen.
STAGE_INDEX = {'teacher': 0, 'retrain': 1, 'postprocess': 2, 'finetune': 3,
               'cleanup': 4, 'save': 5, 'report': 6}
# len(STAGE_INDEX): the multiplier of `config.seed` in `augment_seed`.
SEED_STRIDE = 7
_HASHED_RANGE = 2**20  # Keeps augment seeds in int32 for seeds < 2**28.


def stage_index(name: str) -> int:
  """The stage's seed index: its table entry, else from its name's hash."""
  if not isinstance(name, str) or not name:
    raise ValueError(f'A stage name must be a non-empty str, got {name!r}.')
  if name in STAGE_INDEX:
    return STAGE_INDEX[name]
  return SEED_STRIDE + zlib.crc32(name.encode()) % (
      _HASHED_RANGE - SEED_STRIDE)


def batch_seed(seed: int, name: str) -> list[int]:
  """Entropy of the stage's epoch permutations (`loop.train_loop`'s seed)."""
  return [int(seed), stage_index(name)]


def augment_seed(seed: int, name: str) -> int:
  """Seed of the stage's random shifts (`augment.with_augmentation`)."""
  return int(seed) * SEED_STRIDE + stage_index(name)


__all__ = ('SEED_STRIDE', 'STAGE_INDEX', 'augment_seed', 'batch_seed',
           'stage_index')
