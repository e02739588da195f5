"""Shared test helpers: small parameter trees and independent references."""

import struct

import jax
import jax.numpy as jnp
from jax.scipy import special as jsp_special
from jax.scipy import stats as jsp_stats
import numpy as np
from scipy import stats

import gmp_jax


def random_tree(shapes, *, seed=0, scale=0.1, dtype=jnp.float32):
  """A tree of N(0, scale^2) arrays shaped like the nested dict `shapes`.

  Leaves are drawn in the dict's order from one `default_rng(seed)`.
  """
  rng = np.random.default_rng(seed)

  def build(node):
    if isinstance(node, dict):
      return {k: build(v) for k, v in node.items()}
    return jnp.asarray(rng.normal(0, scale, node), dtype)

  return build(shapes)


def train_state(params, num_components, *, weights=1e-2):
  """`(optimizer, TrainState)` for `params` with a fresh K-component prior."""
  tx = gmp_jax.gmp_optimizer(weights=weights)
  # The published recipe (sigma 0.25, pi_0 0.99 fixed), as these tests were
  # written for; init_mixture's data-driven defaults have their own tests.
  mixture = gmp_jax.init_mixture(params, num_components, leaf_scale=None,
                                 init_std=0.25, zero_proportion=0.99)
  return tx, gmp_jax.create_train_state(params, mixture, tx)


def shared_mixture(params, *args, **kwargs):
  """`gmp_jax.init_mixture` with one mixture in weight units (leaf_scale=None).

  For tests whose NumPy or SciPy reference reads the mixture against the raw
  weights; per-leaf scales, the default, have theirs in leaf_scale_test.py.
  """
  return gmp_jax.init_mixture(params, *args, leaf_scale=None, **kwargs)


def flat_weights(params):
  """Every leaf of `params`, flattened and concatenated."""
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(params)])


def scipy_component_log_density(w, mixture):
  """(..., K) log pi_k + log N(w | mu_k, sigma_k^2) in float64, from SciPy."""
  return (np.log(np.asarray(mixture.mixing_proportions, np.float64))
          + stats.norm.logpdf(np.asarray(w, np.float64)[..., None],
                              np.asarray(mixture.means, np.float64),
                              np.sqrt(np.asarray(mixture.variances,
                                                 np.float64))))


def dense_log_prob(w, mixture):
  """Elementwise log sum_k pi_k N(w | mu_k, sigma_k^2), same shape as `w`.

  A plain dense reference built from `jax.scipy` (a (w.size, K) array),
  independent of the fused kernel; differentiable, so its autodiff
  gradients check the kernel's custom VJP.
  """
  dtype = jnp.float64 if jnp.float64 in (w.dtype, mixture.means.dtype) else (
      jnp.float32)
  k_shape = (1,) * w.ndim + (-1,)
  comp = jsp_stats.norm.logpdf(
      w.astype(dtype)[..., None],
      loc=mixture.means.astype(dtype).reshape(k_shape),
      scale=jnp.sqrt(mixture.variances.astype(dtype)).reshape(k_shape))
  log_pi = mixture.log_mixing_proportions.astype(dtype).reshape(k_shape)
  return jsp_special.logsumexp(comp + log_pi, axis=-1)


def assert_trees_close(got, want, *, rtol=1e-5, atol=0.0):
  """Same leaves (in tree order) up to the tolerances."""
  got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(got_leaves) == len(want_leaves)
  for a, b in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def assert_steps_agree(got, want, *, rtol=1e-5, atol=0.0):
  """Two `(state, metrics)` results of a train step: same loss and state."""
  np.testing.assert_allclose(got[1]['loss'], want[1]['loss'], rtol=rtol)
  assert_trees_close(got[0], want[0], rtol=rtol, atol=atol)


