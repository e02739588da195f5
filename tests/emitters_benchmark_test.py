"""`python -m benchmarks.emitters`: compile times under both fusion emitters."""

import json

import pytest

from benchmarks import emitters
from experiments.infra import cli


def test_programs_under_both_settings(tmp_path, capsys):
  out = tmp_path / 'emitters.json'
  assert cli.call(emitters, ['--programs=data', '--json', str(out)]) == 0
  results = json.loads(out.read_text())
  assert results['settings'] == ['default', 'false']
  assert results['pipelines'] == {}
  assert results['command'].startswith('python -m benchmarks.emitters')
  text = capsys.readouterr().out
  for setting in results['settings']:
    programs = results['programs'][setting]
    assert set(programs) == {'data'}
    for timing in programs.values():
      assert timing['lower_s'] > 0 and timing['compile_s'] > 0
  for name in ('data',):
    row = ' | '.join(f"{results['programs'][s][name]['compile_s']:.2f}"
                     for s in results['settings'])
    assert f'| {name} | {row} |' in text


def test_child_environment(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_foo=1 --xla_cpu_use_fusion_emitters=false')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '/nonexistent')
  default = emitters._env('default', optimized=False)  # pylint: disable=protected-access
  assert default['XLA_FLAGS'] == '--xla_foo=1'
  assert default['JAX_DISABLE_MOST_OPTIMIZATIONS'] == '1'
  assert 'JAX_COMPILATION_CACHE_DIR' not in default
  legacy = emitters._env('false', optimized=True)  # pylint: disable=protected-access
  assert legacy['XLA_FLAGS'] == ('--xla_foo=1 '
                                 '--xla_cpu_use_fusion_emitters=false')
  assert legacy['JAX_DISABLE_MOST_OPTIMIZATIONS'] == '0'


def test_unknown_names_are_named():
  with pytest.raises(ValueError, match='no_such_config'):
    emitters.run(pipelines=('no_such_config',))
  with pytest.raises(ValueError, match='no_such_program'):
    emitters.run(programs=('no_such_program',))
