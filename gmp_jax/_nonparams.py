"""Model state: recognising its leaves, checking what a model returns.

BatchNorm statistics, RNG keys and counters live beside the weights in the
trees of the common libraries, but the prior must never cover them and the
optimiser must never update them. They are recognised without importing any
of those libraries:

* a PRNG key array (`jax.random.key`), wherever it is;
* a top-level entry of a Flax Linen variables dict named after a state
  collection (`'batch_stats'`, `'cache'`, `'intermediates'`);
* a Flax NNX variable that is not a `Param` (`BatchStat`, `RngKey`,
  `RngCount`, `Cache`, `Intermediate`, ...), recognised by its class names.

`apply_stateful` calls a stateful `apply_fn` and checks that the state it
returns has the leaves, shapes and dtypes that went in.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

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


def _leaf_table(tree) -> dict[str, Any]:
  return {jax.tree_util.keystr(p): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def apply_stateful(apply_fn, params, model_state, x, *, train, rng):
  """Calls a stateful `apply_fn`; returns outputs and the checked new state.

  The new state is put back into the old state's tree structure, so the
  train state keeps one structure across steps.

  Raises:
    TypeError: `apply_fn` did not return `(outputs, new_model_state)`.
    ValueError: the returned state added, dropped or reshaped leaves; the
      error names them.
  """
  out = apply_fn(params, model_state, x, train=train, rng=rng)
  if not (isinstance(out, tuple) and len(out) == 2):
    raise TypeError(
        'With stateful=True, apply_fn must return (outputs, new_model_state); '
        f'it returned a {type(out).__name__}.')
  outputs, new_state = out
  old, new = _leaf_table(model_state), _leaf_table(new_state)
  added = [p for p in new if p not in old]
  if added:
    raise ValueError(
        'apply_fn returned model state that was not passed in: '
        f'{", ".join(added[:6])}{" ..." if len(added) > 6 else ""}. Give the '
        "model's initial state (e.g. Linen {'batch_stats': "
        "variables['batch_stats']}) to create_train_state(..., "
        'model_state=...).')
  dropped = [p for p in old if p not in new]
  if dropped:
    raise ValueError(
        'apply_fn did not return these model state leaves: '
        f'{", ".join(dropped[:6])}{" ..." if len(dropped) > 6 else ""}; a '
        "stateful apply_fn returns the whole state (Linen: mutable=[...] must "
        'name every collection passed in).')
  for p, a in old.items():
    b = new[p]
    if (jnp.shape(a), jnp.result_type(a)) != (jnp.shape(b),
                                              jnp.result_type(b)):
      raise ValueError(
          f'apply_fn changed model state leaf {p} from {jnp.shape(a)} '
          f'{jnp.result_type(a)} to {jnp.shape(b)} {jnp.result_type(b)}.')
  new_state = jax.tree.unflatten(jax.tree.structure(model_state),
                                 [new[p] for p in old])
  return outputs, new_state
