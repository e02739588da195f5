"""Atomic file writes: a reader sees the old file or the new one, never half.

`write_atomic` writes to a temporary file in the target's directory,
flushes and fsyncs it, renames it over the target with `os.replace` (atomic
on POSIX and Windows) and fsyncs the directory so that the rename survives a
crash. Every file gmp_jax and its experiments write goes through it.
"""

from __future__ import annotations

from collections.abc import Callable
import os
import tempfile
from typing import BinaryIO, Union

Data = Union[bytes, bytearray, memoryview, str, Callable[[BinaryIO], None]]


def _fsync_directory(directory: str) -> None:
  if not hasattr(os, 'O_DIRECTORY'):  # Windows cannot open a directory.
    return
  fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_atomic(path: str | os.PathLike, data: Data) -> None:
  """Replaces `path` with `data` atomically and durably.

  Missing parent directories are created. The file gets the usual
  permissions, 0o666 minus the umask (not the 0o600 of a temporary file).

  Args:
    path: the file to write.
    data: `bytes`, a `str` (written as UTF-8) or a callable
      `(binary_file) -> None` that writes the contents, e.g.
      `lambda f: np.savez(f, **arrays)`.

  Raises:
    TypeError: `data` is of another type.
    OSError: the write failed; `path` is then unchanged and no temporary
      file is left behind.
  """
  if isinstance(data, str):
    data = data.encode('utf-8')
  if isinstance(data, (bytes, bytearray, memoryview)):
    payload = data
    write = lambda f: f.write(payload)
  elif callable(data):
    write = data
  else:
    raise TypeError('data must be bytes, str or a callable (file) -> None, '
                    f'got {type(data).__name__}.')
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-',
                             suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)  # Read the umask (there is no getter) and restore.
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  _fsync_directory(directory)


__all__ = (
    'write_atomic',
)
