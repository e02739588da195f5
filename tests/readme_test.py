"""README.md and results/README.md say what the repository holds.

CI runs the README's test command; the API section lists the public names;
every table of committed figures is reformatted here from the JSON it came
from; every relative link and image resolves.
"""

import json
import os
import re

import pytest

import gmp_jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
RESULTS_README = os.path.join(REPO, 'results', 'README.md')


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def _readme_commands():
  return re.findall(r'```bash\n(.+?)\n```', _read(README))


def _section(text, heading):
  """The body of the `## heading` section, up to the next `## `."""
  return text.split(f'## {heading}\n', 1)[1].split('\n## ', 1)[0]


def _table(text, header_start):
  """Rows (lists of stripped cells) of the table whose header starts so."""
  lines = text.splitlines()
  start = next(i for i, line in enumerate(lines)
               if line.startswith(header_start))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append([c.strip() for c in line.strip().strip('|').split('|')])
  return rows


def _report(run):
  return json.loads(_read(os.path.join(REPO, 'results', run, 'report.json')))


def _pct(x, digits=2):
  return f'{100 * x:.{digits}f}%'


def test_readme_opens_with_two_commands():
  commands = _readme_commands()
  assert len(commands) >= 2
  main, tests = commands[:2]
  assert 'python -m experiments.mnist' in main
  assert 'pytest' in tests


def test_ci_runs_the_readme_test_command():
  ci = _read(os.path.join(REPO, '.ci', 'run')).strip().splitlines()
  assert ci[-1] == _readme_commands()[1]


def test_readme_sections_come_in_order():
  headings = re.findall(r'^## (.+)$', _read(README), flags=re.M)
  assert headings == ['Quickstart', 'Compress your own model',
                      'Use it in your own model', 'Run it compressed', 'API',
                      'Results', 'Experiments CLI', 'Scaling out', 'Colab',
                      'Development']


def test_api_section_lists_exactly_the_public_names():
  rows = _table(_section(_read(README), 'API'), '| Stage |')
  listed = set()
  for row in rows:
    listed.update(re.findall(r'`([A-Za-z_]\w*)', row[1]))
  assert set(gmp_jax.__all__) <= listed, set(gmp_jax.__all__) - listed
  assert listed <= set(gmp_jax.__all__), listed - set(gmp_jax.__all__)
  assert [row[0] for row in rows] == [
      'prior', 'losses', 'optimiser', 'train steps',
      'calibration and diagnostics', 'post-processing',
      'fine-tuning', 'file', 'packed', 'report']


def test_literature_table_is_what_compare_prints(monkeypatch):
  from experiments.tools import compare  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(REPO)  # compare names the runs by relative paths.
  assert compare.literature_table().strip() in _read(README)
  run_dirs = ['results/mnist', 'results/mnist_v1', 'results/mnist_tau5e-3',
              'results/mnist_layerwise']
  assert compare.table(run_dirs).strip() in _read(RESULTS_README)


def test_table1_is_the_committed_report():
  rows = _table(_read(RESULTS_README), '| Layer | Shape |')
  report = _read(os.path.join(REPO, 'results', 'mnist', 'report.md'))
  assert len(rows) == 5
  for row in rows:
    assert '| ' + ' | '.join(row) + ' |' in report


def test_seed_table_is_the_committed_reports():
  rows = _table(_read(RESULTS_README), '| seed | teacher |')
  runs = {'0 (`results/mnist`)': 'mnist', '1': 'mnist_seeds/seed1',
          '2': 'mnist_seeds/seed2'}
  assert [row[0] for row in rows] == list(runs)
  for row in rows:
    r = _report(runs[row[0]])
    t2 = r['table2']
    assert row[1:] == [
        _pct(t2['original']), _pct(t2['pruned']), _pct(t2['finetuned']),
        _pct(r['nonzero_fraction'], 3), f"{r['file_bytes']:,} B",
        f"{r['cr_file']:.1f}×"]


