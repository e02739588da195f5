"""A byte-level decoder-only transformer language model in Flax NNX.

The model maps int tokens ``x`` of shape ``(B, T)`` (bytes, ``T <= context``)
to next-byte logits of shape ``(B, T, 256)``::

  h_0 = E[x] + P[:T]                                 token + learned position
  h_l = h_{l-1} + Attn_l(LN(h_{l-1}))                causal self-attention
  h_l = h_l + W2_l gelu(W1_l LN(h_l) + b1) + b2      MLP
  logits = LN(h_L) W_out + b_out

with pre-LayerNorm blocks and multi-head attention ``softmax(q k^T /
sqrt(d_head) + M) v`` where ``M[i, j] = -inf`` for ``j > i``, so position
``i`` sees only bytes ``0 .. i``. There is no dropout, so the model has no
state besides its parameters and `make_apply` is a pure function.

The output projection ``W_out`` is **untied** from the embedding ``E``: with
256 bytes the embedding is under 4% of the parameters, so tying saves little,
and untied every weight matrix has one role, which the mixture prior and the
quantizer then treat as one tensor without coupling the input lookup to the
output layer.

Default config (`TransformerConfig()`): 4 layers, ``d_model`` 128, 4 heads,
MLP 512, context 128: 875,520 parameters.

Training by pure JAX steps::

  graphdef, params = init_params(TransformerConfig(), seed=0)
  apply = make_apply(graphdef)
  loss = lambda p, x, y: bits_per_byte(apply(p, x), y)
  grads = jax.grad(loss)(params, inputs, targets)

``python -m experiments.language.transformer`` trains the baseline briefly on the
Shakespeare corpus (`experiments.language.data`) and prints bits per byte and
steps per second.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import math
import time
from typing import Any

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

VOCAB_SIZE = 256
# nnx.List holds the blocks on flax >= 0.12; flax 0.11 takes a plain list.
_ModuleList = getattr(nnx, 'List', list)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape of the model.

  Attributes:
    num_layers: transformer blocks.
    d_model: width of the residual stream.
    num_heads: attention heads; must divide ``d_model``.
    mlp_dim: hidden units of each block's MLP.
    context: longest sequence, the rows of the position embedding.
    vocab_size: token values (256 for bytes).
  """
  num_layers: int = 4
  d_model: int = 128
  num_heads: int = 4
  mlp_dim: int = 512
  context: int = 128
  vocab_size: int = VOCAB_SIZE

  def __post_init__(self):
    for name in ('num_layers', 'd_model', 'num_heads', 'mlp_dim', 'context',
                 'vocab_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if self.d_model % self.num_heads:
      raise ValueError(f'num_heads={self.num_heads} does not divide '
                       f'd_model={self.d_model}.')


_EMBED_INIT = nnx.initializers.normal(stddev=0.02)


class CausalSelfAttention(nnx.Module):
  """Multi-head self-attention where position i attends to positions <= i."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.qkv = nnx.Linear(d_model, 3 * d_model, rngs=rngs)
    self.out = nnx.Linear(d_model, d_model, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    h = self.num_heads
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3, h, d // h), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (B, T, H, d_head)
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(d // h)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None]
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    y = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, t, d)
    return self.out(y)


class Block(nnx.Module):
  """Pre-LayerNorm block: attention then a GELU MLP, each residual."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    d = config.d_model
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.attn = CausalSelfAttention(d, config.num_heads, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.fc1 = nnx.Linear(d, config.mlp_dim, rngs=rngs)
    self.fc2 = nnx.Linear(config.mlp_dim, d, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.ln1(x))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class Transformer(nnx.Module):
  """Decoder-only byte transformer (see the module docstring)."""

  def __init__(self, config: TransformerConfig = TransformerConfig(), *,
               rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(config.vocab_size, config.d_model,
                           embedding_init=_EMBED_INIT, rngs=rngs)
    self.pos_embed = nnx.Embed(config.context, config.d_model,
                               embedding_init=_EMBED_INIT, rngs=rngs)
    self.blocks = _ModuleList([Block(config, rngs=rngs)
                               for _ in range(config.num_layers)])
    self.ln_f = nnx.LayerNorm(config.d_model, rngs=rngs)
    self.head = nnx.Linear(config.d_model, config.vocab_size, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Logits ``(B, T, vocab_size)`` float32 for int tokens ``(B, T)``.

    Raises:
      ValueError: ``tokens`` is not 2-D or ``T`` exceeds the context.
    """
    if tokens.ndim != 2:
      raise ValueError(f'tokens must have shape (batch, time), got '
                       f'{tokens.shape}.')
    t = tokens.shape[1]
    if not 1 <= t <= self.config.context:
      raise ValueError(f'Sequence length {t} is outside [1, context='
                       f'{self.config.context}].')
    positions = jnp.arange(t, dtype=jnp.int32)
    x = self.embed(tokens) + self.pos_embed(positions)[None]
    for block in self.blocks:
      x = block(x)
    return self.head(self.ln_f(x))


def init_params(config: TransformerConfig = TransformerConfig(), *,
                seed: int = 0) -> tuple[Any, nnx.State]:
  """A fresh model split into ``(graphdef, params)``.

  ``params`` is an `nnx.State` of `nnx.Param`s (a pytree; the blocks are
  under ``params['blocks'][i]``). `nnx.to_pure_dict(params)` gives the same
  arrays as plain nested dicts, which `make_apply`'s function also takes.
  """
  model = Transformer(config, rngs=nnx.Rngs(params=seed))
  return nnx.split(model, nnx.Param)


def make_apply(graphdef) -> Callable[[Any, jax.Array], jax.Array]:
  """The pure function ``apply(params, tokens) -> logits`` of a graphdef.

  ``params`` is the `nnx.State` of `init_params` (or its pure dict); the
  function can be jitted and differentiated with respect to ``params``.
  """

  def apply(params, tokens: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, params)(tokens)

  return apply


def param_count(params) -> int:
  """Number of scalars in a parameter pytree."""
  return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))


def bits_per_byte(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean cross-entropy in bits.

  ``-mean_{b,t} log2 softmax(logits[b, t])[targets[b, t]]``, computed in
  float32 via a log-softmax (``log2 p = ln p / ln 2``).

  Args:
    logits: ``(..., V)``.
    targets: int ``(...)`` in ``[0, V)``.

  Raises:
    ValueError: the leading shapes differ.
  """
  _check_shapes(logits, targets)
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_p, targets[..., None].astype(jnp.int32),
                               axis=-1)[..., 0]
  return -jnp.mean(picked) / math.log(2.0)


def accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Fraction of positions whose arg-max logit is the target byte."""
  _check_shapes(logits, targets)
  hits = jnp.argmax(logits, axis=-1) == targets.astype(jnp.int32)
  return jnp.mean(hits.astype(jnp.float32))


def _check_shapes(logits, targets) -> None:
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f'logits {logits.shape} and targets {targets.shape} '
                     'disagree: logits must be targets.shape + (vocab,).')


def _define_flags() -> None:
  flags.DEFINE_integer('steps', 300, 'Adam steps.')
  flags.DEFINE_integer('batch_size', 32, 'Windows per step.')
  flags.DEFINE_integer('seq_len', 128, 'Bytes per window.')
  flags.DEFINE_float('learning_rate', 3e-3, 'Peak of the warmup-cosine schedule.')
  flags.DEFINE_integer('eval_every', 100, 'Steps between evaluations.')
  flags.DEFINE_integer('eval_windows', 256,
                       'Validation windows per evaluation (the first ones).')
  flags.DEFINE_integer('seed', 0, 'Initialisation and sampling seed.')
  flags.DEFINE_string('data_dir', None, 'Corpus cache directory.')


def main(argv: list[str]) -> int:
  """`python -m experiments.language.transformer`: a short Adam run on Shakespeare."""
  import optax  # pylint: disable=g-import-not-at-top
  from experiments.language import data as lm_data  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS

  splits = lm_data.load_splits(args.data_dir)
  config = TransformerConfig()
  graphdef, params = init_params(config, seed=args.seed)
  apply = make_apply(graphdef)
  tx = optax.adam(optax.warmup_cosine_decay_schedule(
      0.0, args.learning_rate, min(100, args.steps // 10 + 1), args.steps))
  opt_state = tx.init(params)
  train = jnp.asarray(splits.train)
  valid_x, valid_y = lm_data.eval_windows(splits.valid, args.seq_len)
  valid_x = jnp.asarray(valid_x[:args.eval_windows])
  valid_y = jnp.asarray(valid_y[:args.eval_windows])

  def loss_fn(p, x, y):
    return bits_per_byte(apply(p, x), y)

  @jax.jit
  def step(p, o, key):
    x, y = lm_data.sample_windows(key, train, args.batch_size, args.seq_len)
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  @jax.jit
  def evaluate(p):
    logits = apply(p, valid_x)
    return bits_per_byte(logits, valid_y), accuracy(logits, valid_y)

  print(f'{param_count(params)} parameters; batch {args.batch_size} x '
        f'{args.seq_len} bytes; {args.steps} steps')
  key = jax.random.key(args.seed)
  start = time.perf_counter()
  compiled_at = None
  eval_s = 0.0  # excluded from the training rate
  recent = []
  for i in range(1, args.steps + 1):
    params, opt_state, loss = step(params, opt_state,
                                   jax.random.fold_in(key, i))
    recent.append(loss)
    if i == 1:
      loss.block_until_ready()
      compiled_at = time.perf_counter()
    if i % args.eval_every == 0 or i == args.steps:
      train_bpb = float(np.mean(jax.device_get(recent)))
      recent = []
      elapsed = time.perf_counter() - compiled_at - eval_s
      rate = (i - 1) / elapsed if i > 1 else 0.0
      eval_start = time.perf_counter()
      bpb, acc = jax.device_get(evaluate(params))
      eval_s += time.perf_counter() - eval_start
      print(f'step {i}: train {train_bpb:.3f} bits/byte (mean since last), '
            f'valid {float(bpb):.3f} bits/byte, accuracy {float(acc):.3f}, '
            f'{rate:.2f} steps/s', flush=True)
  print(f'total {time.perf_counter() - start:.1f} s')
  return 0


if __name__ == '__main__':
  from experiments.infra import cli  # pylint: disable=g-import-not-at-top
  cli.run(_define_flags, main)
