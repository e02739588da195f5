"""Recognising leaves that are model state rather than parameters.

BatchNorm statistics, RNG keys and counters live beside the weights in the
trees of the common libraries, but the prior must never cover them and the
optimiser must never update them. They are recognised without importing any
of those libraries:

* a PRNG key array (`jax.random.key`), wherever it is;
* a top-level entry of a Flax Linen variables dict named after a state
  collection (`'batch_stats'`, `'cache'`, `'intermediates'`);
* a Flax NNX variable that is not a `Param` (`BatchStat`, `RngKey`,
  `RngCount`, `Cache`, `Intermediate`, ...), recognised by its class names.
"""

from __future__ import annotations

from typing import Any

import jax

# Flax Linen collections that hold state, not parameters.
LINEN_STATE_COLLECTIONS = ('batch_stats', 'cache', 'intermediates')


def _class_names(x: Any) -> list[str]:
  return [c.__name__ for c in type(x).__mro__]


def _is_nnx_variable(x: Any) -> bool:
  return (type(x).__module__.startswith('flax.')
          and 'Variable' in _class_names(x))


def _is_prng_key(leaf: Any) -> bool:
  dtype = getattr(leaf, 'dtype', None)
  try:
    return dtype is not None and jax.dtypes.issubdtype(
        dtype, jax.dtypes.prng_key)
  except TypeError:
    return False


def non_parameter_leaves(tree) -> dict[str, str]:
  """`{path: what it is}` for the leaves of `tree` that are model state.

  Paths are `jax.tree_util.keystr` strings, as in a mixture's signature.
  """
  found = {}
  nodes = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=_is_nnx_variable)[0]
  for path, node in nodes:
    if _is_nnx_variable(node):
      if 'Param' in _class_names(node):
        continue
      for sub, _ in jax.tree_util.tree_flatten_with_path(node)[0]:
        found[jax.tree_util.keystr(path + sub)] = (
            f'an NNX {type(node).__name__} variable')
      continue
    name = jax.tree_util.keystr(path)
    if _is_prng_key(node):
      found[name] = 'a PRNG key'
    elif (path and isinstance(path[0], jax.tree_util.DictKey)
          and path[0].key in LINEN_STATE_COLLECTIONS):
      found[name] = f'in the Linen collection {path[0].key!r}'
  return found


def check_no_state_leaves(tree, *, what: str, hint: str) -> None:
  """Raises ValueError naming the model-state leaves of `tree`, if any."""
  found = non_parameter_leaves(tree)
  if found:
    listed = ', '.join(f'{p} ({kind})' for p, kind in list(found.items())[:4])
    more = f' and {len(found) - 4} more' if len(found) > 4 else ''
    raise ValueError(
        f'{what} holds model state, not parameters: {listed}{more}. '
        f'{hint}')