def override(config, **overrides):
  """`config` with dotted-path fields set: `override(c, **{'a.b': 1})`."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


# A two-layer ReLU net small enough for float64 NumPy references.
MLP_DIMS = (12, 9, 4)  # inputs, hidden units, outputs


def mlp_apply(params, x):
  h = jax.nn.relu(x @ params['l1']['kernel'] + params['l1']['bias'][None])
  return h @ params['l2']['kernel'] + params['l2']['bias'][None]


def mlp_params(seed=0):
  d_in, d_hid, d_out = MLP_DIMS
  rng = np.random.default_rng(seed)
  return {'l1': {'kernel': jnp.asarray(rng.normal(0, .4, (d_in, d_hid)),
                                       jnp.float32),
                 'bias': jnp.asarray(rng.normal(0, .1, (d_hid,)),
                                     jnp.float32)},
          'l2': {'kernel': jnp.asarray(rng.normal(0, .4, (d_hid, d_out)),
                                       jnp.float32),
                 'bias': jnp.asarray(rng.normal(0, .1, (d_out,)),
                                     jnp.float32)}}


def np_mlp_forward_backward(p, x, labels):
  """Float64 NumPy cross-entropy of `mlp_apply` and per-weight gradients."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  z1 = x @ p['l1']['kernel'] + p['l1']['bias']
  h = np.maximum(z1, 0)
  z2 = h @ p['l2']['kernel'] + p['l2']['bias']
  z2 = z2 - z2.max(-1, keepdims=True)
  prob = np.exp(z2) / np.exp(z2).sum(-1, keepdims=True)
  n = len(x)
  loss = -np.mean(np.log(prob[np.arange(n), labels]))
  dz2 = prob.copy()
  dz2[np.arange(n), labels] -= 1
  dz2 /= n
  dh = dz2 @ p['l2']['kernel'].T
  dz1 = dh * (z1 > 0)
  grads = {'l1': {'kernel': x.T @ dz1, 'bias': dz1.sum(0)},
           'l2': {'kernel': h.T @ dz2, 'bias': dz2.sum(0)}}
  return loss, grads


# ------------------------------------------------- version-1 file writer ---
# The codec writes format version 2 only; tests write version-1 files (the
# layout in `gmp_jax.codec._format_v1`) with this writer, the one the codec
# shipped.


def varint(n):
  """LEB128, written here independently of `gmp_jax.codec._wire`."""
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | 0x80 if n else byte)
    if not n:
      return bytes(out)


def _v1_stream(symbols, counts):
  from gmp_jax.codec import _ans  # pylint: disable=import-outside-toplevel
  from gmp_jax.codec import _wire  # pylint: disable=import-outside-toplevel
  words = _ans.encode(symbols, counts)
  return varint(words.size) + _wire.le_bytes(words)


def _v1_unique(nz):
  candidates = np.unique(nz[:1 << 16])
  if nz.size > 1 << 16 and candidates.size > 1 << 15:
    return None
  idx = np.minimum(np.searchsorted(candidates, nz), candidates.size - 1)
  if np.array_equal(candidates[idx], nz):
    return candidates, idx, np.bincount(idx, minlength=candidates.size)
  return np.unique(nz, return_inverse=True, return_counts=True)


def _v1_coded_record(bits, store):
  from gmp_jax.codec import _wire  # pylint: disable=import-outside-toplevel
  n = bits.size
  mask = bits != 0
  nz = bits[mask]
  nnz = nz.size
  head = bytes([0]) + varint(nnz)
  if nnz == 0:
    return [head], store
  unique = _v1_unique(nz)
  if unique is None or unique[0].size > 1 << 16:
    return None
  codebook, idx, counts = unique
  k = codebook.size
  head += varint(k)
  table = b''.join(varint(int(c)) for c in counts) if k > 1 else b''
  pos = _v1_stream(mask, np.array([n - nnz, nnz])) if nnz < n else b''
  ids = _v1_stream(idx.reshape(-1), counts) if k > 1 else b''
  return [head, _wire.le_bytes(codebook), table, pos, ids], store


def _v1_leaf(x, cb):
  """Chunks of one version-1 leaf record, its storage dtype, CRC coverage."""
  from gmp_jax.codec import _wire  # pylint: disable=import-outside-toplevel
  store = _wire.storage_dtype(x.dtype, cb)
  s = x.astype(store) if store != x.dtype else x
  uint = _wire.UINT.get(s.dtype.itemsize)
  bits = None if uint is None else np.ascontiguousarray(s).reshape(-1).view(
      uint)
  coded = None if bits is None else _v1_coded_record(bits, store)
  if coded is not None and sum(map(len, coded[0])) < 1 + x.nbytes:
    return coded[0], coded[1], bits
  return [bytes([1]), _wire.le_bytes(x)], x.dtype, x


