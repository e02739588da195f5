"""Quickstart: the mixture prior added to a small Flax model on random data.

  python -m experiments.tools.quickstart

Pretrains a 2-layer MLP on random inputs labelled by a random linear rule, retrains it with the
Gaussian-mixture prior, then quantises it. It prints how tightly the weights
cluster around the mixture means before and after retraining, and the number
of distinct values left in each leaf (at most K - 1 besides 0: each covered
leaf holds its own values s_l mu_k, s_l its scale).
"""

from __future__ import annotations

from absl import app
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import gmp_jax
from gmp_jax.prior import mixture_leaves


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))


def _clustered_fraction(params, mixture) -> float:
  """Fraction of covered weights within 2 sigma of a component mean, in the
  prior's units (each leaf over its scale s_l)."""
  leaves = mixture_leaves(params, mixture)
  scales = mixture.leaf_scales or (1.0,) * len(leaves)
  w = np.concatenate([np.ravel(x) / s for x, s in zip(leaves, scales)])
  means, std = np.asarray(mixture.means), np.sqrt(mixture.variances)
  z = np.abs(w[:, None] - means) / np.asarray(std)
  return float(np.mean(z.min(axis=1) < 2.0))


def run(*, num_components: int = 8, pretrain_steps: int = 300,
        retrain_steps: int = 1500, seed: int = 0, verbose: bool = True):
  """Runs the example and returns a dict of its figures."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(512, 20)).astype(np.float32)
  # Labels from a random linear rule, so the task is learnable.
  y = np.argmax(x @ rng.normal(size=(20, 10)), axis=1).astype(np.int32)
  model = MLP()
  params = model.init(jax.random.key(seed), x[:1])['params']
  apply_fn = lambda p, xb: model.apply({'params': p}, xb)
  batch = {'x': x, 'label': y}

  # 1. Ordinary training (prior off).
  mixture = gmp_jax.init_mixture(params, num_components)
  tx = gmp_jax.gmp_optimizer(weights=3e-3)
  step = gmp_jax.compile_step(gmp_jax.make_train_step(
      apply_fn, tx, tau=0.0, dataset_size=512, use_prior=False))
  state = gmp_jax.create_train_state(params, mixture, tx)
  for _ in range(pretrain_steps):
    state, metrics = step(state, batch)
  pretrained = state.params
  acc_pre = float(metrics['accuracy'])

  # 2. Retrain with the prior: data loss + tau/N * complexity (eq. 1). The
  # mixture starts from the weights' statistics; tau follows the rule (the
  # prior's gradient as large as the data term's at the start).
  mixture = gmp_jax.init_mixture(pretrained, num_components)
  data_loss_fn = gmp_jax.LossOptions().data_loss()
  data_loss = lambda p, b: data_loss_fn(apply_fn(p, b['x']), b)[0]
  tau = gmp_jax.calibrate_tau(
      gmp_jax.gradient_scales(data_loss, pretrained, mixture, [batch]),
      dataset_size=512)
  tx = gmp_jax.gmp_optimizer(weights=1e-3, means=3e-3)
  step = gmp_jax.compile_step(
      gmp_jax.make_train_step(apply_fn, tx, tau=tau, dataset_size=512))
  state = gmp_jax.create_train_state(pretrained, mixture, tx)
  for _ in range(retrain_steps):
    state, metrics = step(state, batch)
  # Measured against the final mixture, before and after retraining.
  before = _clustered_fraction(pretrained, state.mixture)
  after = _clustered_fraction(state.params, state.mixture)

  # 3. Merge, prune and quantise.
  mixture = gmp_jax.merge_components(state.mixture)
  quantized = gmp_jax.quantize(state.params, mixture)
  table = gmp_jax.sparsity_table(quantized, by='leaf')
  total = table[-1]
  logits = apply_fn(quantized, x)
  acc_q = float(jnp.mean(jnp.argmax(logits, -1) == y))
  out = {'accuracy_pretrained': acc_pre,
         'accuracy_quantized': acc_q,
         'clustered_before': before, 'clustered_after': after,
         'distinct_values': max(r['distinct_values'] for r in table[:-1]),
         'sparsity': total['sparsity'],
         'num_components': mixture.num_components}
  if verbose:
    print(f"train accuracy: pretrained {acc_pre:.3f}, quantised {acc_q:.3f}")
    print(f"weights within 2 sigma of a component: {before:.1%} before, "
          f"{after:.1%} after retraining")
    print(f"after quantize: at most {out['distinct_values']} distinct "
          f"non-zero values per leaf (K={num_components}, "
          f"{mixture.num_components} after merging), sparsity "
          f"{out['sparsity']:.1%}")
  return out


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  run()
  return 0


if __name__ == '__main__':
  app.run(main)
