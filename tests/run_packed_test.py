"""`python -m experiments.tools.run_packed` on the committed runs.

The packed model's answers are checked against the dense path: the file
loaded as float32 and the registered model applied directly.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmp_jax
from experiments.image import data
from experiments.infra import cli
from experiments.infra import registry
from experiments.tools import run_packed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, 'results', 'mnist')
LM = os.path.join(REPO, 'results', 'shakespeare')


def test_classify_matches_the_dense_model():
  got = run_packed.classify(MNIST, batch_size=500, num_test=1000)
  model = registry.model('poster').build('mnist')
  dense = gmp_jax.load_compressed(os.path.join(MNIST, 'model.gmpz'))
  x, y = data.load_dataset('mnist', num_test=1000)['test']
  want = np.mean(np.argmax(np.asarray(model.apply({'params': dense}, x)), -1)
                 == y)
  assert got['examples'] == 1000 and got['accuracy'] == want
  assert got['reported_accuracy'] == pytest.approx(0.9922)
  assert '95.2x smaller' in got['resident']


def test_greedy_generation_matches_dense_decoding(capsys):
  prompt = b'ROMEO:'
  got = run_packed.generate(LM, prompt=prompt, length=4, temperature=0)
  assert 'packed' in capsys.readouterr().err
  model = registry.model('transformer').build('shakespeare')
  dense = gmp_jax.load_compressed(os.path.join(LM, 'model.gmpz'))
  apply = jax.jit(lambda p, tokens: model.apply({'params': p}, tokens))
  out = list(prompt)
  for _ in range(4):  # Unpadded windows: the full causal model each time.
    logits = apply(dense, jnp.asarray([out], jnp.int32))
    out.append(int(np.argmax(np.asarray(logits)[0, -1])))
  assert got == bytes(out[len(prompt):])


def test_bad_input():
  with pytest.raises(ValueError, match='length'):
    run_packed.generate(LM, prompt=b'a', length=-1)
  with pytest.raises(ValueError, match='prompt'):
    run_packed.generate(LM, prompt=b'', length=1)
  with pytest.raises(ValueError, match='temperature'):
    run_packed.generate(LM, prompt=b'a', temperature=-1.0)
  assert cli.call(run_packed, ['classify', '/nonexistent/run']) == 2
