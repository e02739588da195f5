"""Per-leaf scales: the prior on w / s_l, checked against NumPy float64.

The references are written out here: log sum_k pi_k N(w / s_l | mu_k,
sigma_k^2) - log s_l summed over weights, finite differences for its
gradient, and a nearest-responsibility argmax in normalised units times s_l
for quantisation.
"""

import importlib
import warnings

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

import gmp_jax
import helpers

enable_x64 = getattr(jax, 'enable_x64', None)
if enable_x64 is None:
  enable_x64 = importlib.import_module('jax.experimental').enable_x64

# Two leaves whose scales differ 20x, as a conv kernel and a wide linear
# layer's do, plus a small bias.
_SCALES = {'conv': 0.2, 'dense': 0.01, 'bias': 0.05}
_SHAPES = {'conv': (3, 3, 1, 8), 'dense': (64, 32), 'bias': (32,)}


def _tree(seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.normal(0.0, _SCALES[k], _SHAPES[k]), dtype)
          for k in _SHAPES}


def _by_path(params, mixture):
  """[(leaf as float64, s_l)] in signature order."""
  flat = {jax.tree_util.keystr(p): x for p, x in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  return [(np.asarray(flat[p], np.float64), s)
          for (p, _, _), s in zip(mixture.signature, mixture.leaf_scales)]


def _np_component_log_density(u, mixture):
  """(..., K) log pi_k + log N(u | mu_k, sigma_k^2), float64 NumPy."""
  mu = np.asarray(mixture.means, np.float64)
  var = np.asarray(mixture.variances, np.float64)
  log_pi = np.log(np.asarray(mixture.mixing_proportions, np.float64))
  d = u[..., None] - mu
  return log_pi - 0.5 * np.log(2 * np.pi * var) - 0.5 * d * d / var


def _np_log_prob(params, mixture):
  total = 0.0
  for w, s in _by_path(params, mixture):
    c = _np_component_log_density(w / s, mixture)
    top = c.max(axis=-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(c - top).sum(axis=-1))
    total += np.sum(lse - np.log(s))
  return total


def _np_quantize(params, mixture):
  means = np.asarray(mixture.means, np.float64)
  out = {}
  for (p, _, _), (w, s) in zip(mixture.signature, _by_path(params, mixture)):
    score = _np_component_log_density(w / s, mixture)
    k = np.argmax(score, axis=-1)
    top2 = np.sort(score, axis=-1)[..., -2:]
    out[p] = (np.where(k == 0, 0.0, s * means[k]), k,
              top2[..., 1] - top2[..., 0])  # Margin of the argmax.
  return out


def test_init_scales_are_rms_and_means_symmetric():
  params = _tree()
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  for w, s in _by_path(params, mixture):
    np.testing.assert_allclose(s, np.sqrt(np.mean(w**2)), rtol=1e-6)
  means = np.asarray(mixture.nonzero_means, np.float64)
  np.testing.assert_allclose(means, -means[::-1], rtol=1e-6)
  pooled = np.concatenate([np.abs(w / s).ravel()
                           for w, s in _by_path(params, mixture)])
  np.testing.assert_allclose(means[-1], np.quantile(pooled, 0.999),
                             rtol=1e-5)
  # Given explicitly (as saved), the scales give the same mixture.
  again = gmp_jax.init_mixture(params, 17, leaf_scale=mixture.leaf_scales)
  assert again.leaf_scales == mixture.leaf_scales
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(mixture)):
    helpers.assert_bitwise_equal(a, b)


