"""docs/recipe.md (README "Compress your own model"): the transformer recipe
runs as written.

The block is executed once (module fixture). Its tau is checked against the
rule recomputed in NumPy float64 (the prior's gradient from the mixture's
responsibilities, independently of the library's kernel), its covered
leaves against a hand-written list, and its file against the in-memory
quantised model.
"""

import os
import re

import jax
import numpy as np
import pytest

import gmp_jax
import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recipe() -> str:
  section = open(os.path.join(REPO, 'docs', 'recipe.md')).read()
  blocks = re.findall(r'```python\n(.+?)\n```', section, flags=re.S)
  assert len(blocks) == 1
  return blocks[0]


@pytest.fixture(scope='module')
def recipe(tmp_path_factory):
  namespace = {}
  cwd = os.getcwd()
  os.chdir(tmp_path_factory.mktemp('lm_recipe'))
  try:
    # The recipe's own teacher loop calls optax.adam directly, which mixes
    # its int32 step count with floats; the library runs under conftest's
    # strict promotion in every other test.
    with jax.numpy_dtype_promotion('standard'):
      exec(compile(_recipe(), 'README-lm-recipe', 'exec'), namespace)  # pylint: disable=exec-used
    namespace['file_path'] = os.path.abspath('lm.gmpz')
  finally:
    os.chdir(cwd)
  return namespace


def test_recipe_imports_nothing_from_experiments():
  assert 'experiments' not in _recipe()


def test_covers_everything_but_the_layer_norms(recipe):
  covered = sorted(p for p, _, _ in recipe['mixture'].signature)
  expected = sorted(
      [f"['blocks'][{i}]['{m}']['{k}'].value" for i in range(2)
       for m in ('qkv', 'out', 'fc1', 'fc2') for k in ('kernel', 'bias')]
      + ["['embed']['embedding'].value", "['pos']['embedding'].value",
         "['head']['kernel'].value", "['head']['bias'].value"])
  assert covered == expected


def test_tau_follows_the_rule(recipe):
  mixture, teacher = recipe['mixture'], recipe['teacher']
  covered = {p for p, _, _ in mixture.signature}
  scales = dict(zip((p for p, _, _ in mixture.signature), mixture.leaf_scales))
  leaves = {jax.tree_util.keystr(p): x for p, x in
            jax.tree_util.tree_flatten_with_path(teacher)[0]}
  prior_sq = sum(np.sum(helpers.numpy_prior_grad(leaves[p], mixture,
                                                 scales[p]) ** 2)
                 for p in covered)
  apply_fn, data_loss = recipe['apply_fn'], recipe['data_loss']
  # One compiled gradient for the eight batches (they share a shape).
  grad = jax.jit(jax.grad(lambda p, b: data_loss(apply_fn(p, b['x']), b)[0]))
  data_sq = []
  for b in recipe['batches'][:8]:
    g = grad(teacher, b)
    flat = {jax.tree_util.keystr(p): np.asarray(x, np.float64) for p, x in
            jax.tree_util.tree_flatten_with_path(g)[0]}
    data_sq.append(sum(np.sum(flat[p] ** 2) for p in covered))
  tau = (gmp_jax.calibration.DEFAULT_RATIO * recipe['N']
         * np.sqrt(np.mean(data_sq)) / np.sqrt(prior_sq))
  np.testing.assert_allclose(recipe['tau'], tau, rtol=1e-3)
  assert recipe['before'].grad_ratio == pytest.approx(
      gmp_jax.calibration.DEFAULT_RATIO, rel=1e-9)
  assert recipe['before'].warnings == ()


def test_file_holds_the_quantised_model(recipe):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  import gmp_jax  # pylint: disable=import-outside-toplevel
  expected = nnx.to_pure_dict(recipe['quantized'])
  loaded = gmp_jax.load_compressed(recipe['file_path'])
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  assert set(loaded['blocks']) == {0, 1}  # int keys, as NNX gives them
  bpb = float(recipe['evaluate'](loaded)['bits_per_byte'])
  teacher_bpb = float(recipe['evaluate'](recipe['teacher'])['bits_per_byte'])
  assert np.isfinite(bpb) and bpb < 8.0
  assert teacher_bpb < 1.0  # the toy corpus is learnt
  q = [np.asarray(x) for p, x in
       jax.tree_util.tree_flatten_with_path(recipe['quantized'])[0]
       if jax.tree_util.keystr(p) in
       {s for s, _, _ in recipe['mixture'].signature}]
  assert 0.0 < np.mean([np.mean(x != 0) for x in q]) < 1.0
