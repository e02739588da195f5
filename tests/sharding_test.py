"""The library is sharding-agnostic: sharded runs equal the unsharded run.

On a 4-device CPU mesh (conftest.py sets JAX_NUM_CPU_DEVICES=4), the prior,
the eq. 1 objective, the jitted train step and `quantize` are run in three
layouts and compared with the same computation on one device, without any
sharding (the independent reference):

* ``replicated``: parameters and batch replicated on every device;
* ``data_parallel``: parameters replicated, batch split over ``data``;
* ``fsdp``: batch split, and the large parameters (and their Adam moments)
  split along their last axis over ``data`` (`experiments.infra.sharding`).

The communication is read from the compiled HLO: the prior's gradient over
FSDP weights needs one all-reduce of 3K floats per split leaf and nothing
else (no weight is gathered), and a whole train step communicates the data
gradient of each weight once, the mixture's 3K sums, and scalars.
"""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import gmp_jax
from experiments.infra import sharding

NUM_DEVICES = 4
K = 17
LAYOUTS = ('replicated', 'data_parallel', 'fsdp')
MIN_SIZE = 500  # FSDP threshold for this small network.
SPLIT_LEAVES = ('conv/kernel', 'd1/kernel')  # Last axes 16 and 32.
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
               'collective-permute', 'collective-broadcast')


def _conv(x, kernel):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def apply_fn(params, x):
  # Explicit broadcasting: the tests run with rank-promotion errors.
  h = jax.nn.relu(_conv(x, params['conv']['kernel'])
                  + params['conv']['bias'][None, None, None])
  h = h.reshape(h.shape[0], -1)
  h = jax.nn.relu(h @ params['d1']['kernel'] + params['d1']['bias'][None])
  return h @ params['d2']['kernel'] + params['d2']['bias'][None]


def _params(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {'conv': ((3, 3, 4, 16), 0.2), 'd1': ((576, 32), 0.05),
            'd2': ((32, 10), 0.2)}
  return {name: {'kernel': jnp.asarray(rng.normal(0, std, shape), jnp.float32),
                 'bias': jnp.asarray(rng.normal(0, 0.01, shape[-1]),
                                     jnp.float32)}
          for name, (shape, std) in shapes.items()}


def _mixture(params):
  mixture = gmp_jax.init_mixture(params, K)
  rng = np.random.default_rng(1)  # Move away from the symmetric start.
  return mixture.replace(
      nonzero_means=mixture.nonzero_means
      + jnp.asarray(0.01 * rng.normal(size=K - 1), jnp.float32),
      log_precisions=mixture.log_precisions
      + jnp.asarray(rng.normal(size=K), jnp.float32))


def _batch(size=32, seed=2):
  rng = np.random.default_rng(seed)
  return {'x': jnp.asarray(rng.random((size, 8, 8, 4)), jnp.float32),
          'label': jnp.asarray(rng.integers(0, 10, size), jnp.int32),
          'teacher_logits': jnp.asarray(3 * rng.normal(size=(size, 10)),
                                        jnp.float32)}


def _train_step(tx):
  # The pure (un-jitted) step; jitting it here is the caller's choice.
  return gmp_jax.make_train_step(apply_fn, tx, tau=0.5, dataset_size=1000,
                                 loss=gmp_jax.LossOptions(temperature=2.0))


def _place(layout, mesh, tree, batch):
  """Puts a params tree or train state, and a batch, in `layout`."""
  if layout == 'fsdp':
    tree_sharding = sharding.fsdp_sharding(tree, mesh, min_size=MIN_SIZE)
  else:
    tree_sharding = sharding.replicated_sharding(tree, mesh)
  if layout == 'replicated':
    batch_sharding = NamedSharding(mesh, P())
  else:
    batch_sharding = sharding.batch_sharding(mesh)
  return jax.device_put(tree, tree_sharding), jax.device_put(batch,
                                                             batch_sharding)


def _assert_close(got, want, *, rtol=2e-5, err_msg=''):
  got, want = np.asarray(got), np.asarray(want)
  scale = float(np.max(np.abs(want))) if want.size else 0.0
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale,
                             err_msg=err_msg)


