"""Flax models for the MNIST experiments: the poster's net, LeNet-300-100, LeNet-5.

The models are Flax **Linen** modules. Linen keeps parameters outside the
module as a plain nested dict (``{'conv1': {'kernel', 'bias'}, ...}``), which
the `gmp_jax` pytree API (mixture prior, quantization, codec) consumes as is,
and which `jax.jit`, `jax.grad` and optax handle without any split/merge step.

Each model is a stack of parametric layers described by `LayerSpec`. One layer
*block* is the layer followed by its ReLU and its 2x2 max-pool, if any (dense
blocks first flatten their input). `layer_blocks` exposes every block as a
pure function ``block_fn(layer_params, x) -> y`` for the poster's layer-wise
distillation, and `layer_io` records every block's input and output when the
whole network runs. The modules themselves run the same block code, so
chaining the blocks reproduces ``model.apply`` exactly.

Max-pooling is a reshape followed by a max (`max_pool_2x2`) rather than
``nn.max_pool``: the forward values are identical, and its backward pass on
CPU is much faster than that of ``lax.reduce_window``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One parametric layer and what follows it.

  Attributes:
    name: parameter collection name, e.g. ``'conv1'``.
    kind: ``'conv'`` (VALID padding, stride 1) or ``'dense'``.
    features: output channels or units.
    kernel_size: conv window; ignored for dense layers.
    relu: apply a ReLU after the layer.
    pool: apply a 2x2 max-pool after the ReLU (conv layers only).
  """
  name: str
  kind: str
  features: int
  kernel_size: tuple[int, int] = (1, 1)
  relu: bool = True
  pool: bool = False


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool with stride 2 on NHWC input with even H and W.

  Equal to ``nn.max_pool(x, (2, 2), strides=(2, 2))``, written as a reshape
  and a max because the backward pass of ``reduce_window`` is slow on CPU.
  At exact ties the gradient is shared among the tied inputs instead of going
  to one of them.
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'max_pool_2x2 needs even height and width, got {x.shape}.')
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _layer_module(spec: LayerSpec, name: str | None = None) -> nn.Module:
  if spec.kind == 'conv':
    return nn.Conv(spec.features, spec.kernel_size, padding='VALID',
                   name=name)
  if spec.kind == 'dense':
    return nn.Dense(spec.features, name=name)
  raise ValueError(f'Unknown layer kind {spec.kind!r} in {spec}.')


def _pre(spec: LayerSpec, x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1) if spec.kind == 'dense' else x


def _post(spec: LayerSpec, y: jax.Array) -> jax.Array:
  if spec.relu:
    y = nn.relu(y)
  if spec.pool:
    y = max_pool_2x2(y)
  return y