def to_bytes_v1(params, *, metadata=None, codebook_dtype='float32'):
  """The bytes of a version-1 file of `params` (and `metadata`)."""
  import json  # pylint: disable=import-outside-toplevel
  import zlib  # pylint: disable=import-outside-toplevel
  from gmp_jax.codec import _trees  # pylint: disable=import-outside-toplevel
  from gmp_jax.codec import _wire  # pylint: disable=import-outside-toplevel
  leaves, names = [], []
  tree = _trees.flatten(params, leaves, names, scalars=False, int_keys=False)
  n_params = len(leaves)
  meta = _trees.flatten(metadata, leaves, names, scalars=True,
                        int_keys=False)
  cb = _wire.codebook_dtype(codebook_dtype)
  chunks, descr, data_crc = [], [], 0
  for x in leaves:
    # Metadata leaves are stored exactly.
    leaf_chunks, store, covered = _v1_leaf(
        x, cb if len(descr) < n_params else None)
    chunks += leaf_chunks
    descr.append([x.dtype.name, list(x.shape), np.dtype(store).name])
    data_crc = _wire.crc(covered, data_crc)
  header = zlib.compress(json.dumps(
      {'tree': tree, 'metadata': meta, 'leaves': descr, 'params': n_params},
      separators=(',', ':')).encode(), 9)
  payload = b''.join(chunks)
  preamble = struct.Struct('<8sHHIQIIII')
  head = preamble.pack(_wire.MAGIC, 1, 0, len(header), len(payload),
                       zlib.crc32(header), zlib.crc32(payload), data_crc, 0)
  head = head[:-4] + struct.pack('<I', zlib.crc32(head[:-4]))
  return head + header + payload


def assert_same_tree(a, b):
  """Same structure, key types, container types, dtypes and bits (floats too)."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and list(a) == list(b)
    assert [type(k) for k in a] == [type(k) for k in b]
    for k in a:
      assert_same_tree(a[k], b[k])
  elif isinstance(a, (list, tuple)):
    assert type(a) is type(b) and len(a) == len(b)
    for u, v in zip(a, b):
      assert_same_tree(u, v)
  elif isinstance(a, float):
    assert type(b) is float and struct.pack('<d', a) == struct.pack('<d', b)
  elif a is None or isinstance(a, (str, int)):
    assert type(a) is type(b) and a == b
  else:
    a = np.asarray(a)
    assert b.dtype == a.dtype and b.shape == a.shape
    assert b.tobytes() == a.tobytes()


def numpy_prior_grad(w, mixture, scale=1.0):
  """d/dw -log sum_k pi_k N(w / c | mu_k, s_k^2), float64, elementwise.

  c is the leaf's scale (`mixture.leaf_scales`; 1 without them).
  """
  mu = np.asarray(mixture.means, np.float64)
  var = np.asarray(mixture.variances, np.float64)
  pi = np.asarray(mixture.mixing_proportions, np.float64)
  w = np.asarray(w, np.float64).reshape(-1, 1) / scale
  log = np.log(pi) - 0.5 * np.log(2 * np.pi * var) - (w - mu) ** 2 / (2 * var)
  r = np.exp(log - log.max(axis=1, keepdims=True))
  r /= r.sum(axis=1, keepdims=True)
  return np.sum(r * (w - mu) / var, axis=1) / scale


def bit_patterns(x) -> np.ndarray:
  """The array's elements as unsigned integers of the same width."""
  x = np.asarray(x)
  return x.reshape(-1).view(np.dtype(f'u{x.dtype.itemsize}'))


def assert_bitwise_equal(a, b) -> None:
  """Same dtype, shape and bit pattern (so -0.0 != +0.0, NaN payloads kept)."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype and a.shape == b.shape
  np.testing.assert_array_equal(bit_patterns(a), bit_patterns(b))