def _assert_trees_close(got, want, *, rtol=2e-5):
  got_leaves = jax.tree_util.tree_flatten_with_path(got)[0]
  want_leaves = jax.tree.leaves(want)
  assert len(got_leaves) == len(want_leaves)
  for (path, g), w in zip(got_leaves, want_leaves):
    _assert_close(g, w, rtol=rtol, err_msg=jax.tree_util.keystr(path))


def _spec_of(array):
  return tuple(array.sharding.spec) if isinstance(
      array.sharding, NamedSharding) else None


def _assert_split_like_fsdp(params_like):
  """Leaves named in SPLIT_LEAVES are split along their last axis."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params_like)[0]:
    name = '/'.join(k.key for k in path)
    assert leaf.sharding.is_fully_replicated == (name not in SPLIT_LEAVES), (
        name, leaf.sharding)
    if name in SPLIT_LEAVES:
      assert _spec_of(leaf)[-1] == 'data', (name, leaf.sharding)


# ---------------------------------------------------------------------------
# Values and gradients against the unsharded run
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('layout', LAYOUTS)
def test_mixture_log_prob_and_gradients(mesh, layout):
  params, mixture = _params(), _mixture(_params())
  fn = jax.value_and_grad(gmp_jax.mixture_log_prob, argnums=(0, 1))
  want_value, want_grads = jax.jit(fn)(params, mixture)

  (p, m), _ = _place(layout, mesh, (params, mixture), _batch())
  value, grads = jax.jit(fn)(p, m)
  _assert_close(value, want_value)
  _assert_trees_close(grads, want_grads)
  if layout == 'fsdp':  # Each device keeps the gradient of its own columns.
    _assert_split_like_fsdp(grads[0])


@pytest.mark.parametrize('layout', LAYOUTS)
def test_gmp_objective_and_gradients(mesh, layout):
  params, mixture, batch = _params(), _mixture(_params()), _batch()

  def objective(params, mixture, batch):
    data_loss = gmp_jax.distillation_loss(apply_fn(params, batch['x']),
                                          batch['teacher_logits'], 2.0)
    return gmp_jax.gmp_objective(data_loss, params, mixture, tau=0.5,
                                 dataset_size=1000)

  fn = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
  (want_loss, want_aux), want_grads = jax.jit(fn)(params, mixture, batch)

  (p, m), b = _place(layout, mesh, (params, mixture), batch)
  (loss, aux), grads = jax.jit(fn)(p, m, b)
  _assert_close(loss, want_loss)
  _assert_trees_close(aux, want_aux)
  _assert_trees_close(grads, want_grads, rtol=1e-4)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_train_step(mesh, layout):
  params, mixture = _params(), _mixture(_params())
  tx = gmp_jax.gmp_optimizer(weights=1e-3)
  step = jax.jit(_train_step(tx))
  batches = [_batch(seed=s) for s in range(3)]

  want = gmp_jax.create_train_state(params, mixture, tx)
  for batch in batches:
    want, want_metrics = step(want, batch)

  state, _ = _place(layout, mesh, gmp_jax.create_train_state(
      params, mixture, tx), batches[0])
  # The state keeps its input layout (see experiments.infra.sharding).
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  sharded_step = gmp_jax.compile_step(
      _train_step(tx), donate_state=True, out_shardings=(state_sharding, None))
  for batch in batches:
    _, b = _place(layout, mesh, (), batch)
    state, metrics = sharded_step(state, b)
    assert [x.sharding for x in jax.tree.leaves(state)] == jax.tree.leaves(
        state_sharding)
  _assert_trees_close(metrics, want_metrics, rtol=1e-4)
  # Three Adam steps: an update is about lr * sign(gradient), so the
  # weights agree to a fraction of the learning rate.
  for g, w in zip(jax.tree.leaves(state.params), jax.tree.leaves(want.params)):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
  _assert_trees_close(state.mixture, want.mixture, rtol=1e-4)
  assert int(state.step) == 3
  if layout == 'fsdp':  # The state stays split across steps.
    _assert_split_like_fsdp(state.params)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_quantize(mesh, layout):
  params, mixture = _params(), _mixture(_params())
  want = gmp_jax.quantize(params, mixture)
  (p, m), _ = _place(layout, mesh, (params, mixture), _batch())
  got = gmp_jax.quantize(p, m)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(g, w)  # Elementwise: no reduction order.
  assert any(np.any(np.asarray(w) == 0) for w in jax.tree.leaves(want))
  if layout == 'fsdp':
    _assert_split_like_fsdp(got)


# ---------------------------------------------------------------------------
# Communication, read from the compiled program
# ---------------------------------------------------------------------------

_SHAPE = re.compile(r'\b(?:pred|s8|s16|s32|s64|u8|u16|u32|u64|bf16|f16|f32|'
                    r'f64)\[([0-9,]*)\]')


def _collectives(fn, *args):
  """{op: [element count of each operand]} of the compiled program."""
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  found = collections.defaultdict(list)
  for line in hlo.splitlines():
    m = re.match(r'\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s+([a-z-]+)\(', line)
    if not m:
      continue
    op = m.group(2)
    if op.endswith('-done'):  # An async pair is counted at its start...
      continue
    op = op.removesuffix('-start')
    if op not in COLLECTIVES:
      continue
    shapes = _SHAPE.findall(m.group(1))  # The result shapes.
    if m.group(2).endswith('-start') and op != 'all-reduce':
      shapes = shapes[len(shapes) // 2:]  # ...whose result holds the inputs.
    for dims in shapes:
      found[op].append(
          int(np.prod([int(d) for d in dims.split(',') if d])))
  return found


def test_collective_parser_sees_an_all_reduce(mesh):
  # The parser itself, on a program whose communication is known: the sum of
  # a split vector all-reduces one float, a split matrix's column sums 7.
  x = jax.device_put(jnp.ones((8, 7)), NamedSharding(mesh, P('data')))
  found = _collectives(lambda a: (jnp.sum(a), jnp.sum(a, axis=0)), x)
  assert sorted(found['all-reduce']) == [1, 7]


def _leaf_sizes():
  return collections.Counter(int(np.prod(x.shape))
                             for x in jax.tree.leaves(_params()))


def test_prior_gradient_needs_one_small_all_reduce_under_fsdp(mesh):
  params, mixture = _params(), _mixture(_params())
  (p, m), _ = _place('fsdp', mesh, (params, mixture), _batch())
  _assert_split_like_fsdp(p)
  found = _collectives(
      jax.value_and_grad(gmp_jax.mixture_log_prob, argnums=(0, 1)), p, m)
  # No weight moves: only the per-component sums (s0, s1, s2 of K entries)
  # and the value's partial sum, once per split leaf, in one all-reduce.
  assert set(found) == {'all-reduce'}, dict(found)
  counts = collections.Counter(found['all-reduce'])
  assert counts == {K: 3 * len(SPLIT_LEAVES), 1: len(SPLIT_LEAVES)}, counts
  assert max(found['all-reduce']) <= 3 * K


def test_prior_gradient_needs_no_communication_when_replicated(mesh):
  params, mixture = _params(), _mixture(_params())
  (p, m), _ = _place('data_parallel', mesh, (params, mixture), _batch())
  found = _collectives(
      jax.value_and_grad(gmp_jax.mixture_log_prob, argnums=(0, 1)), p, m)
  assert not found, dict(found)


@pytest.mark.parametrize('layout', ('data_parallel', 'fsdp'))
def test_train_step_communication(mesh, layout):
  params, mixture = _params(), _mixture(_params())
  tx = gmp_jax.gmp_optimizer(weights=1e-3)
  state, batch = _place(layout, mesh, gmp_jax.create_train_state(
      params, mixture, tx), _batch())
  found = _collectives(_train_step(tx), state, batch)
  reduced = collections.Counter(n for n in found['all-reduce'] if n > 1)
  # Every weight's data gradient once (the batch is split), plus under FSDP
  # the mixture's 3K sums per split leaf; everything else is scalars.
  want = _leaf_sizes()
  if layout == 'fsdp':
    want[K] += 3 * len(SPLIT_LEAVES)
  assert reduced == want, (reduced, want)
  gathered = collections.Counter(found.pop('all-gather', []))
  if layout == 'fsdp':  # Split weights are gathered where a layer uses them.
    split_sizes = {int(np.prod(params[n.split('/')[0]]['kernel'].shape))
                   for n in SPLIT_LEAVES}
    assert set(gathered) == split_sizes, gathered
  else:
    assert not gathered
  assert set(found) == {'all-reduce'}, dict(found)


# ---------------------------------------------------------------------------
# experiments.infra.sharding
# ---------------------------------------------------------------------------


def test_fsdp_sharding_rules(mesh):
  params, mixture = _params(), _mixture(_params())
  tx = gmp_jax.gmp_optimizer()
  state = gmp_jax.create_train_state(params, mixture, tx)
  shardings = sharding.fsdp_sharding(state, mesh, min_size=MIN_SIZE)
  specs = jax.tree.map(lambda s: tuple(s.spec), shardings.params)
  assert specs == {'conv': {'kernel': (None, None, None, 'data'), 'bias': ()},
                   'd1': {'kernel': (None, 'data'), 'bias': ()},
                   # 320 entries < MIN_SIZE, and 10 columns do not split in 4.
                   'd2': {'kernel': (), 'bias': ()}}
  # The mixture is replicated whatever its size; Adam's moments follow the
  # weights they belong to.
  assert all(s.is_fully_replicated for s in jax.tree.leaves(
      sharding.fsdp_sharding(mixture, mesh, min_size=1)))
  split = [s for s in jax.tree.leaves(shardings.opt_state)
           if not s.is_fully_replicated]
  assert len(split) == 2 * len(SPLIT_LEAVES)  # mu and nu.
  assert sharding.fsdp_spec((64, 12), 4, min_size=1) == P(None, 'data')
  assert sharding.fsdp_spec((64, 10), 4, min_size=1) == P()
  assert sharding.fsdp_spec((64, 12), 4, min_size=10_000) == P()
  assert sharding.fsdp_spec((), 4, min_size=1) == P()
  assert sharding.fsdp_spec((64, 12), 1, min_size=1) == P()


def test_fsdp_sharding_puts_arrays(mesh):
  params = _params()
  placed = jax.device_put(params, sharding.fsdp_sharding(
      params, mesh, min_size=MIN_SIZE))
  _assert_split_like_fsdp(placed)
  # Each device holds a quarter of a split leaf's columns.
  kernel = placed['d1']['kernel']
  assert {s.data.shape for s in kernel.addressable_shards} == {(576, 8)}
  np.testing.assert_array_equal(kernel, params['d1']['kernel'])


def test_data_mesh(mesh):
  assert mesh.shape == {'data': NUM_DEVICES}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  assert sharding.data_mesh().shape['data'] == jax.device_count()
  assert sharding.batch_sharding(mesh).spec == P('data')


def test_bad_input(mesh):
  with pytest.raises(ValueError, match="no axis 'model'"):
    sharding.fsdp_sharding(_params(), mesh, axis='model')
  with pytest.raises(ValueError, match="no axis 'model'"):
    sharding.batch_sharding(mesh, axis='model')
  with pytest.raises(ValueError, match='min_size'):
    sharding.fsdp_sharding(_params(), mesh, min_size=0)
  with pytest.raises(TypeError, match='Mesh'):
    sharding.fsdp_sharding(_params(), 'data')
  with pytest.raises(TypeError, match='Mesh'):
    sharding.replicated_sharding(_params(), None)
  with pytest.raises(ValueError, match='axis_size'):
    sharding.fsdp_spec((8,), 0)
  with pytest.raises(ValueError, match='at least one device'):
    sharding.data_mesh([])
  with pytest.raises(ValueError, match='twice'):
    sharding.data_mesh([jax.devices()[0]] * 2)
