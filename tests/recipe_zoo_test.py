"""benchmarks.recipe_zoo at smoke size, checked against the files it writes."""

import json
import os

from flax import nnx
import jax
import numpy as np
import pytest

import gmp_jax
from benchmarks import recipe_zoo
from experiments.infra import cli


@pytest.fixture(scope='module')
def zoo(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('zoo'))
  out = os.path.join(workdir, 'zoo.json')
  with jax.numpy_dtype_promotion('standard'):  # optax's Adam mixes dtypes.
    assert cli.call(recipe_zoo, ['--families=cnn', '--smoke',
                                 f'--workdir={workdir}', f'--json={out}']) == 0
  with open(out) as f:
    report = json.load(f)
  assert report['command'].startswith('python -m benchmarks.recipe_zoo')
  assert '--smoke' in report['command']
  return report, workdir


def _reloaded_model(name, path, smoke_data):
  """The family's model with the file's weights (and BatchNorm statistics)."""
  del smoke_data
  model = recipe_zoo.FAMILIES[name].model(nnx.Rngs(params=7, dropout=8), True)
  info = gmp_jax.load_compressed_with_info(path)
  params, meta = info.params, info.metadata
  weights = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(weights, params)
  nnx.update(model, weights)
  if meta:
    stats = nnx.state(model, nnx.BatchStat)
    nnx.replace_by_pure_dict(stats, meta['batch_stats'])
    nnx.update(model, stats)
  model.eval()
  return model, params


def test_figures_match_the_written_file(zoo):
  """The CNN: BatchNorm statistics in the file, Dropout, uncovered norms."""
  name = 'cnn'
  report, workdir = zoo
  figures = report['families'][name]
  path = os.path.join(workdir, f'{name}.gmpz')
  assert os.path.getsize(path) == figures['file_bytes']
  model, params = _reloaded_model(name, path, None)
  leaves = jax.tree.leaves(params)
  n = sum(np.size(x) for x in leaves)
  assert figures['parameters'] == n
  assert figures['cr_file'] == pytest.approx(32 * n / (8 * figures['file_bytes']))
  # Kept fraction: non-zeros of the covered (non-BatchNorm) leaves, by NumPy.
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  covered = [np.asarray(x) for p, x in zip(paths, leaves) if 'bn' not in p]
  kept = sum(np.count_nonzero(x) for x in covered) / sum(x.size
                                                          for x in covered)
  assert figures['kept'] == pytest.approx(kept, abs=1e-12)
  # The library's default cap: at most 16 values per leaf, zero included.
  assert report['max_components'] == figures['max_components'] == 16
  assert 2 <= figures['values_per_leaf'] <= 16
  assert max(len(np.unique(x)) for x in covered) == figures['values_per_leaf']
  # The fine-tuned test accuracy, recomputed from the reloaded file.
  test_x, test_y = recipe_zoo.FAMILIES[name].data(True)['test']
  with jax.numpy_dtype_promotion('standard'):  # Flax's BatchNorm mixes dtypes.
    logits = np.asarray(model(test_x))
  accuracy = float(np.mean(np.argmax(logits, -1) == test_y))
  assert figures['finetuned']['test'] == pytest.approx(accuracy, abs=1.5 /
                                                       len(test_y))
  for stage in ('teacher', 'quantized_initial', 'retrained', 'quantized',
                'finetuned'):
    assert set(figures[stage]) == {'valid', 'test'}
    assert all(0.0 <= v <= 1.0 for v in figures[stage].values())
  assert figures['tau'] > 0


def test_table_has_one_row_per_family(zoo):
  report, _ = zoo
  table = recipe_zoo.format_table(report).splitlines()
  assert len(table) == 2 + 1
  assert table[2].startswith('| cnn | rms (default) | 16 | accuracy |')


def test_table_names_a_fixed_zero_proportion(zoo):
  report, _ = zoo
  assert report['zero_proportion'] is None  # The default: learned.
  assert report['leaf_scale'] == 'rms'  # The library's default.
  fixed = dict(report, zero_proportion=0.99, leaf_scale=None)
  rows = recipe_zoo.format_table(report, fixed).splitlines()[2:]
  assert rows[0].startswith('| cnn | rms (default) | 16 |')
  assert rows[1].startswith('| cnn | none, pi_0 0.99 fixed | 16 |')


