"""experiments.infra.distributed and the train loop on a 4-device mesh.

The loop on a mesh (each epoch's batches uploaded as global arrays, the state
replicated or split FSDP-style) is checked against plain float64 NumPy SGD
with the loop's batch order, as `tests/loop_test.py` does for one device.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments.image import data as data_lib
from experiments.infra import distributed
from experiments.infra import loop
from experiments.infra import monitor
from experiments.infra import sharding

N, D, BATCH, LR = 64, 4, 8, 0.05  # 8 steps per epoch, 2 examples a device.
SEED = (3, 1)


@pytest.fixture(scope='module')
def mesh():
  if jax.device_count() < 4:
    pytest.skip('needs 4 devices (conftest.py)')
  return sharding.data_mesh(jax.devices()[:4])


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, D)).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=N)
       ).astype(np.float32)
  return {'x': x, 'y': y}


def _train_step(state, batch):
  err = batch['x'] @ state['w'] - batch['y']
  grad = 2.0 * batch['x'].T @ err / err.shape[0]
  return {'w': state['w'] - LR * grad}, {'loss': jnp.mean(err ** 2)}


def _numpy_reference(epochs):
  d = _data()
  w = np.zeros(D)
  for epoch in range(epochs):
    for idx in data_lib.epoch_batches(
        np.random.default_rng([*SEED, epoch]), N, BATCH):
      x, y = d['x'][idx].astype(np.float64), d['y'][idx].astype(np.float64)
      w = w - LR * 2.0 * x.T @ (x @ w - y) / len(y)
  return w


@pytest.mark.parametrize('fsdp', [False, True])
@pytest.mark.parametrize('kind', ['unroll', 'scan'])
def test_loop_on_a_mesh_matches_numpy_sgd(tmp_path, mesh, fsdp, kind):
  runtime = distributed.Runtime(mesh, fsdp=fsdp, fsdp_min_size=1)
  state = loop.train_loop(
      stage='retrain', state={'w': jnp.zeros(D, jnp.float32)},
      train_step=_train_step, data=_data(), num_epochs=3, batch_size=BATCH,
      seed=SEED, checkpoint_dir=str(tmp_path / 'ckpt'),
      options=loop.LoopOptions(kind=kind, steps_per_call=3),
      log=monitor.MetricsLog(str(tmp_path)), runtime=runtime)
  np.testing.assert_allclose(state['w'], _numpy_reference(3), rtol=1e-5,
                             atol=1e-6)
  # The state kept its layout: w (4 entries) split under FSDP.
  assert state['w'].sharding.is_fully_replicated == (not fsdp)
  assert len((tmp_path / 'metrics.jsonl').read_text().splitlines()) == 3


def test_epoch_batches_are_the_rows_of_the_order(mesh):
  runtime = distributed.Runtime(mesh)
  order = data_lib.epoch_batches(np.random.default_rng(0), N, BATCH)
  batches = runtime.epoch_batches(_data(), order)
  assert batches['x'].shape == (N // BATCH, BATCH, D)
  assert batches['x'].sharding.spec == P(None, 'data')
  np.testing.assert_array_equal(batches['x'], _data()['x'][order])
  np.testing.assert_array_equal(batches['y'], _data()['y'][order])
  with pytest.raises(ValueError, match='does not split evenly over the 4'):
    runtime.epoch_batches(_data(), order[:, :6])


def test_put_and_gather(mesh):
  runtime = distributed.Runtime(mesh)
  tree = {'a': np.arange(8.0), 'b': jnp.ones((2, 4))}
  placed = runtime.put(tree)
  assert all(x.sharding == runtime.replicated for x in jax.tree.leaves(placed))
  split = runtime.put(tree, {'a': NamedSharding(mesh, P('data')),
                             'b': NamedSharding(mesh, P(None, 'data'))})
  assert split['a'].sharding.spec == P('data')
  assert runtime.put(split)['a'] is split['a']  # Already on the mesh: kept.
  back = runtime.gather(split)
  np.testing.assert_array_equal(back['a'], tree['a'])
  np.testing.assert_array_equal(back['b'], np.ones((2, 4)))
  runtime.barrier('one process: returns at once')


def _config(**mesh):
  return ml_collections.ConfigDict({
      'teacher': {'batch_size': 64}, 'retrain': {'batch_size': 64},
      'mesh': {'num_devices': None, 'fsdp': False, 'fsdp_min_size': None,
               **mesh}})


def test_make_runtime(mesh):
  del mesh  # Needs the 4 devices.
  assert distributed.make_runtime(_config(num_devices=1)) is None
  runtime = distributed.make_runtime(_config(num_devices=4, fsdp=True))
  assert runtime.num_devices == 4 and runtime.fsdp
  assert runtime.fsdp_min_size == sharding.DEFAULT_MIN_SIZE
  assert runtime.describe() == {'num_processes': 1, 'num_devices': 4}
  assert distributed.make_runtime(_config()).num_devices == jax.device_count()
  with pytest.raises(ValueError, match='config.teacher.batch_size is 64, '
                     'which does not split evenly over the 3'):
    distributed.make_runtime(_config(num_devices=3))


def test_initialize_without_flags_does_nothing():
  assert not distributed.initialize(coordinator_address=None,
                                    num_processes=None, process_id=None)


@pytest.mark.parametrize('kwargs,message', [
    (dict(coordinator_address='localhost', num_processes=2, process_id=0),
     'must be host:port'),
    (dict(coordinator_address='localhost:1', num_processes=0, process_id=0),
     'num_processes must be >= 1'),
    (dict(coordinator_address='localhost:1', num_processes=2,
          process_id=-1), r'process_id must be in \[0, 2\)'),
    (dict(coordinator_address=None, num_processes=2, process_id=None),
     'missing --coordinator_address, --process_id'),
])
def test_initialize_bad_flags(kwargs, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize(**kwargs)
