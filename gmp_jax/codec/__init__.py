"""The compressed file: real bytes, exact round trip (`gmp_jax.codec`).

`save_compressed` / `load_compressed` write and read a quantised tree,
`load_compressed_with_info` also returns the metadata and every leaf's bit
accounting, `to_bytes` / `from_bytes` do the same in memory (see
`_compressed`). The modules:

* `_compressed`: the public functions, their result types and the bounds.
* `_format_v2`: the written format, its spec, planner, writer and reader.
* `_format_v1`: the version-1 spec and reader (read only).
* `_positions`: the row and column models of the nonzero positions.
* `_ans`: the entropy-coded streams (constriction's ANS coder).
* `_trees`: tree (de)serialisation and key checks.
* `_wire`: varints, reader, dtype codes, CRC.
* `fileio`: `write_atomic`, the atomic writer every file goes through.

`python -m gmp_jax.inspect FILE` prints a file's size report.
"""

from gmp_jax.codec._compressed import CompressedFile
from gmp_jax.codec._compressed import CorruptFileError
from gmp_jax.codec._compressed import FORMAT_VERSION
from gmp_jax.codec._compressed import LeafInfo
from gmp_jax.codec._compressed import MAX_BYTES
from gmp_jax.codec._compressed import MAX_ELEMENTS
from gmp_jax.codec._compressed import READABLE_VERSIONS
from gmp_jax.codec._compressed import from_bytes
from gmp_jax.codec._compressed import load_compressed
from gmp_jax.codec._compressed import load_compressed_with_info
from gmp_jax.codec._compressed import named_leaves
from gmp_jax.codec._compressed import save_compressed
from gmp_jax.codec._compressed import to_bytes

__all__ = (
    'CompressedFile',
    'CorruptFileError',
    'FORMAT_VERSION',
    'LeafInfo',
    'MAX_BYTES',
    'MAX_ELEMENTS',
    'READABLE_VERSIONS',
    'from_bytes',
    'load_compressed',
    'load_compressed_with_info',
    'named_leaves',
    'save_compressed',
    'to_bytes',
)