def test_sweep_table_is_the_committed_sweep():
  rows = _table(_read(RESULTS_README), '| τ | pruned |')
  sweep = json.loads(_read(os.path.join(REPO, 'results', 'mnist_sweep',
                                        'sweep.json')))
  assert len(rows) == len(sweep['points']) == 5
  for row, p in zip(rows, sweep['points']):
    assert float(row[0]) == p['overrides']['retrain.tau']
    assert row[1:] == [
        _pct(p['pruned_accuracy']), f"**{_pct(p['finetuned_accuracy'])}**",
        _pct(p['nonzero_fraction']), f"{p['file_bytes']:,} B",
        f"{p['cr_file']:.1f}×"]


def test_fashion_mnist_table_is_the_committed_report():
  (row,) = _table(_read(RESULTS_README), '| | Teacher |')
  r = _report('fashion_mnist')
  t2 = r['table2']
  assert row == [
      'Fashion-MNIST', _pct(t2['original']), _pct(t2['retrained']),
      _pct(t2['pruned']), _pct(t2['finetuned']),
      _pct(r['nonzero_fraction']), f"{r['file_bytes']:,} B",
      f"{r['cr_file']:.1f}×", f"{r['cr_han']:.1f}×"]


def test_speed_table_is_the_committed_benchmark():
  rows = _table(_read(RESULTS_README), '| batch | jax_plain |')
  bench = json.loads(_read(os.path.join(REPO, 'results',
                                        'train_step_cpu.json')))
  ms = {(r['config'], r['batch_size']): r['ms_per_step']
        for r in bench['results']}
  assert [row[0] for row in rows] == ['128', '256']
  for row in rows:
    b = int(row[0])
    assert row[1:] == [
        *(f'{ms[(c, b)]:.1f} ms' for c in
          ('jax_plain', 'jax_gmp', 'torch_plain', 'torch_gmp')),
        f"{bench['ratios'][f'jax_gmp/torch_gmp@{b}']:.2f}",
        f"{bench['ratios'][f'jax_gmp/jax_plain@{b}']:.2f}"]


def test_codec_tables_are_what_the_benchmark_prints(tmp_path):
  from benchmarks import codec as codec_benchmark  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'model.gmpz')
  gmp_jax.save_compressed(path, codec_benchmark.poster_params())
  markdown = gmp_jax.compression_report(path=path).to_markdown().strip()
  assert markdown in _read(RESULTS_README)


def _slug(heading):
  """GitHub's anchor of a heading: lower case, punctuation dropped."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


@pytest.mark.parametrize('path', [
    README, RESULTS_README, os.path.join(REPO, 'docs', 'recipe.md'),
    os.path.join(REPO, 'docs', 'frameworks.md')])
def test_relative_links_resolve(path):
  text = _read(path)
  links = re.findall(r'\]\(([^)\s]+)\)', text)
  relative = [l for l in links if not re.match(r'[a-z]+://', l)]
  assert relative
  for link in relative:
    target, _, anchor = link.partition('#')
    target = os.path.normpath(os.path.join(os.path.dirname(path), target)
                              if target else path)
    assert os.path.exists(target), link
    if anchor:
      headings = re.findall(r'^#+ (.+)$', _read(target), flags=re.M)
      assert anchor in {_slug(h) for h in headings}, link


@pytest.mark.parametrize('run', ['shakespeare', 'shakespeare_converged',
                                 'shakespeare_converged_rms'])
def test_baselines_tables_are_the_committed_ones(run):
  table = _read(os.path.join(REPO, 'results', run, 'baselines.md'))
  assert table.strip() in _read(RESULTS_README)
  data = json.load(open(os.path.join(REPO, 'results', run, 'baselines.json')))
  assert table.splitlines()[2].startswith('| teacher | '
                                          f"{data['rows'][0]['bits_per_byte']:.4f}")


def test_shakespeare_headline_is_its_baselines_row():
  data = json.load(open(os.path.join(REPO, 'results', 'shakespeare',
                                     'baselines.json')))
  report = json.load(open(os.path.join(REPO, 'results', 'shakespeare',
                                       'report.json')))
  (row,) = [r for r in data['rows'] if r['name'] == 'gmp_jax']
  assert row['file_bytes'] == report['file_bytes']
  assert row['bits_per_byte'] == pytest.approx(report['table2']['finetuned'])
  readme = _read(README)
  assert f"{row['bits_per_byte']:.3f} bits per byte" in readme
  assert f"{row['file_bytes']:,}-byte file" in readme