def test_log_prob_and_gradient_match_numpy_float64():
  with enable_x64(True):
    params = _tree(dtype=np.float64)
    mixture = gmp_jax.init_mixture(params, 5, leaf_scale='rms',
                                   dtype=jnp.float64)
    value, grads = jax.jit(jax.value_and_grad(gmp_jax.mixture_log_prob))(
        params, mixture)
    np.testing.assert_allclose(float(value), _np_log_prob(params, mixture),
                               rtol=1e-12)
    # Central differences of the NumPy formula at a few weights per leaf.
    rng = np.random.default_rng(1)
    for path, x in params.items():
      for idx in zip(*(rng.integers(0, n, 3) for n in x.shape)):
        h = 1e-6 * _SCALES[path]
        up, down = (dict(params, **{path: x.at[idx].add(d)}) for d in (h, -h))
        fd = (_np_log_prob(up, mixture) - _np_log_prob(down, mixture)) / (2 * h)
        np.testing.assert_allclose(float(grads[path][idx]), fd, rtol=1e-5)
    # The mixture's own gradient, through the scaled kernel.
    check_grads(
        lambda m: gmp_jax.mixture_log_prob(params, m), (mixture,), order=1,
        modes=('rev',), atol=1e-6, rtol=1e-6)


def test_log_prob_float32_close_to_float64():
  params = _tree()
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  value = jax.jit(gmp_jax.mixture_log_prob)(params, mixture)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(float(value), _np_log_prob(params, mixture),
                             rtol=1e-5)


def test_bfloat16_leaf_gradient_keeps_dtype():
  params = _tree()
  params['dense'] = params['dense'].astype(jnp.bfloat16)
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  grads = jax.grad(gmp_jax.mixture_log_prob)(params, mixture)
  assert grads['dense'].dtype == jnp.bfloat16
  assert all(np.all(np.isfinite(np.asarray(g, np.float32)))
             for g in jax.tree.leaves(grads))


def test_quantize_assigns_in_normalised_units():
  params = _tree()
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  got = gmp_jax.quantize(params, mixture)
  got_idx = gmp_jax.assign(params, mixture)
  masks = gmp_jax.prune_masks(params, mixture)
  for path, (want, k, margin) in _np_quantize(params, mixture).items():
    name = path[2:-2]
    clear = margin > 1e-4  # Float32 may break near-ties either way.
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(np.asarray(got_idx[name])[clear], k[clear])
    np.testing.assert_allclose(np.asarray(got[name], np.float64)[clear],
                               want[clear], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(masks[name]),
                                  np.asarray(got[name]) != 0)
    # One leaf, at most K-1 distinct non-zero values.
    assert len(np.unique(np.asarray(got[name])[np.asarray(got[name]) != 0]
                         )) <= mixture.num_components - 1


def test_zero_stays_exactly_zero():
  params = _tree()
  params['dense'] = params['dense'].at[:4].set(0.0)
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  q = gmp_jax.quantize(params, mixture)
  dense = np.asarray(q['dense'])
  np.testing.assert_array_equal(dense[:4], 0.0)
  assert not np.any(np.signbit(dense[dense == 0]))
  assert np.all(np.asarray(gmp_jax.assign(params, mixture)['dense'])[:4]
                == 0)
  # Quantising a quantised tree changes nothing.
  helpers.assert_bitwise_equal(gmp_jax.quantize(q, mixture)['dense'],
                               q['dense'])


def test_rms_is_the_default():
  params = _tree()
  default = gmp_jax.init_mixture(params, 17)
  explicit = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  want = [np.sqrt(np.mean(np.square(np.asarray(x, np.float64))))
          for _, x in sorted(params.items())]
  np.testing.assert_allclose(default.leaf_scales, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(explicit)):
    helpers.assert_bitwise_equal(a, b)


def test_no_scales_reproduce_a_bare_mixture_bit_for_bit():
  params = _tree()
  explicit = gmp_jax.init_mixture(params, 17, leaf_scale=None)
  assert explicit.leaf_scales is None
  # A mixture built without the field knows nothing of it.
  bare = gmp_jax.GaussianMixture(
      explicit.nonzero_means, explicit.log_precisions,
      explicit.mixing_logits, zero_proportion=explicit.zero_proportion,
      signature=explicit.signature)
  assert 'leaf_scales' not in repr(bare)
  for fn in (gmp_jax.mixture_log_prob,
             jax.grad(gmp_jax.mixture_log_prob),
             gmp_jax.quantize, gmp_jax.assign):
    for a, b in zip(jax.tree.leaves(fn(params, bare)),
                    jax.tree.leaves(fn(params, explicit))):
      helpers.assert_bitwise_equal(a, b)
  # Unit scales assign every weight as no scales do.
  ones = bare.replace(leaf_scales=(1.0,) * len(bare.signature))
  for a, b in zip(jax.tree.leaves(gmp_jax.quantize(params, ones)),
                  jax.tree.leaves(gmp_jax.quantize(params, bare))):
    helpers.assert_bitwise_equal(a, b)


