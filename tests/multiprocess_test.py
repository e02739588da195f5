"""Two processes x two CPU devices on localhost equal one unsharded process.

`tests/multiprocess.py` starts both processes of a `jax.distributed` run.
Each builds the same initial state, loads only its own rows of every global
batch (`experiments.infra.sharding.process_batch_slice`), assembles the
global batch with `jax.make_array_from_process_local_data` and trains three steps of the
GMP train step on the 4-device mesh, data-parallel and FSDP. The parent
test computes the same three steps in one process on one device without
any sharding and compares.

The harness itself is checked with plain Python processes: a failing
process gets every other process killed, and so does a timeout.
"""

import pathlib
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
from experiments.infra import sharding
import multiprocess

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
BATCH = 32
STEPS = 3
LAYOUTS = ('data_parallel', 'fsdp')
TIMEOUT_S = 600  # Two JAX processes compiling on a busy 2-core machine.


def apply_fn(params, x):
  # Explicit broadcasting: the tests run with rank-promotion errors.
  h = jax.nn.relu(x @ params['d1']['kernel'] + params['d1']['bias'][None])
  return h @ params['d2']['kernel'] + params['d2']['bias'][None]


def _setup():
  """The run both sides share: (state, pure step, global batches)."""
  rng = np.random.default_rng(0)
  params = {'d1': {'kernel': rng.normal(0, 0.1, (20, 32)),
                   'bias': np.zeros(32)},
            'd2': {'kernel': rng.normal(0, 0.2, (32, 16)),
                   'bias': np.zeros(16)}}
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  mixture = gmp_jax.init_mixture(params, 9)
  tx = gmp_jax.gmp_optimizer(weights=1e-3)
  state = gmp_jax.create_train_state(params, mixture, tx)
  step = gmp_jax.make_train_step(apply_fn, tx, tau=0.5, dataset_size=1000,
                                 loss=gmp_jax.LossOptions(temperature=2.0))
  batches = [{'x': rng.random((BATCH, 20), np.float32),
              'label': rng.integers(0, 16, BATCH).astype(np.int32),
              'teacher_logits': rng.normal(size=(BATCH, 16)).astype(
                  np.float32)} for _ in range(STEPS)]
  return state, step, batches


def _flat(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


# ---------------------------------------------------------------------------
# Worker: runs in each of the two processes (tests/multiprocess.py main()).
# ---------------------------------------------------------------------------


def data_parallel_worker(out_dir):
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  pid = jax.process_index()
  assert jax.process_count() == NUM_PROCESSES, jax.process_count()
  assert jax.local_device_count() == DEVICES_PER_PROCESS
  mesh = sharding.data_mesh()  # All 4 devices of both processes.
  batch_sharding = sharding.batch_sharding(mesh)
  rows = sharding.process_batch_slice(BATCH, batch_sharding)
  state, step, batches = _setup()
  step = jax.jit(step)
  for layout in LAYOUTS:
    if layout == 'fsdp':
      shardings = sharding.fsdp_sharding(state, mesh, min_size=256)
    else:
      shardings = sharding.replicated_sharding(state, mesh)
    # Every process knows the whole initial state; each device takes its part.
    s = jax.tree.map(
        lambda x, sh: jax.make_array_from_callback(
            np.shape(x), sh, lambda idx, x=x: np.asarray(x)[idx]),
        state, shardings)
    for batch in batches:
      local = {k: v[rows] for k, v in batch.items()}  # Only this process's rows.
      global_batch = jax.tree.map(
          lambda v: jax.make_array_from_process_local_data(batch_sharding, v),
          local)
      assert global_batch['x'].shape == (BATCH, 20)
      s, metrics = step(s, global_batch)
    split = sum(not x.sharding.is_fully_replicated
                for x in jax.tree.leaves(s.params))
    gathered = multihost_utils.process_allgather((s, metrics), tiled=True)
    np.savez(pathlib.Path(out_dir) / f'{layout}_{pid}.npz',
             *_flat(gathered), rows=np.array([rows.start, rows.stop]),
             split=np.array(split))


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def reference():
  state, step, batches = _setup()
  step = jax.jit(step)
  for batch in batches:
    state, metrics = step(state, batch)
  return _flat((state, metrics))


@pytest.fixture(scope='module')
def worker_results(tmp_path_factory):
  out = tmp_path_factory.mktemp('multiprocess')
  multiprocess.run(
      multiprocess.worker_command('multiprocess_test:data_parallel_worker',
                                  out, NUM_PROCESSES),
      NUM_PROCESSES, devices_per_process=DEVICES_PER_PROCESS,
      timeout=TIMEOUT_S, log_dir=out / 'logs')
  return out


@pytest.mark.parametrize('layout', LAYOUTS)
def test_two_processes_match_one_unsharded_process(worker_results, reference,
                                                   layout):
  row_blocks = []
  for pid in range(NUM_PROCESSES):
    with np.load(worker_results / f'{layout}_{pid}.npz') as f:
      got = [f[f'arr_{i}'] for i in range(len(reference))]
      row_blocks.append(tuple(f['rows']))
      split = int(f['split'])
    assert split == (2 if layout == 'fsdp' else 0)  # Both kernels split.
    for i, (g, w) in enumerate(zip(got, reference)):
      assert g.shape == w.shape, i
      scale = float(np.max(np.abs(w))) if w.size else 0.0
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * max(scale, 1),
                                 err_msg=f'leaf {i}, process {pid}')
  # Each process loaded its own half of every batch.
  assert row_blocks == [(0, BATCH // 2), (BATCH // 2, BATCH)]


def test_process_batch_slice_in_one_process():
  mesh = sharding.data_mesh(jax.devices()[:4])
  assert sharding.process_batch_slice(8, sharding.batch_sharding(mesh)) == (
      slice(0, 8))  # One process holds every row.
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  assert sharding.process_batch_slice(6, replicated) == slice(0, 6)
  with pytest.raises(ValueError, match='does not split evenly over 4'):
    sharding.process_batch_slice(6, sharding.batch_sharding(mesh))
  with pytest.raises(TypeError, match='NamedSharding'):
    sharding.process_batch_slice(8, mesh)


def _python(code):
  return lambda i, address: [sys.executable, '-c', code.format(i=i)]


def test_harness_kills_every_process_when_one_fails(tmp_path):
  # Process 1 fails at once; process 0 would sleep for ten minutes.
  cluster = multiprocess.LocalCluster(
      _python('import sys, time\n'
              'if {i} == 1: sys.exit(3)\n'
              'time.sleep(600)'), 2, log_dir=tmp_path)
  with cluster:
    with pytest.raises(multiprocess.ProcessFailed,
                       match='process 1 exited with code 3'):
      cluster.wait(timeout=300)
  codes = [p.popen.returncode for p in cluster.processes]
  assert codes == [-signal.SIGKILL, 3]


def test_harness_timeout_kills_every_process(tmp_path):
  cluster = multiprocess.LocalCluster(
      _python('import time\nprint("started {i}", flush=True)\n'
              'time.sleep(600)'), 2, log_dir=tmp_path)
  with cluster:
    with pytest.raises(multiprocess.ProcessFailed, match='timed out') as e:
      cluster.wait(timeout=2)
  assert [p.popen.returncode for p in cluster.processes] == [
      -signal.SIGKILL] * 2
  assert 'process 0' in str(e.value) and 'process 1' in str(e.value)


def test_harness_bad_input():
  with pytest.raises(ValueError, match='num_processes'):
    multiprocess.LocalCluster(_python('pass'), 0)
  assert 0 < multiprocess.free_port() < 65536