class SequentialNet(nn.Module):
  """A stack of `LayerSpec` blocks; the base of the concrete models."""
  layers: tuple[LayerSpec, ...] = ()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Logits of shape ``(N, classes)`` for NHWC images ``x``."""
    for spec in self.layers:
      x = _post(spec, _layer_module(spec, name=spec.name)(_pre(spec, x)))
    return x


POSTER_LAYERS = (
    LayerSpec('conv1', 'conv', 25, (5, 5), pool=True),   # 28 -> 24 -> 12
    LayerSpec('conv2', 'conv', 50, (3, 3), pool=True),   # 12 -> 10 -> 5
    LayerSpec('dense1', 'dense', 500),                   # 5*5*50 = 1250
    LayerSpec('dense2', 'dense', 10, relu=False),
)

LENET300100_LAYERS = (
    LayerSpec('dense1', 'dense', 300),
    LayerSpec('dense2', 'dense', 100),
    LayerSpec('dense3', 'dense', 10, relu=False),
)

# Caffe's LeNet: no ReLU after the convolutions.
LENET5CAFFE_LAYERS = (
    LayerSpec('conv1', 'conv', 20, (5, 5), relu=False, pool=True),  # -> 12
    LayerSpec('conv2', 'conv', 50, (5, 5), relu=False, pool=True),  # -> 4
    LayerSpec('dense1', 'dense', 500),                               # 800 in
    LayerSpec('dense2', 'dense', 10, relu=False),
)


class PosterNet(SequentialNet):
  """The poster's MNIST classifier (Table 1), 642,460 parameters.

  conv1 25@5x5 VALID -> ReLU -> pool -> conv2 50@3x3 VALID -> ReLU -> pool ->
  flatten (1250) -> dense1 500 -> ReLU -> dense2 10. Per layer 650 / 11,300 /
  625,500 / 5,010 parameters.
  """
  layers: tuple[LayerSpec, ...] = POSTER_LAYERS


class LeNet300100(SequentialNet):
  """LeNet-300-100: dense 784-300-100-10 with ReLUs, 266,610 parameters."""
  layers: tuple[LayerSpec, ...] = LENET300100_LAYERS


class LeNet5Caffe(SequentialNet):
  """Caffe's LeNet-5, 431,080 parameters.

  conv1 20@5x5 VALID -> pool -> conv2 50@5x5 VALID -> pool -> flatten (800) ->
  dense1 500 -> ReLU -> dense2 10.
  """
  layers: tuple[LayerSpec, ...] = LENET5CAFFE_LAYERS


_MODELS: dict[str, type[SequentialNet]] = {
    'poster': PosterNet,
    'lenet300100': LeNet300100,
    'lenet5caffe': LeNet5Caffe,
}
_ALIASES = {'posternet': 'poster', 'lenet300': 'lenet300100',
            'lenet5': 'lenet5caffe'}
MODEL_NAMES = tuple(_MODELS)


def _canonical_name(name: str) -> str:
  key = str(name).lower().replace('-', '').replace('_', '')
  key = _ALIASES.get(key, key)
  if key not in _MODELS:
    raise ValueError(f'Unknown model {name!r}; expected one of {MODEL_NAMES} '
                     f'(aliases {tuple(_ALIASES)}).')
  return key


def get_model(name: str) -> SequentialNet:
  """Returns a model by name.

  Args:
    name: ``'poster'``, ``'lenet300100'`` or ``'lenet5caffe'``; case, ``-``
      and ``_`` are ignored, and ``'lenet300'``/``'lenet5'`` are aliases.

  Raises:
    ValueError: unknown name.
  """
  return _MODELS[_canonical_name(name)]()


class LayerBlock(NamedTuple):
  """One block for layer-wise training.

  Attributes:
    name: the layer's parameter name, e.g. ``'conv1'``.
    apply: pure ``block_fn(layer_params, x) -> y``, where ``layer_params`` is
      ``params[name]`` (``{'kernel', 'bias'}``).
  """
  name: str
  apply: Callable[[Params, jax.Array], jax.Array]


def _specs(model: str | SequentialNet) -> tuple[LayerSpec, ...]:
  if isinstance(model, SequentialNet):
    return tuple(model.layers)
  return tuple(_MODELS[_canonical_name(model)].layers)


def _make_block_fn(spec: LayerSpec):
  layer = _layer_module(spec)

  def block_fn(layer_params: Params, x: jax.Array) -> jax.Array:
    return _post(spec, layer.apply({'params': layer_params}, _pre(spec, x)))

  return block_fn


def layer_blocks(model: str | SequentialNet) -> tuple[LayerBlock, ...]:
  """The model's blocks in order, one per parametric layer.

  A block is the layer plus its ReLU and max-pool (a dense block flattens its
  input first); the last block returns logits. Chaining all blocks equals
  ``model.apply``:

  >>> x = images
  >>> for block in layer_blocks('poster'):
  ...   x = block.apply(params[block.name], x)  # x is now the logits.

  Args:
    model: a model name accepted by `get_model`, or a model instance.
  """
  return tuple(LayerBlock(s.name, _make_block_fn(s)) for s in _specs(model))


def layer_io(model: str | SequentialNet, params: Params, x: jax.Array
             ) -> dict[str, tuple[jax.Array, jax.Array]]:
  """Input and output of every block while the full network runs on ``x``.

  For layer-wise distillation, ``layer_io(name, teacher_params, x)[layer]``
  is the (input, target) pair the student's ``layer`` is trained on.

  Args:
    model: a model name accepted by `get_model`, or a model instance.
    params: the parameter dict (``variables['params']``; a ``{'params': ...}``
      wrapper is also accepted).
    x: a batch of NHWC images.

  Returns:
    ``{layer_name: (block_input, block_output)}`` in layer order.
  """
  if set(params) == {'params'}:
    params = params['params']
  io = {}
  for block in layer_blocks(model):
    y = block.apply(params[block.name], x)
    io[block.name] = (x, y)
    x = y
  return io


def param_counts(params: Params) -> dict[str, int]:
  """Number of parameters per top-level layer, e.g. ``{'conv1': 650, ...}``."""
  if set(params) == {'params'}:
    params = params['params']
  return {name: sum(int(leaf.size) for leaf in jax.tree.leaves(sub))
          for name, sub in params.items()}


def init_params(model: str | SequentialNet, rng: jax.Array,
                input_shape: Sequence[int] = (1, 28, 28, 1)) -> Params:
  """Initial parameter dict (without the ``'params'`` wrapper).

  Jitted: one compilation instead of one per initialiser op (the same
  values as an eager `model.init`, bit for bit; `tests/models_test.py`).
  """
  if not isinstance(model, nn.Module):
    model = get_model(model)
  return jax.jit(model.init)(rng, jnp.zeros(input_shape, jnp.float32))[
      'params']