def test_an_all_zero_leaf_takes_the_pooled_scale_of_the_others():
  # A bias at its initial zeros has no RMS of its own.
  params = _tree()
  params['bias'] = jnp.zeros((32,))
  others = np.concatenate([np.ravel(np.asarray(x, np.float64))
                           for k, x in params.items() if k != 'bias'])
  mixture = gmp_jax.init_mixture(params, 17)
  paths = [p for p, _, _ in mixture.signature]
  scales = dict(zip(paths, mixture.leaf_scales))
  np.testing.assert_allclose(scales["['bias']"],
                             np.sqrt(np.mean(np.square(others))), rtol=1e-6)
  assert all(np.isfinite(mixture.leaf_scales))
  # An all-equal leaf has a scale: |c|.
  params['bias'] = jnp.full((32,), -0.5)
  scales = dict(zip(paths, gmp_jax.init_mixture(params, 17).leaf_scales))
  assert scales["['bias']"] == pytest.approx(0.5)
  # Nothing but zeros: unit scales.
  zeros = jax.tree.map(jnp.zeros_like, params)
  assert gmp_jax.init_mixture(zeros, 17).leaf_scales == (1.0,) * len(paths)


@pytest.mark.parametrize('leaf_scale,match', [
    ('std', 'leaf_scale must be None'),
    ((1.0, 2.0), '2 entries for 3 covered leaves'),
    ((1.0, 0.0, 1.0), "leaf_scale for leaf .*'conv'.* > 0"),
    ((1.0, 1.0, float('nan')), 'finite'),
])
def test_bad_leaf_scale_argument(leaf_scale, match):
  with pytest.raises(ValueError, match=match):
    gmp_jax.init_mixture(_tree(), 17, leaf_scale=leaf_scale)


def test_scales_not_matching_the_signature_are_refused():
  params = _tree()
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  wrong = mixture.replace(leaf_scales=mixture.leaf_scales[:2])
  for fn in (gmp_jax.mixture_log_prob, gmp_jax.quantize):
    with pytest.raises(ValueError, match='2 leaf_scales for 3 covered'):
      fn(params, wrong)


def test_scaled_init_keeps_both_leaves_where_one_mixture_prunes_one():
  rng = np.random.default_rng(0)
  params = {'big': jnp.asarray(rng.normal(0, 0.2, (30, 40)), jnp.float32),
            'small': jnp.asarray(rng.normal(0, 0.01, (60, 50)), jnp.float32)}

  def kept(mixture):
    q = gmp_jax.quantize(params, mixture)
    return {k: float(np.mean(np.asarray(v) != 0)) for k, v in q.items()}

  shared = kept(gmp_jax.init_mixture(params, 17, leaf_scale=None))
  assert shared['small'] == 0.0 and shared['big'] > 0.3
  scaled = kept(gmp_jax.init_mixture(params, 17))
  assert scaled['small'] > 0.3 and scaled['big'] > 0.3, scaled


def test_diagnose_warns_of_a_leaf_pruned_whole():
  rng = np.random.default_rng(0)
  params = {'big': jnp.asarray(rng.normal(0, 0.2, (30, 40)), jnp.float32),
            'small': jnp.asarray(rng.normal(0, 0.01, (60, 50)), jnp.float32)}
  found = gmp_jax.diagnose(
      params, gmp_jax.init_mixture(params, 17, leaf_scale=None), warn=False)
  assert any("leaf_scale='rms'" in m and "['small']" in m
             for m in found.warnings)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    scaled = gmp_jax.diagnose(
        params, gmp_jax.init_mixture(params, 17))
  assert scaled.nonzero_fraction > 0.3 and not scaled.warnings


