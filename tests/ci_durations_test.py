"""`python -m benchmarks.ci_durations LOG`: the CI time tables from a log."""

import pytest

from benchmarks import ci_durations
from experiments.infra import cli

_LOG = """\
+ .ci/colab-compat
============================== slowest durations ===============================
12.50s call     tests/a_test.py::test_one
2.25s setup    tests/a_test.py::test_one
0.75s teardown tests/a_test.py::test_one
4.00s call     tests/b_test.py::test_two[x]
========================= 3 passed in 20.50s =========================
+ echo 'compatibility leg: 90 s'
compatibility leg: 90 s
============================== slowest durations ===============================
30.00s call     tests/c_test.py::test_three
1.00s call     tests/a_test.py::test_one
7.00s setup    tests/b_test.py::test_two[y]
1012 passed, 19 warnings in 41.00s (0:00:41)
+ echo 'both legs: 300 s'
both legs: 300 s
"""


def test_legs_modules_and_tests_add_up(tmp_path):
  compat, main = ci_durations.parse(_LOG)
  assert (compat.name, compat.wall_s, compat.passed, compat.pytest_s) == (
      'compatibility', 90, 3, 20.5)
  assert (main.name, main.wall_s, main.passed, main.pytest_s) == (
      'main', 210, 1012, 41.0)
  # setup + call + teardown of one test: 12.5 + 2.25 + 0.75.
  assert compat.tests['tests/a_test.py::test_one'] == 15.5
  assert dict(compat.modules) == {'tests/a_test.py': 15.5,
                                  'tests/b_test.py': 4.0}
  assert dict(main.modules) == {'tests/c_test.py': 30.0,
                                'tests/a_test.py': 1.0,
                                'tests/b_test.py': 7.0}
  text = ci_durations.report([compat, main], top=2)
  assert '| compatibility | 90 | 20 | 3 | 20 |' in text
  assert '| main | 210 | 41 | 1,012 | 38 |' in text
  # Two rows per table, longest first; c (30 s) before b (7 s), a left out.
  main_modules = text.split('main: modules by summed time')[1]
  rows = [l for l in main_modules.splitlines() if l.startswith('| tests/')]
  assert rows[:2] == ['| tests/c_test.py | 30.0 |', '| tests/b_test.py | 7.0 |']
  # The entry point prints the same tables.
  path = tmp_path / 'ci.log'
  path.write_text(_LOG)
  assert cli.call(ci_durations, [str(path), '--top=2']) == 0


def test_one_pytest_run_is_one_leg():
  (leg,) = ci_durations.parse('3.0s call tests/a_test.py::t\n1 passed in 3.1s')
  assert leg.name == 'tests' and leg.wall_s is None and leg.passed == 1


def test_bad_input():
  with pytest.raises(ValueError, match='no pytest durations'):
    ci_durations.parse('1 passed in 2.0s\n')
  legs = ci_durations.parse(_LOG)
  with pytest.raises(ValueError, match='--top must be >= 1'):
    ci_durations.report(legs, top=0)
