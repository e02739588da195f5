"""README.md and .ci/run stay consistent: CI runs the README's test command."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
  text = open(os.path.join(REPO, 'README.md')).read()
  return re.findall(r'```bash\n(.+?)\n```', text)


def test_readme_opens_with_two_commands():
  commands = _readme_commands()
  assert len(commands) >= 2
  main, tests = commands[:2]
  assert 'python -m experiments.mnist' in main
  assert 'pytest' in tests


def test_ci_runs_the_readme_test_command():
  ci = open(os.path.join(REPO, '.ci', 'run')).read().strip().splitlines()
  assert ci[-1] == _readme_commands()[1]
