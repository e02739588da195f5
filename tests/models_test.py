"""Tests for experiments.image.models: shapes, parameter counts, blocks, pooling."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.image import models

# Per-layer parameter counts; the poster's are its Table 1.
EXPECTED_COUNTS = {
    'poster': {'conv1': 650, 'conv2': 11_300, 'dense1': 625_500,
               'dense2': 5_010},
    'lenet300100': {'dense1': 235_500, 'dense2': 30_100, 'dense3': 1_010},
    'lenet5caffe': {'conv1': 520, 'conv2': 25_050, 'dense1': 400_500,
                    'dense2': 5_010},
}
EXPECTED_TOTALS = {'poster': 642_460, 'lenet300100': 266_610,
                   'lenet5caffe': 431_080}
EXPECTED_IO_SHAPES = {
    'poster': {'conv1': ((28, 28, 1), (12, 12, 25)),
               'conv2': ((12, 12, 25), (5, 5, 50)),
               'dense1': ((5, 5, 50), (500,)),
               'dense2': ((500,), (10,))},
    'lenet300100': {'dense1': ((28, 28, 1), (300,)),
                    'dense2': ((300,), (100,)),
                    'dense3': ((100,), (10,))},
    'lenet5caffe': {'conv1': ((28, 28, 1), (12, 12, 20)),
                    'conv2': ((12, 12, 20), (4, 4, 50)),
                    'dense1': ((4, 4, 50), (500,)),
                    'dense2': ((500,), (10,))},
}


@pytest.fixture(scope='module', name='all_params')
def _all_params():
  return {name: models.init_params(name, jax.random.key(0))
          for name in models.MODEL_NAMES}


def _images(n=3, seed=1):
  return jax.random.uniform(jax.random.key(seed), (n, 28, 28, 1))


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_parameter_counts(all_params, name):
  counts = models.param_counts(all_params[name])
  assert counts == EXPECTED_COUNTS[name]
  assert list(counts) == list(EXPECTED_COUNTS[name])  # Layer order.
  assert sum(counts.values()) == EXPECTED_TOTALS[name]


def test_poster_shapes_match_table1(all_params):
  """Table 1 lists (in, out, h, w) conv and (out, in) dense shapes."""
  p = all_params['poster']
  assert p['conv1']['kernel'].shape == (5, 5, 1, 25)
  assert p['conv2']['kernel'].shape == (3, 3, 25, 50)
  assert p['dense1']['kernel'].shape == (1250, 500)
  assert p['dense2']['kernel'].shape == (500, 10)


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_output_shape(all_params, name):
  model = models.get_model(name)
  logits = jax.jit(model.apply)({'params': all_params[name]}, _images(4))
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_chained_blocks_reproduce_apply(all_params, name):
  params, x = all_params[name], _images()
  want = models.get_model(name).apply({'params': params}, x)
  blocks = models.layer_blocks(name)
  assert [b.name for b in blocks] == list(EXPECTED_COUNTS[name])
  y = x
  for block in blocks:
    y = block.apply(params[block.name], y)
  np.testing.assert_array_equal(y, want)
  # Also under jit, block by block.
  y = x
  for block in blocks:
    y = jax.jit(block.apply)(params[block.name], y)
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_layer_io(all_params, name):
  params, x = all_params[name], _images()
  io = models.layer_io(name, params, x)
  assert list(io) == list(EXPECTED_COUNTS[name])
  shapes = {k: (a.shape[1:], b.shape[1:]) for k, (a, b) in io.items()}
  assert shapes == EXPECTED_IO_SHAPES[name]
  np.testing.assert_array_equal(io[next(iter(io))][0], x)
  outputs = [b for _, b in io.values()]
  inputs = [a for a, _ in io.values()]
  for out, nxt in zip(outputs[:-1], inputs[1:]):
    np.testing.assert_array_equal(out, nxt)
  np.testing.assert_array_equal(
      outputs[-1], models.get_model(name).apply({'params': params}, x))
  # The {'params': ...} wrapper and a model instance work too.
  wrapped = models.layer_io(models.get_model(name), {'params': params}, x)
  np.testing.assert_array_equal(wrapped[next(reversed(io))][1], outputs[-1])


def test_block_gradients_match_model(all_params):
  """Gradients through the chained blocks equal those through model.apply."""
  params, x = all_params['poster'], _images()
  model = models.get_model('poster')

  def chained(p):
    y = x
    for block in models.layer_blocks('poster'):
      y = block.apply(p[block.name], y)
    return jnp.sum(jax.nn.log_softmax(y)[:, 3])

  want = jax.grad(
      lambda p: jnp.sum(jax.nn.log_softmax(model.apply({'params': p}, x))
                        [:, 3]))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               jax.grad(chained)(params), want)


@pytest.mark.parametrize('shape', [(2, 24, 24, 25), (3, 10, 10, 50),
                                   (1, 8, 6, 3)])
def test_max_pool_equals_flax(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  flax_pool = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(models.max_pool_2x2(x), flax_pool(x))
  # Without ties the gradients agree too.
  cot = jax.random.normal(jax.random.key(1), flax_pool(x).shape)
  grad = lambda f: jax.grad(lambda v: jnp.sum(f(v) * cot))(x)
  np.testing.assert_allclose(grad(models.max_pool_2x2), grad(flax_pool))


def test_max_pool_rejects_odd_sizes():
  with pytest.raises(ValueError, match='even'):
    models.max_pool_2x2(jnp.zeros((1, 5, 4, 1)))


@pytest.mark.parametrize('alias,cls', [
    ('poster', models.PosterNet), ('PosterNet', models.PosterNet),
    ('lenet-300-100', models.LeNet300100), ('lenet300', models.LeNet300100),
    ('LeNet5_Caffe', models.LeNet5Caffe), ('lenet5', models.LeNet5Caffe),
])
def test_get_model_aliases(alias, cls):
  assert type(models.get_model(alias)) is cls  # pylint: disable=unidiomatic-typecheck


@pytest.mark.parametrize('bad', ['resnet50', 'lenet', ''])
def test_unknown_model_raises(bad):
  with pytest.raises(ValueError, match='Unknown model'):
    models.get_model(bad)
  with pytest.raises(ValueError, match='Unknown model'):
    models.layer_blocks(bad)


@pytest.mark.parametrize('name', models.MODEL_NAMES)
def test_init_params_equals_eager_init(all_params, name):
  """The jitted init draws the very values an eager `model.init` draws."""
  eager = models.get_model(name).init(
      jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.float32))['params']
  for got, want in zip(jax.tree.leaves(all_params[name]),
                       jax.tree.leaves(eager)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
