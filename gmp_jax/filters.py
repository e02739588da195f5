"""Which leaves the mixture prior covers: named filters and regex rules.

A filter is `(path, leaf) -> bool`, `path` the tuple of jax key entries of
the leaf (`jax.tree_util.keystr(path)` gives ``"['blocks'][0]['fc1']
['kernel']"``). Every function that takes a `filter_fn` also takes the name
of one of these (`resolve`):

=================  =========================================================
``'default'``      ``'no_norm'``
``'no_norm'``      floating leaves outside normalisation layers: a path key
                   that matches `NORM_PATTERN` (LayerNorm, BatchNorm,
                   RMSNorm, ``ln_f``, ``bn1``, ...) leaves the leaf out.
                   Their scales sit near 1 and would stretch the range the
                   mixture's means spread over.
``'kernels'``      floating leaves of rank >= 2 (weight matrices, conv
                   kernels, embedding tables): no biases, no norm scales.
``'no_embedding'`` ``'no_norm'`` without embedding tables (a path key that
                   matches ``embed``).
``'all_floating'`` every floating-point leaf (the default before 0.2; the
                   MNIST configs pin it).
=================  =========================================================

`regex` builds a filter from regular expressions on the path string, the
way rule-based quantisers pick layers without touching the model code::

  gmp_jax.init_mixture(params, filter_fn=gmp_jax.filters.regex(
      include=r'blocks', exclude=r'ln|bias'))

Leaves a filter leaves out are stored raw (at full precision) in the
compressed file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import re
from typing import Any

import jax
import jax.numpy as jnp

FilterFn = Callable[[tuple, Any], bool]

# A path key names a normalisation layer when it matches (case ignored).
NORM_PATTERN = re.compile(
    r'norm|^ln(_?\d+|_f|_final|_out)?$|^(bn|gn)_?\d*$', re.IGNORECASE)
EMBED_PATTERN = re.compile(r'embed', re.IGNORECASE)


def _key_names(path: tuple) -> list[str]:
  names = []
  for entry in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
    else:
      names.append(str(entry))
  return names


def is_floating(path: tuple, leaf: Any) -> bool:
  """Every floating-point leaf, biases and norm scales included."""
  del path
  return hasattr(leaf, 'dtype') and jnp.issubdtype(leaf.dtype, jnp.floating)


def is_norm(path: tuple) -> bool:
  """Whether a path key names a normalisation layer (`NORM_PATTERN`)."""
  return any(NORM_PATTERN.search(k) for k in _key_names(path))


def no_norm(path: tuple, leaf: Any) -> bool:
  """Floating leaves outside normalisation layers."""
  return is_floating(path, leaf) and not is_norm(path)


def kernels(path: tuple, leaf: Any) -> bool:
  """Floating leaves of rank >= 2 (matrices, kernels, embeddings)."""
  return is_floating(path, leaf) and len(getattr(leaf, 'shape', ())) >= 2


def no_embedding(path: tuple, leaf: Any) -> bool:
  """`no_norm` without embedding tables (a key matching ``embed``)."""
  return no_norm(path, leaf) and not any(
      EMBED_PATTERN.search(k) for k in _key_names(path))


def regex(include: str | Sequence[str] | None = None,
          exclude: str | Sequence[str] | None = None, *,
          base: str | FilterFn = 'all_floating') -> FilterFn:
  """A filter from regular expressions on `jax.tree_util.keystr(path)`.

  A leaf is covered when `base` covers it, some `include` pattern matches
  its path (any leaf when `include` is None) and no `exclude` pattern does
  (`re.search`).

  Raises:
    re.error: a pattern does not compile.
  """
  def compile_all(patterns):
    if patterns is None:
      return None
    if isinstance(patterns, str):
      patterns = [patterns]
    return [re.compile(p) for p in patterns]

  included, excluded = compile_all(include), compile_all(exclude)
  base_fn = resolve(base)

  def fn(path, leaf):
    if not base_fn(path, leaf):
      return False
    name = jax.tree_util.keystr(path)
    if included is not None and not any(p.search(name) for p in included):
      return False
    return not (excluded and any(p.search(name) for p in excluded))

  return fn


FILTERS: dict[str, FilterFn] = {
    'no_norm': no_norm,
    'kernels': kernels,
    'no_embedding': no_embedding,
    'all_floating': is_floating,
}
DEFAULT = 'no_norm'


def resolve(filter_fn: str | FilterFn | None) -> FilterFn:
  """The filter a name (`FILTERS`, ``'default'``), function or None means.

  Raises:
    ValueError: an unknown name (the message lists the known ones).
    TypeError: neither a str, a callable nor None.
  """
  if filter_fn is None or filter_fn == 'default':
    return FILTERS[DEFAULT]
  if isinstance(filter_fn, str):
    if filter_fn not in FILTERS:
      raise ValueError(f'Unknown filter {filter_fn!r}; expected one of '
                       f"{('default', *FILTERS)} or a function "
                       '(path, leaf) -> bool.')
    return FILTERS[filter_fn]
  if not callable(filter_fn):
    raise TypeError(f'filter_fn must be a name, a function (path, leaf) -> '
                    f'bool or None, got {type(filter_fn).__name__}.')
  return filter_fn


__all__ = ('DEFAULT', 'FILTERS', 'NORM_PATTERN', 'is_floating', 'is_norm',
           'kernels', 'no_embedding', 'no_norm', 'regex', 'resolve')
