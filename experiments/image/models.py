"""Flax models for the MNIST experiments: the poster's net, LeNet-300-100, LeNet-5.

The three are registered in `experiments.infra.registry` (with their display
names and published anchors); a new model plugs in with
`registry.register_model(name, constructor, ...)`, the constructor taking
the dataset's `registry.DatasetEntry` (its input shape and number of
outputs).

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

from collections.abc import Callable, Mapping, MutableMapping, Sequence
import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.infra import registry

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


def with_outputs(layers: Sequence[LayerSpec], num_outputs: int
                 ) -> tuple[LayerSpec, ...]:
  """`layers` with the last layer resized to `num_outputs` units."""
  *body, last = layers
  return (*body, dataclasses.replace(last, features=int(num_outputs)))


def _sequential(cls: type[SequentialNet]):
  """Constructor `info -> cls` sized for the dataset's outputs."""

  def build(info: registry.DatasetEntry) -> SequentialNet:
    if info.num_outputs == cls.layers[-1].features:
      return cls()
    return cls(layers=with_outputs(cls.layers, info.num_outputs))

  return build


# Published anchors (Ullrich et al. 2017, Table 1; Oktay et al. 2020;
# Louizos et al. 2017; Havasi et al. 2019; the poster; the Keras tutorial of
# soft weight-sharing), shown by experiments/tools/compare.py and sweep.py.
# `counts` says what the compression figure counts and so which column it
# belongs to: 'file' -> CR_file, 'analytic' -> CR_Han, 'sparsity' ->
# |W| / |W!=0|.
POSTER_FIGURES = {'original': 0.9879, 'retrained': 0.9859, 'pruned': 0.9814,
                  'sparsity': 0.923}  # The poster's Tables 1 and 2.
_Anchor = registry.Anchor
registry.register_model(
    'lenet300100', _sequential(LeNet300100), display_name='LeNet-300-100',
    aliases=('lenet300',), parameters=266_610,
    results_dir='results/lenet300', benchmark='lenet300', anchors=(
        _Anchor('SWS (Ullrich et al. 2017)', error=0.0194, compression=64,
                counts='analytic', note='Han-style'),
        _Anchor('EPR (Oktay et al. 2020)', error=0.019, compression=124,
                counts='file', file='8.56 KB', note='real bitstream')))
registry.register_model(
    'lenet5caffe', _sequential(LeNet5Caffe), display_name='LeNet-5-Caffe',
    aliases=('lenet5',), parameters=431_080, results_dir='results/lenet5',
    benchmark='lenet5', anchors=(
        _Anchor('SWS (Ullrich et al. 2017)', error=0.0097, compression=162,
                counts='analytic', note='Han-style'),
        _Anchor('Bayesian Compression (Louizos et al. 2017)', error=0.010,
                compression=419, counts='analytic', note='analytic'),
        _Anchor('EPR (Oktay et al. 2020)', error=0.010, compression=606,
                counts='file', file='2.84 KB', note='real bitstream'),
        _Anchor('MIRACLE (Havasi et al. 2019)', error=0.0096,
                compression=1110, counts='file', file='1.52 kB',
                note='encoded length')))
registry.register_model(
    'poster', _sequential(PosterNet), display_name='Poster net',
    aliases=('posternet',), parameters=642_460, results_dir='results/mnist',
    benchmark='poster', anchors=(
        _Anchor('SWS poster (Ullrich et al.)',
                error=1 - POSTER_FIGURES['pruned'],
                error_reference=1 - POSTER_FIGURES['original'],
                compression=1 / (1 - POSTER_FIGURES['sparsity']),
                counts='sparsity', note='non-zero count'),
        _Anchor('SWS Keras tutorial', error=1 - 0.9902,
                compression=1 / 0.0743, counts='sparsity',
                note='non-zero count')))
register_model = registry.register_model
# The built-in models (`registry.MODELS` lists every registered one).
MODEL_NAMES = ('poster', 'lenet300100', 'lenet5caffe')
# What a model instance is sized for when no dataset is named.
DEFAULT_DATASET = 'mnist'


class _ModelTable(MutableMapping):
  """`_MODELS`, the table of earlier versions, as a view of the registry.

  `_MODELS[name]()` builds the model for its default dataset, and
  `_MODELS[name] = cls` registers `cls()` under `name`; new code calls
  `registry.register_model`.
  """

  def __getitem__(self, name):
    return registry.model(name).build

  def __setitem__(self, name, cls):
    registry.register_model(name, lambda info: cls(), replace=True)

  def __delitem__(self, name):
    raise TypeError('Registered models cannot be removed.')

  def __iter__(self):
    return iter(registry.MODELS)

  def __len__(self):
    return len(registry.MODELS)


_MODELS = _ModelTable()


def _canonical_name(name: str) -> str:
  """The registered name `name` means (ValueError: unknown)."""
  return registry.MODELS.name_of(name)


def get_model(name: str, dataset: str | registry.DatasetEntry | None = None
              ) -> nn.Module:
  """Returns a registered model by name, sized for `dataset`.

  Args:
    name: ``'poster'``, ``'lenet300100'``, ``'lenet5caffe'`` or any name
      given to `registry.register_model`; case, ``-`` and ``_`` are
      ignored, and ``'lenet300'``/``'lenet5'`` are aliases.
    dataset: the dataset (a registered name or entry) whose outputs the
      model predicts; None: the model's default dataset (MNIST).

  Raises:
    ValueError: unknown name.
  """
  return registry.model(name).build(dataset)


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
  net = model if isinstance(model, nn.Module) else get_model(model)
  if not isinstance(net, SequentialNet):
    raise ValueError(f'{model!r} is not a SequentialNet of LayerSpecs.')
  return tuple(net.layers)


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


def init_params(model: str | nn.Module, rng: jax.Array,
                input_shape: Sequence[int] | None = None, *,
                dataset: str | registry.DatasetEntry | None = None
                ) -> Params:
  """Initial parameter dict (without the ``'params'`` wrapper).

  Jitted: one compilation instead of one per initialiser op (the same
  values as an eager `model.init`, bit for bit; `tests/models_test.py`).

  Args:
    model: a registered model name (built for `dataset`) or a module.
    rng: the key of the initialisers.
    input_shape: the dummy input's shape; None: one example of `dataset`,
      ``(1, *input_shape)`` in its input dtype.
    dataset: a registered dataset name or entry; None: the model's default
      dataset (`DEFAULT_DATASET` for a module).
  """
  if isinstance(model, nn.Module):
    info = registry.dataset(DEFAULT_DATASET) if dataset is None else dataset
  else:
    entry = registry.model(model)
    info = entry.default_dataset if dataset is None else dataset
    model = entry.build(info)
  if isinstance(info, str):
    info = registry.dataset(info)
  dtype = jnp.float32 if input_shape is not None else info.input_dtype
  if input_shape is None:
    input_shape = (1, *info.input_shape)
  return jax.jit(model.init)(rng, jnp.zeros(input_shape, dtype))['params']
