"""One command-line style for every `python -m` entry point: absl flags.

An entry point defines its flags in `_define_flags()`, reads them from
`flags.FLAGS` in `main(argv)` (argv: the program name, then the positional
arguments) and ends with

  if __name__ == '__main__':
    cli.run(_define_flags, main)

so the flags exist only when the module runs as a program: importing it next
to another absl program (or several in one test process) defines none, and
two programs may both have `--json` or `--out`. `call(module, argv)` runs an
entry point in this process as its command line would, for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import sys
import types
from typing import Any
from unittest import mock

from absl import app
from absl import flags
from absl.testing import flagsaver

FLAGS = flags.FLAGS


def run(define_flags: Callable[[], None],
        main: Callable[[list[str]], Any]) -> None:
  """Defines the flags, parses `sys.argv` and exits with `main`'s return."""
  define_flags()
  app.run(main)


def call(module: types.ModuleType, argv: Sequence[str]) -> Any:
  """Runs `module.main` as `python -m module ARGV...` would, in this process.

  Defines the module's flags (`module._define_flags`), parses `argv` (no
  program name), calls `main` with the program name and the positional
  arguments, then removes the flags again and restores every other flag.
  `sys.argv` is the command line meanwhile: ml_collections' config flags
  find their `--config.FIELD=VALUE` overrides there. A bad command line
  raises `flags.Error` or `app.UsageError`.
  """
  before = set(FLAGS)
  was_parsed = FLAGS.is_parsed()
  module._define_flags()  # pylint: disable=protected-access
  added = set(FLAGS) - before
  command_line = [module.__name__, *argv]
  try:
    with flagsaver.flagsaver(), mock.patch.object(sys, 'argv', command_line):
      positional = FLAGS(command_line)  # Validates them too.
      return module.main(positional)
  finally:
    for name in added:
      if name in FLAGS:
        delattr(FLAGS, name)
    if not was_parsed:
      FLAGS.unparse_flags()


def command(prog: str) -> str:
  """`python -m PROG` and the flags given on this command line (for the
  reports that record how they were made)."""
  given = {FLAGS[name].serialize() for name in set(FLAGS)
           if FLAGS[name].present}
  return ' '.join([f'python -m {prog}', *sorted(given)])