def test_merge_keeps_scales_and_pruned_weights():
  params = _tree()
  mixture = gmp_jax.init_mixture(params, 9, leaf_scale='rms')
  # Four duplicate pairs in normalised units: they merge to five values.
  mixture = mixture.replace(nonzero_means=jnp.asarray(
      [-2.0, -2.0001, -1.0, -1.0001, 1.0, 1.0001, 2.0, 2.0001], jnp.float32))
  merged = gmp_jax.merge_components(mixture)
  assert merged.leaf_scales == mixture.leaf_scales
  assert merged.num_components == 5
  before, after = (gmp_jax.quantize(params, m) for m in (mixture, merged))
  for k in params:
    pruned = np.asarray(before[k]) == 0
    assert np.all(np.asarray(after[k])[pruned] == 0)


def test_scales_survive_pytree_round_trips():
  params = _tree()
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  leaves, treedef = jax.tree.flatten(mixture)
  assert jax.tree.unflatten(treedef, leaves).leaf_scales == (
      mixture.leaf_scales)
  assert jax.jit(lambda m: m)(mixture).leaf_scales == mixture.leaf_scales
  assert jax.tree.map(jnp.zeros_like, mixture).leaf_scales == (
      mixture.leaf_scales)
  # Different scales are a different tree structure (static metadata).
  other = mixture.replace(leaf_scales=(1.0, 1.0, 1.0))
  assert jax.tree.structure(other) != treedef


def test_codebook_from_a_scaled_quantisation_round_trips():
  """Per-leaf values s_l mu_k: the codebook holds each leaf's own values."""
  params = _tree()
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  quantized = gmp_jax.quantize(params, mixture)
  codebook, indices, mask = gmp_jax.codebook_from_quantized(
      quantized, mixture, per_leaf=False)
  want = np.unique(np.concatenate([
      np.asarray(x)[np.asarray(x) != 0] for x in jax.tree.leaves(quantized)]))
  np.testing.assert_array_equal(np.sort(np.asarray(codebook)), want)
  back = gmp_jax.expand_codebook(codebook, indices, quantized)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(quantized)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert all(m is None or m.dtype == bool for m in jax.tree.leaves(mask))


def test_per_leaf_codebooks_follow_the_mixture_by_default():
  params = _tree()
  for leaf_scale, per_leaf in (('rms', True), (None, False)):
    mixture = gmp_jax.init_mixture(params, 17, leaf_scale=leaf_scale)
    quantized = gmp_jax.quantize(params, mixture)
    codebook, _, _ = gmp_jax.codebook_from_quantized(quantized, mixture)
    if per_leaf:
      for name, x in quantized.items():
        x = np.asarray(x)
        np.testing.assert_array_equal(np.asarray(codebook[name]),
                                      np.unique(x[x != 0]))
    else:
      np.testing.assert_array_equal(
          np.asarray(codebook),
          np.asarray(mixture.means[1:]).astype(np.float32))


def test_per_leaf_codebooks_hold_each_leaf_own_values():
  """`per_leaf=True`: each leaf's codebook is its own distinct values, and
  straight-through assignment never gives a leaf another leaf's value."""
  params = _tree()
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  quantized = gmp_jax.quantize(params, mixture)
  codebook, indices, mask = gmp_jax.codebook_from_quantized(
      quantized, per_leaf=True)
  for name, x in quantized.items():
    x = np.asarray(x)
    own = np.unique(x[x != 0])
    np.testing.assert_array_equal(np.asarray(codebook[name]), own)
    a = np.asarray(indices[name])
    np.testing.assert_array_equal(a != 0, x != 0)
    np.testing.assert_array_equal(np.asarray(mask[name]), x != 0)
    np.testing.assert_array_equal(own[a[a != 0] - 1], x[x != 0])
  # Latent weights at the unquantised values: each leaf reads its own
  # nearest value (a NumPy argmin over that leaf's values) ...
  latent = gmp_jax.masked_latent(params, mask)
  snapped = gmp_jax.straight_through_params(latent, codebook, mask)
  for name, x in quantized.items():
    x, w = np.asarray(x), np.asarray(params[name])
    own = np.unique(x[x != 0])
    want = own[np.argmin(np.abs(w[..., None] - own), axis=-1)]
    np.testing.assert_array_equal(np.asarray(snapped[name]),
                                  np.where(x != 0, want, 0))
  # ... whereas the shared codebook, the union of every leaf's values, lets
  # some weight take a value its leaf never held.
  shared, _, shared_mask = gmp_jax.codebook_from_quantized(quantized)
  union = gmp_jax.straight_through_params(latent, shared, shared_mask)
  assert any(not np.isin(np.asarray(union[k])[np.asarray(x) != 0],
                         np.asarray(x)[np.asarray(x) != 0]).all()
             for k, x in quantized.items())


