"""Where CI's time goes: per-leg, per-module and slowest-test tables.

  bash .ci/run > ci.log 2>&1
  python -m benchmarks.ci_durations ci.log [--top=10]

Reads the log of `.ci/run` (both legs print pytest's `--durations=0`
table; `.ci/run` prints "compatibility leg: N s" between them and "both
legs: N s" at the end) and prints Markdown: each leg's wall time, its
tests' summed time and pytest's own wall time, then per leg the modules by
summed time (setup + call + teardown) and the `--top` slowest tests. A log
of one pytest run (no leg markers) is read as one leg, "tests".
"""

from __future__ import annotations

import collections
import dataclasses
import re

from absl import flags

from experiments.infra import cli

_DURATION = re.compile(r'^([0-9.]+)s (setup|call|teardown)\s+(\S+)')
_LEG_END = re.compile(r'^compatibility leg: (\d+) s$')
_BOTH = re.compile(r'^both legs: (\d+) s$')
_SUMMARY = re.compile(r'^=*\s*(\d+) passed.* in ([0-9.]+)s')


@dataclasses.dataclass
class Leg:
  name: str
  tests: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  passed: int | None = None
  pytest_s: float | None = None
  wall_s: int | None = None

  @property
  def modules(self) -> collections.Counter:
    out = collections.Counter()
    for test, seconds in self.tests.items():
      out[test.split('::')[0]] += seconds
    return out


def parse(text: str) -> list[Leg]:
  """The legs of a `.ci/run` log (or one leg for a plain pytest log)."""
  legs = [Leg('compatibility')]
  compat_wall = None
  for line in text.splitlines():
    line = line.strip()
    m = _DURATION.match(line)
    if m:
      legs[-1].tests[m.group(3)] += float(m.group(1))
      continue
    m = _SUMMARY.match(line)
    if m:
      legs[-1].passed, legs[-1].pytest_s = int(m.group(1)), float(m.group(2))
      continue
    m = _LEG_END.match(line)
    if m:
      compat_wall = legs[-1].wall_s = int(m.group(1))
      legs.append(Leg('main'))
      continue
    m = _BOTH.match(line)
    if m and compat_wall is not None:
      legs[-1].wall_s = int(m.group(1)) - compat_wall
  if len(legs) == 1:
    legs[0].name = 'tests'
  if not any(leg.tests for leg in legs):
    raise ValueError('no pytest durations in the log: run pytest with '
                     '--durations=0 (.ci/run sets it for both legs).')
  return legs


def _fmt(x) -> str:
  return '–' if x is None else f'{x:,.0f}'


def report(legs: list[Leg], top: int) -> str:
  if top < 1:
    raise ValueError(f'--top must be >= 1, got {top}.')
  lines = ['| leg | wall (s) | pytest (s) | tests | summed test time (s) |',
           '|---|---:|---:|---:|---:|']
  for leg in legs:
    lines.append(f'| {leg.name} | {_fmt(leg.wall_s)} | {_fmt(leg.pytest_s)} '
                 f'| {_fmt(leg.passed)} | {_fmt(sum(leg.tests.values()))} |')
  for leg in legs:
    lines += ['', f'{leg.name}: modules by summed time', '',
              '| module | s |', '|---|---:|']
    lines += [f'| {name} | {s:.1f} |'
              for name, s in leg.modules.most_common(top)]
    lines += ['', f'{leg.name}: the {top} slowest tests', '',
              '| test | s |', '|---|---:|']
    lines += [f'| {name} | {s:.1f} |'
              for name, s in leg.tests.most_common(top)]
  return '\n'.join(lines)


def _define_flags() -> None:
  flags.DEFINE_integer('top', 10, 'Modules and tests shown per leg.')


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    raise SystemExit('usage: python -m benchmarks.ci_durations LOG [--top=N]')
  with open(argv[1], encoding='utf-8', errors='replace') as f:
    print(report(parse(f.read()), flags.FLAGS.top))
  return 0


if __name__ == '__main__':
  cli.run(_define_flags, main)
