"""experiments.infra.stage_seeds: seeds from stage names, the old values kept."""

import zlib

import pytest

from experiments.stages import runner as pipeline
from experiments.infra import stage_seeds

# The run order from which the seeds used to be computed.
OLD_ORDER = ['teacher', 'retrain', 'postprocess', 'finetune', 'cleanup',
             'save', 'report']


def test_the_pipeline_order_is_the_frozen_one():
  assert list(pipeline.STAGES) == OLD_ORDER


@pytest.mark.parametrize('seed', [0, 1, 2, 17])
def test_existing_stages_keep_their_seeds(seed):
  for position, name in enumerate(OLD_ORDER):
    # What the pipeline computed: [seed, position] and seed * 7 + position.
    assert stage_seeds.batch_seed(seed, name) == [seed, position]
    assert stage_seeds.augment_seed(seed, name) == (
        seed * len(OLD_ORDER) + position)


def test_a_new_stage_shifts_no_other_seed():
  before = {n: stage_seeds.augment_seed(3, n) for n in OLD_ORDER}
  new = stage_seeds.stage_index('distill_again')
  assert new == 7 + zlib.crc32(b'distill_again') % (2**20 - 7)
  assert new not in stage_seeds.STAGE_INDEX.values()
  assert {n: stage_seeds.augment_seed(3, n) for n in OLD_ORDER} == before
  assert stage_seeds.stage_index('distill_again') == new  # Deterministic.


def test_bad_names():
  for bad in ('', None, 3):
    with pytest.raises(ValueError, match='stage name'):
      stage_seeds.stage_index(bad)