def test_per_leaf_codebooks_edge_cases():
  params = _tree()
  quantized = gmp_jax.quantize(params, gmp_jax.init_mixture(
      params, 17, leaf_scale='rms'))
  # A coded leaf with no non-zero weight stays uncoded.
  some_zero = dict(quantized, bias=jnp.zeros_like(quantized['bias']))
  codebook, indices, mask = gmp_jax.codebook_from_quantized(
      some_zero, per_leaf=True)
  assert codebook['bias'] is None and indices['bias'] is None
  assert mask['bias'] is None and codebook['dense'] is not None
  # Leaves of different dtypes need not share one.
  mixed = dict(quantized, bias=quantized['bias'].astype(jnp.bfloat16))
  codebook, _, _ = gmp_jax.codebook_from_quantized(mixed, per_leaf=True)
  assert codebook['bias'].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='share one dtype'):
    gmp_jax.codebook_from_quantized(mixed)
  # max_size counts per leaf.
  most = max(np.unique(np.asarray(x)[np.asarray(x) != 0]).size
             for x in quantized.values())
  gmp_jax.codebook_from_quantized(quantized, per_leaf=True, max_size=most)
  with pytest.raises(ValueError, match=f'more than max_size={most - 1}'):
    gmp_jax.codebook_from_quantized(quantized, per_leaf=True,
                                    max_size=most - 1)
  with pytest.raises(ValueError, match='Every coded weight is zero'):
    gmp_jax.codebook_from_quantized(jax.tree.map(jnp.zeros_like, quantized),
                                    per_leaf=True)
  with pytest.raises(ValueError, match='non-finite'):
    gmp_jax.codebook_from_quantized(
        dict(quantized, bias=quantized['bias'].at[0].set(jnp.nan)),
        per_leaf=True)


# ----------------------------------------------------------------------------
# Scale groups: leaves sharing one pooled-RMS scale
# ----------------------------------------------------------------------------

# Two groups of two leaves each, with scales differing within a group, plus
# a leaf no group matches.
_GROUP_SCALES = {('a', 'kernel'): 0.3, ('a', 'bias'): 0.05,
                 ('b', 'kernel'): 0.02, ('b', 'bias'): 0.004}
_GROUPS = {'a': r"^\['a'\]", 'b': r"^\['b'\]"}


def _grouped_tree(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {'kernel': (16, 8), 'bias': (8,)}
  tree = {m: {n: jnp.asarray(rng.normal(0.0, _GROUP_SCALES[m, n], shapes[n]),
                             jnp.float32) for n in shapes} for m in 'ab'}
  tree['lone'] = jnp.asarray(rng.normal(0.0, 0.7, (5, 3)), jnp.float32)
  return tree


def _np_rms(*leaves):
  flat = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])
  return np.sqrt(np.sum(flat**2) / flat.size)


@pytest.mark.parametrize('as_pairs', [False, True])
def test_group_scales_are_the_pooled_rms(as_pairs):
  params = _grouped_tree()
  groups = tuple(_GROUPS.items()) if as_pairs else _GROUPS
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms',
                                 scale_groups=groups)
  want = {"['a']": _np_rms(params['a']['kernel'], params['a']['bias']),
          "['b']": _np_rms(params['b']['kernel'], params['b']['bias']),
          "['lone']": _np_rms(params['lone'])}
  assert len(mixture.leaf_scales) == 5
  for (path, _, _), s in zip(mixture.signature, mixture.leaf_scales):
    np.testing.assert_allclose(s, want[path[:path.index(']') + 1]],
                               rtol=1e-6, err_msg=path)
  # The ungrouped leaf keeps the scale it has without groups.
  alone = gmp_jax.init_mixture(params, 17, leaf_scale='rms')
  assert mixture.leaf_scales[-1] == alone.leaf_scales[-1]


