"""Named leaf filters and regex rules (gmp_jax.filters) on real trees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
from gmp_jax import filters


def _lm_tree():
  """The key layout of an NNX transformer's pure dict (int block keys)."""
  f = lambda *s: np.zeros(s, np.float32)  # pylint: disable=unnecessary-lambda-assignment
  block = {'ln1': {'scale': f(4), 'bias': f(4)},
           'attn': {'qkv': {'kernel': f(4, 12), 'bias': f(12)}},
           'fc1': {'kernel': f(4, 8), 'bias': f(8)},
           'ln2': {'scale': f(4), 'bias': f(4)}}
  return {'embed': {'embedding': f(16, 4)},
          'blocks': {0: block, 1: block},
          'ln_f': {'scale': f(4), 'bias': f(4)},
          'LayerNorm_0': {'scale': f(4)},
          'BatchNorm_1': {'mean': f(4)},
          'head': {'kernel': f(4, 16), 'bias': f(16)},
          'step': np.int32(0)}


def _chosen(tree, fn):
  return sorted(jax.tree_util.keystr(p) for p, x in
                jax.tree_util.tree_flatten_with_path(tree)[0] if fn(p, x))


# Hand-written lists of what each named filter must cover.
BLOCK = lambda i: [f"['blocks'][{i}]['attn']['qkv']['bias']",  # pylint: disable=unnecessary-lambda-assignment
                   f"['blocks'][{i}]['attn']['qkv']['kernel']",
                   f"['blocks'][{i}]['fc1']['bias']",
                   f"['blocks'][{i}]['fc1']['kernel']"]
NO_NORM = sorted(BLOCK(0) + BLOCK(1) + [
    "['embed']['embedding']", "['head']['bias']", "['head']['kernel']"])
KERNELS = sorted([p for p in NO_NORM if 'bias' not in p])
NO_EMBEDDING = [p for p in NO_NORM if 'embed' not in p]


@pytest.mark.parametrize('name,expected', [
    ('no_norm', NO_NORM), ('default', NO_NORM), ('kernels', KERNELS),
    ('no_embedding', NO_EMBEDDING)])
def test_named_filters_cover_the_listed_leaves(name, expected):
  assert _chosen(_lm_tree(), filters.resolve(name)) == expected


def test_all_floating_is_every_float_leaf():
  tree = _lm_tree()
  floats = sorted(jax.tree_util.keystr(p) for p, x in
                  jax.tree_util.tree_flatten_with_path(tree)[0]
                  if np.issubdtype(np.asarray(x).dtype, np.floating))
  assert _chosen(tree, filters.resolve('all_floating')) == floats
  assert len(floats) == len(NO_NORM) + 8 + 2 + 1 + 1  # norms: blocks, ln_f, LN, BN


def test_the_default_filter_is_no_norm():
  assert filters.resolve(None) is filters.no_norm
  mixture = gmp_jax.init_mixture(_lm_tree(), 3)
  assert sorted(p for p, _, _ in mixture.signature) == NO_NORM


def test_init_mixture_takes_a_filter_name():
  mixture = gmp_jax.init_mixture(_lm_tree(), 3, filter_fn='kernels')
  assert sorted(p for p, _, _ in mixture.signature) == KERNELS


def test_regex_include_and_exclude():
  fn = filters.regex(include=r'blocks', exclude=[r'bias', r'ln'])
  assert _chosen(_lm_tree(), fn) == sorted(
      p for p in BLOCK(0) + BLOCK(1) if 'bias' not in p)
  only_head = filters.regex(include=r"\['head'\]", base='kernels')
  assert _chosen(_lm_tree(), only_head) == ["['head']['kernel']"]


@pytest.mark.parametrize('key', ['ln', 'ln1', 'ln_2', 'ln_f', 'LayerNorm_0',
                                 'layer_norm', 'BatchNorm_3', 'bn1', 'gn',
                                 'rms_norm', 'final_norm'])
def test_norm_names(key):
  assert filters.is_norm((jax.tree_util.DictKey(key),))


@pytest.mark.parametrize('key', ['linear', 'kernel', 'scale', 'lnx',
                                 'bnorm_free', 'bn_out_proj', 'inline'])
def test_not_norm_names(key):
  # 'bnorm_free' matches 'norm': a name holding 'norm' counts as a norm.
  expected = 'norm' in key
  assert filters.is_norm((jax.tree_util.DictKey(key),)) == expected


def test_bad_filters_raise():
  with pytest.raises(ValueError, match=r"Unknown filter 'kernel'.*'kernels'"):
    filters.resolve('kernel')
  with pytest.raises(TypeError, match='filter_fn must be a name'):
    filters.resolve(3)
  with pytest.raises(ValueError, match=r"filter 'kernels' chose none"):
    gmp_jax.init_mixture({'b': jnp.zeros(3)}, 3, filter_fn='kernels')
