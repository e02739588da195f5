"""Trees of the compressed file formats: nested dicts, lists, tuples, None.

`flatten` turns a tree into a node (the version-1 JSON form, which the
version-2 writer walks too) and a list of its array leaves, kept as given
(a writer gathers one at a time with `as_array`); `unflatten` is
its inverse. A node is ``['d', [[key, node], ...]]`` (dict), ``['l',
[...]]`` (list), ``['t', [...]]`` (tuple), ``['n']`` (None), ``['a', i]``
(array leaf i) or ``['v', x]`` (a JSON scalar, metadata only).

Dict keys are `str`, or also `int` (as `flax.nnx.to_pure_dict` writes for
an `nnx.List`) where the caller allows them; each key keeps its type.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gmp_jax.codec import _wire
from gmp_jax.codec._wire import CorruptFileError


def path_name(path: tuple) -> str:
  """'/'-joined path of a leaf, '<root>' for the root."""
  return '/'.join(map(str, path)) or '<root>'


def leaf_spec(x, where: str) -> tuple[np.dtype, tuple[int, ...]]:
  """Native-byte-order dtype and shape of a leaf, read without converting it.

  Raises:
    TypeError: `x` is not an array, or its dtype is not storable.
  """
  if not isinstance(x, np.generic) and not (
      hasattr(x, 'shape') and hasattr(x, 'dtype')):
    if isinstance(x, (bool, int, float, complex, str, bytes)):
      raise TypeError(f'{where}: leaf is a Python {type(x).__name__}; '
                      'leaves must be arrays (numpy.ndarray or jax.Array)')
    raise TypeError(f'{where}: unsupported node of type {type(x).__name__}; '
                    'supported: dict, list, tuple, None and arrays')
  dtype = np.dtype(x.dtype)
  _wire.check_dtype(dtype, where)
  if dtype.byteorder not in '=|':
    dtype = dtype.newbyteorder('=')
  return dtype, tuple(int(d) for d in x.shape)


def _gather(x) -> np.ndarray:
  """`np.asarray(x)`; a multi-device `jax.Array` shard by shard.

  `np.asarray` of a sharded `jax.Array` caches the gathered value on the
  array, where the caller's tree would keep it alive; copying each distinct
  shard into a fresh array leaves no such reference behind.
  """
  shards = getattr(x, 'addressable_shards', None)
  if (shards is None or len(shards) < 2
      or not getattr(x, 'is_fully_addressable', False)):
    return np.asarray(x)
  out = np.empty(tuple(x.shape), np.dtype(x.dtype))
  done = set()
  for shard in shards:
    key = tuple((i.start, i.stop, i.step) for i in shard.index)
    if key not in done:
      done.add(key)
      out[shard.index] = np.asarray(shard.data)
  return out


def as_array(x, where: str = '<leaf>') -> np.ndarray:
  """`x` as a native-byte-order NumPy array (no copy of such an array).

  A `jax.Array` is gathered to the host (`_gather`), into an array that
  only the caller holds, so a writer dropping it holds one leaf at a time.
  """
  a = _gather(x)
  _wire.check_dtype(a.dtype, where)
  if a.dtype.byteorder not in '=|':
    a = a.astype(a.dtype.newbyteorder('='))
  return a


def _key(k, where: str, int_keys: bool):
  if isinstance(k, str):
    return k
  if int_keys and isinstance(k, (int, np.integer)) and not isinstance(
      k, (bool, np.bool_)):
    return int(k)
  allowed = 'str or int' if int_keys else 'str'
  raise TypeError(f'{where}: dict keys must be {allowed}, got {k!r} '
                  f'({type(k).__name__})')


def flatten(tree, leaves: list, names: list, *, scalars: bool,
            int_keys: bool = True, path: tuple = ()):
  """Node of `tree`; appends its arrays to `leaves`, their paths to `names`.

  Args:
    tree: the tree.
    leaves: receives the array leaves, depth first, as given (not converted:
      `leaf_spec` reads their dtype and shape, `as_array` gathers one).
    names: receives `path_name` of each leaf.
    scalars: allow JSON scalars (str, int, float, bool) as leaves.
    int_keys: allow int dict keys.
    path: the path of `tree`.

  Raises:
    TypeError: for a node, key or dtype the formats do not support; the
      message names its path.
  """
  where = path_name(path)
  if tree is None:
    return ['n']
  if isinstance(tree, Mapping):
    items = []
    for k, v in tree.items():
      k = _key(k, where, int_keys)
      items.append([k, flatten(v, leaves, names, scalars=scalars,
                               int_keys=int_keys, path=path + (k,))])
    return ['d', items]
  if isinstance(tree, tuple) and hasattr(tree, '_fields'):
    raise TypeError(f'{where}: named tuples are not supported; '
                    'pass `x._asdict()` instead')
  if isinstance(tree, (list, tuple)):
    tag = 'l' if isinstance(tree, list) else 't'
    return [tag, [flatten(v, leaves, names, scalars=scalars,
                          int_keys=int_keys, path=path + (i,))
                  for i, v in enumerate(tree)]]
  if (scalars and isinstance(tree, (bool, int, float, str))
      and not isinstance(tree, np.generic)):
    return ['v', tree]
  try:
    leaf_spec(tree, where)
  except TypeError:
    if not hasattr(tree, 'dtype'):
      raise
    # A dtype NumPy does not name (another framework's tensor): convert.
    tree = as_array(tree, where)
  leaves.append(tree)
  names.append(where)
  return ['a', len(leaves) - 1]


def unflatten(node, leaves: list, names: list, *, path: tuple = ()):
  """Inverse of `flatten`; fills `names[i]` with the path of leaf i."""
  try:
    tag = node[0]
    if tag == 'n':
      return None
    if tag == 'd':
      return {k: unflatten(v, leaves, names, path=path + (k,))
              for k, v in node[1]}
    if tag in ('l', 't'):
      out = [unflatten(v, leaves, names, path=path + (i,))
             for i, v in enumerate(node[1])]
      return out if tag == 'l' else tuple(out)
    if tag == 'v':
      return node[1]
    if tag == 'a':
      names[node[1]] = path_name(path)
      return leaves[node[1]]
  except (IndexError, TypeError, ValueError, KeyError) as e:
    raise CorruptFileError(f'malformed tree node {node!r:.80}') from e
  raise CorruptFileError(f'unknown tree node {tag!r:.20}')


def named_leaves(tree) -> list[tuple[str, np.ndarray]]:
  """`(name, array)` of every array leaf, in the order a file stores them.

  Names are '/'-joined paths (`'dense/kernel'`), as in `LeafInfo.name`.

  Raises:
    TypeError: for a node, key or dtype the file format does not support.
  """
  leaves, names = [], []
  flatten(tree, leaves, names, scalars=False)
  return [(n, as_array(x, n)) for n, x in zip(names, leaves)]
