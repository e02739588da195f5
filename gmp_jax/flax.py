"""Adapters from Flax models with state to gmp_jax's stateful steps.

Optional: `import gmp_jax.flax` (needs Flax); `import gmp_jax` alone imports
no Flax.

`gmp_jax.make_train_step(..., stateful=True)` and
`gmp_jax.make_eval_step(..., stateful=True)` take

  apply_fn(params, model_state, x, *, train, rng) -> (outputs, new_model_state)

where `model_state` is everything the model carries besides its parameters
(BatchNorm statistics, RNG counters) and `rng` is the step's key
(`jax.random.fold_in(jax.random.key(seed), state.step)`; None in eval).
These two adapters build such an `apply_fn`:

Flax Linen::

  variables = model.init(key, x0, train=False)
  params = variables['params']
  model_state = {'batch_stats': variables['batch_stats']}
  apply_fn = linen_apply(model)            # every model_state collection mutable

Flax NNX::

  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  apply_fn = nnx_apply(graphdef)           # merge, run, split again
  ...
  model = nnx.merge(graphdef, quantized_params, model_state)

then

  state = gmp_jax.create_train_state(params, mixture, tx,
                                     model_state=model_state)
  step = gmp_jax.make_train_step(apply_fn, tx, ..., stateful=True, seed=0)

Errors name what is missing: a collection the model needs but that was not
passed (or not mutable), an RNG stream it needs, or RNG streams that do not
match `rng_streams`.
"""

from __future__ import annotations

from collections.abc import Sequence
import re
from typing import Any

import flax.errors
import jax
from flax import nnx

__all__ = ('linen_apply', 'nnx_apply')

_COLLECTION = re.compile(r'collection "([^"]+)"')
_RNG = re.compile(r'PRNG for "([^"]+)"')


def _reraise_flax(e: Exception, mutable: Sequence[str],
                  rng_names: Sequence[str]):
  text = str(e)
  if isinstance(e, flax.errors.InvalidRngError) and _RNG.search(text):
    name = _RNG.search(text).group(1)
    raise ValueError(
        f'The model needs the RNG stream {name!r}, which was not passed '
        f'(rngs={tuple(rng_names)}); use linen_apply(model, rngs=(..., '
        f'{name!r})). Flax said: {text}') from e
  match = _COLLECTION.search(text)
  if match:
    name = match.group(1)
    raise ValueError(
        f'The model needs the collection {name!r}, which was not passed as '
        f'mutable model state (mutable={tuple(mutable)}). Pass its initial '
        f"value in model_state (e.g. {{{name!r}: variables[{name!r}]}}) to "
        'create_train_state(..., model_state=...). Flax said: '
        f'{text}') from e
  raise e


def linen_apply(model, *, mutable: Sequence[str] | None = None,
                rngs: Sequence[str] = ('dropout',),
                train_kwarg: str | None = 'train'):
  """Stateful `apply_fn` for a Flax Linen module.

  Args:
    model: the Linen module; called as `model.apply(variables, x,
      **{train_kwarg: train}, mutable=..., rngs=...)`.
    mutable: the collections updated in training; None makes every
      collection of `model_state` mutable.
    rngs: names of the RNG streams the model draws from in training
      (dropout); each gets `jax.random.fold_in(rng, i)`.
    train_kwarg: the module's train/eval keyword, or None if it has none.

  Returns:
    `apply_fn(params, model_state, x, *, train, rng) -> (outputs,
    new_model_state)`; in eval (`train=False`) nothing is mutable, no RNG
    is passed and the state comes back unchanged.
  """
  rng_names = tuple(rngs)

  def apply_fn(params, model_state, x, *, train: bool, rng=None):
    model_state = {} if model_state is None else dict(model_state)
    names = list(model_state) if mutable is None else list(mutable)
    variables = {'params': params, **model_state}
    kwargs = {train_kwarg: train} if train_kwarg else {}
    try:
      if not train:
        return model.apply(variables, x, **kwargs), model_state
      streams = ({} if rng is None else
                 {n: jax.random.fold_in(rng, i)
                  for i, n in enumerate(rng_names)})
      outputs, updated = model.apply(variables, x, mutable=names,
                                     rngs=streams, **kwargs)
    except flax.errors.FlaxError as e:
      _reraise_flax(e, names, rng_names)
    return outputs, {**model_state, **updated}

  return apply_fn


def _rng_streams(model) -> list[Any]:
  return [node for _, node in nnx.iter_graph(model)
          if isinstance(node, nnx.RngStream)]


def nnx_apply(graphdef, *, rng_streams: Sequence[str] = ('dropout',)):
  """Stateful `apply_fn` for a Flax NNX module split as
  `graphdef, params, model_state = nnx.split(model, nnx.Param, ...)`.

  Each call merges the module, sets `train()` / `eval()`, reseeds the RNG
  streams named `rng_streams` with the step's key (training only), runs it,
  and splits the state again; `params` must hold only `nnx.Param`s.

  Args:
    graphdef: the first output of `nnx.split`.
    rng_streams: tags of the module's RNG streams to reseed from the step's
      key (stream i gets `jax.random.fold_in(rng, i)`).

  Returns:
    `apply_fn(params, model_state, x, *, train, rng) -> (outputs,
    new_model_state)`.

  Raises:
    ValueError (when called): the module has RNG streams but none is named
      in `rng_streams`; the error lists the module's stream tags.
  """
  wanted = tuple(rng_streams)

  def apply_fn(params, model_state, x, *, train: bool, rng=None):
    # copy=True: fresh variables, owned by the current trace (the states may
    # come from an outer jit or grad trace).
    model = nnx.merge(graphdef, params, model_state, copy=True)
    if not train:
      model.eval()
      return model(x), model_state
    model.train()
    if rng is not None:
      tags = sorted({s.tag for s in _rng_streams(model)})
      chosen = [t for t in wanted if t in tags]
      if tags and not chosen:
        raise ValueError(
            f'The model has the RNG streams {tags} but none of '
            f'rng_streams={wanted}; use nnx_apply(graphdef, '
            f'rng_streams={tuple(tags)}) or build the model with '
            'nnx.Rngs(params=..., dropout=...).')
      nnx.reseed(model, **{t: jax.random.fold_in(rng, i)
                           for i, t in enumerate(wanted) if t in tags})
    outputs = model(x)
    _, _, new_state = nnx.split(model, nnx.Param, ...)
    return outputs, new_state

  return apply_fn