def test_first_matching_group_wins():
  params = _grouped_tree()
  # 'kernels' matches both kernels, but ['a']['kernel'] is claimed by 'a'.
  groups = [('a', r"\['a'\]"), ('kernels', r'kernel'), ('rest', r'.')]
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms',
                                 scale_groups=groups)
  got = dict(zip([p for p, _, _ in mixture.signature], mixture.leaf_scales))
  a = _np_rms(params['a']['kernel'], params['a']['bias'])
  rest = _np_rms(params['b']['bias'], params['lone'])
  want = {"['a']['bias']": a, "['a']['kernel']": a,
          "['b']['kernel']": _np_rms(params['b']['kernel']),
          "['b']['bias']": rest, "['lone']": rest}
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_allclose(got[path], want[path], rtol=1e-6,
                               err_msg=path)


def test_quantize_with_groups_gives_group_scale_times_means():
  params = _grouped_tree()
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms',
                                 scale_groups=_GROUPS)
  got = np.asarray(gmp_jax.quantize(params, mixture)['b']['bias'], np.float64)
  w = np.asarray(params['b']['bias'], np.float64)
  s = _np_rms(params['b']['kernel'], params['b']['bias'])
  score = _np_component_log_density(w / s, mixture)
  k = np.argmax(score, axis=-1)
  means = np.asarray(mixture.means, np.float64)
  np.testing.assert_allclose(got, np.where(k == 0, 0.0, s * means[k]),
                             rtol=1e-6, atol=0)
  assert np.any(got != 0)


@pytest.mark.parametrize('groups,match', [
    ({'a': r"\['a'\]", 'conv': r'conv'},
     r"'conv' \(regex 'conv'\) matches no covered leaf.*\['a'\]\['bias'\]"),
    ({'a': r"\['a'\]", 'again': r"\['a'\]\['kernel'\]"},
     r"'again'.*taken by an earlier group \('a'\)"),
    ({'bad': r'kernel('}, "group 'bad' has an invalid regex 'kernel\\('"),
    ({'': r'kernel'}, "group name '' .*non-empty"),
    ([(3, r'kernel')], 'group name 3 .*non-empty'),
    ({'k': 3}, "group 'k' has regex 3 of type int"),
    ([('a', 'x'), ('a', 'y')], "'a' appears twice"),
    ('kernel', 'must be a mapping'),
])
def test_bad_scale_groups_are_named(groups, match):
  with pytest.raises(ValueError, match=match):
    gmp_jax.init_mixture(_grouped_tree(), 17, leaf_scale='rms',
                         scale_groups=groups)


def test_all_zero_group_is_named():
  params = _grouped_tree()
  params['b'] = jax.tree.map(jnp.zeros_like, params['b'])
  with pytest.raises(ValueError, match="group 'b' is zero.*pooled RMS"):
    gmp_jax.init_mixture(params, 17, leaf_scale='rms', scale_groups=_GROUPS)
  # One zero leaf inside a group with weights is fine.
  params = _grouped_tree()
  params['b']['bias'] = jnp.zeros_like(params['b']['bias'])
  mixture = gmp_jax.init_mixture(params, 17, leaf_scale='rms',
                                 scale_groups=_GROUPS)
  np.testing.assert_allclose(
      mixture.leaf_scales[2],
      _np_rms(params['b']['kernel'], params['b']['bias']), rtol=1e-6)


@pytest.mark.parametrize('leaf_scale', [None, (1.0,) * 5])
def test_groups_need_rms(leaf_scale):
  with pytest.raises(ValueError, match="scale_groups needs leaf_scale='rms'"):
    gmp_jax.init_mixture(_grouped_tree(), 17, leaf_scale=leaf_scale,
                         scale_groups=_GROUPS)