def _keywords_reaching(monkeypatch, library_fn, **run_kwargs):
  """The keyword arguments `run_family` passes `gmp_jax.<library_fn>`.

  The teacher is not trained and the evaluations return 0; the run stops
  at that call.
  """
  seen = {}

  def stop(*args, **kwargs):
    seen.update(kwargs)
    raise RuntimeError(f'stop at {library_fn}')

  monkeypatch.setattr(recipe_zoo.gmp_jax, library_fn, stop)
  monkeypatch.setattr(recipe_zoo, '_train_teacher',
                      lambda family, apply_fn, params, state, *a: (params,
                                                                    state))
  monkeypatch.setattr(recipe_zoo, '_evaluator',
                      lambda predict, metric, split: lambda p, m: 0.0)
  with pytest.raises(RuntimeError, match=f'stop at {library_fn}'):
    recipe_zoo.run_family('mlp', smoke=True, log=lambda msg: None,
                          **run_kwargs)
  return seen


def test_zero_proportion_reaches_init_mixture(monkeypatch):
  """`--zero_proportion` (and `--leaf_scale`) go to init_mixture as given."""
  seen = _keywords_reaching(monkeypatch, 'init_mixture',
                            zero_proportion=0.99, leaf_scale=None)
  assert seen['zero_proportion'] == 0.99 and seen['leaf_scale'] is None


@pytest.mark.parametrize('flag,want', [(None, 'rms'), ('none', None),
                                       ('rms', 'rms')])
def test_leaf_scale_flag(monkeypatch, flag, want):
  """The library's default unless given; 'none' is one mixture."""
  seen = {}

  def run(families, **kwargs):
    seen.update(kwargs)
    return {'families': {}}

  monkeypatch.setattr(recipe_zoo, 'run', run)
  argv = ['--families=mlp'] + ([] if flag is None else [f'--leaf_scale={flag}'])
  assert cli.call(recipe_zoo, argv) == 0
  assert seen['leaf_scale'] == want


def test_tau_ratio_reaches_calibrate_tau_and_the_table(monkeypatch, zoo):
  """`--tau_ratio` is calibrate_tau's ratio; a non-default one is named."""
  seen = _keywords_reaching(monkeypatch, 'calibrate_tau', tau_ratio=0.2)
  assert seen['ratio'] == 0.2
  report, _ = zoo
  assert report['tau_ratio'] == 0.05  # The library's default.
  rows = recipe_zoo.format_table(dict(report, tau_ratio=0.2)).splitlines()
  assert rows[2].startswith('| cnn | rms (default), tau ratio 0.2 | 16 |')


def test_max_components_flag():
  """16 by default (the library's); 0 turns the cap off; 1 is refused."""
  assert recipe_zoo.LIBRARY_MAX_COMPONENTS == 16
  assert recipe_zoo.max_components_of(0) is None
  assert recipe_zoo.max_components_of(16) == 16
  assert recipe_zoo.max_components_of(2) == 2
  with pytest.raises(ValueError, match='0 \\(no cap\\) or >= 2'):
    recipe_zoo.max_components_of(1)


def test_unknown_family_is_named():
  with pytest.raises(ValueError, match="'vit'"):
    recipe_zoo.run(['mlp', 'vit'], smoke=True)


_COMMITTED = ('zoo.json', 'zoo_leaf_scale.json', 'zoo_shared.json',
              'zoo_leaf_scale_pi099_mlp_gru.json',
              'zoo_leaf_scale_pi099_cnn.json')


def test_readme_table_is_the_committed_zoo():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  reports = []
  for name in _COMMITTED:
    with open(os.path.join(root, 'results', name)) as f:
      reports.append(json.load(f))
  assert [r['leaf_scale'] for r in reports] == ['rms', 'rms', None, 'rms',
                                                'rms']
  assert [r.get('zero_proportion') for r in reports] == [None] * 3 + [0.99] * 2
  # The defaults cap at 16 values; zoo_leaf_scale.json is run without a cap.
  assert [r.get('max_components') for r in reports] == [16, None, 16, 16, 16]
  with open(os.path.join(root, 'README.md')) as f:
    readme = f.read()
  assert recipe_zoo.format_table(*reports) in readme


def test_tables_from_prints_the_committed_tables(capsys):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  paths = [os.path.join(root, 'results', n) for n in _COMMITTED]
  assert cli.call(recipe_zoo, [f'--tables_from={",".join(paths)}']) == 0
  printed = capsys.readouterr().out
  reports = []
  for path in paths:
    with open(path) as f:
      reports.append(json.load(f))
  assert recipe_zoo.format_table(*reports) in printed
  rows = [l for l in printed.splitlines()
          if l.startswith('| cnn | rms (default) |')]
  assert len(rows) == 4  # Two reports, in each table.
  cnn = reports[0]['families']['cnn']  # Its row in the stages table:
  assert f'{100 * cnn["quantized_initial"]["valid"]:.2f}%' in rows[2]
