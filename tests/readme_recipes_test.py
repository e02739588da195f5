"""docs/frameworks.md (README "Use it in your own model"): every recipe runs,
with every filter.

Each ```python block of that section is executed as written, once per entry
of its `filters` dict (the `filter_fn = filters[...]` line is switched). The
covered leaves are checked against hand-written lists, the quantised leaves
against an independent NumPy assignment, and the reloaded model's logits
against the in-memory quantised model.
"""

import os
import re

import jax
import numpy as np
import pytest

import gmp_jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHOICE = "filter_fn = filters['kernels only']"
CHOICES = ('kernels only', 'kernels and biases', 'skip the first layer')


def _recipes() -> dict[str, str]:
  section = open(os.path.join(REPO, 'docs', 'frameworks.md')).read()
  blocks = re.findall(r'```python\n(.+?)\n```', section, flags=re.S)
  by_kind = {}
  for block in blocks:
    kind = ('equinox' if 'import equinox' in block else
            'nnx' if 'from flax import nnx' in block else
            'linen' if 'from flax import linen' in block else None)
    by_kind[kind] = block
  return by_kind


# Hand-written: the leaves each filter must pick, per recipe.
EXPECTED = {
    'linen': {
        'kernels only': ["['Conv_0']['kernel']", "['Dense_0']['kernel']"],
        'kernels and biases': [
            "['BatchNorm_0']['bias']", "['Conv_0']['bias']",
            "['Conv_0']['kernel']", "['Dense_0']['bias']",
            "['Dense_0']['kernel']"],
        'skip the first layer': [
            "['BatchNorm_0']['bias']", "['BatchNorm_0']['scale']",
            "['Dense_0']['bias']", "['Dense_0']['kernel']"],
    },
    'nnx': {
        'kernels only': ["['conv']['kernel'].value",
                         "['head']['kernel'].value"],
        'kernels and biases': [
            "['bn']['bias'].value", "['conv']['bias'].value",
            "['conv']['kernel'].value", "['head']['bias'].value",
            "['head']['kernel'].value"],
        'skip the first layer': [
            "['bn']['bias'].value", "['bn']['scale'].value",
            "['head']['bias'].value", "['head']['kernel'].value"],
    },
    'equinox': {
        'kernels only': ['.layers[0].weight', '.layers[1].weight',
                         '.layers[2].weight'],
        'kernels and biases': [f'.layers[{i}].{k}' for i in range(3)
                               for k in ('bias', 'weight')],
        'skip the first layer': [f'.layers[{i}].{k}' for i in (1, 2)
                                 for k in ('bias', 'weight')],
    },
}


def test_section_has_the_three_recipes():
  recipes = _recipes()
  assert set(recipes) == {'linen', 'nnx', 'equinox'}
  for block in recipes.values():
    assert block.count(CHOICE) == 1
    for choice in CHOICES:
      assert f"'{choice}':" in block


def _in_memory_logits(kind, ns):
  """Logits of the quantised model as held in memory (not from the file)."""
  if kind == 'linen':
    return ns['model'].apply(
        {'params': ns['qparams'], **ns['state'].model_state}, ns['x'],
        train=False)
  if kind == 'nnx':
    from flax import nnx  # pylint: disable=g-import-not-at-top
    model = nnx.merge(ns['graphdef'], ns['qparams'], ns['state'].model_state)
    model.eval()
    return model(ns['x'])
  import equinox as eqx  # pylint: disable=g-import-not-at-top
  return jax.vmap(eqx.combine(ns['qparams'], ns['static']))(ns['x'])


@pytest.mark.parametrize('choice', CHOICES)
@pytest.mark.parametrize('kind', ['linen', 'nnx', 'equinox'])
def test_recipe_runs(kind, choice, tmp_path, monkeypatch):
  code = _recipes()[kind].replace(CHOICE, f'filter_fn = filters[{choice!r}]')
  monkeypatch.chdir(tmp_path)  # The recipes write their files to the cwd.
  ns = {'__name__': '__readme__'}
  exec(compile(code, f'README.md ({kind})', 'exec'), ns)  # pylint: disable=exec-used

  covered = [p for p, _, _ in ns['mixture'].signature]
  assert sorted(covered) == EXPECTED[kind][choice]
  assert np.all(np.isfinite(ns['metrics']['loss']))

  # Covered leaves: NumPy argmax_k log pi_k N(w / c_l | mu_k, s_k^2), then
  # c_l mu_k (c_l the leaf's scale, per-leaf scales being the default), 0 for
  # k = 0. Leaves left out: the trained values, untouched.
  merged = gmp_jax.merge_components(ns['state'].mixture)
  means = np.asarray(merged.means, np.float64)
  var = np.asarray(merged.variances, np.float64)
  log_pi = np.log(np.asarray(merged.mixing_proportions, np.float64))
  trained = {jax.tree_util.keystr(p): l for p, l in
             jax.tree_util.tree_flatten_with_path(ns['state'].params)[0]}
  quantised = {jax.tree_util.keystr(p): l for p, l in
               jax.tree_util.tree_flatten_with_path(ns['qparams'])[0]}
  assert set(trained) == set(quantised)
  assert merged.leaf_scales is not None
  scale = dict(zip(covered, merged.leaf_scales))
  for path, w in trained.items():
    w, q = np.asarray(w, np.float64), np.asarray(quantised[path], np.float64)
    if path in covered:
      d = w[..., None] / scale[path] - means
      k = np.argmax(log_pi - 0.5 * np.log(var) - 0.5 * d * d / var, -1)
      np.testing.assert_allclose(
          q, np.where(k == 0, 0.0, scale[path] * means[k]),
          rtol=1e-6, atol=1e-8, err_msg=path)
    else:
      np.testing.assert_array_equal(q, w, err_msg=path)

  np.testing.assert_array_equal(np.asarray(ns['logits']),
                                np.asarray(_in_memory_logits(kind, ns)))
