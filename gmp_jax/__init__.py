"""gmp_jax: soft weight-sharing compression for JAX.

The pipeline, module by module: prior (Gaussian-mixture prior) -> losses
(distillation, eq. 1 objective) -> optim (partitioned optax) -> train (pure
steps, `compile_step`) -> quantize (merge, prune, quantise) -> finetune
(train the shared values, assignment fixed; or straight_through: latent
weights that may change cluster, mask fixed) -> codec (compressed file) ->
report (Table 1 and true size). `fileio` holds the atomic writer every file
goes through.
"""

from gmp_jax.codec import CorruptFileError
from gmp_jax.codec import load_compressed
from gmp_jax.codec import save_compressed
from gmp_jax.finetune import codebook_from_quantized
from gmp_jax.finetune import CodebookState
from gmp_jax.finetune import create_codebook_state
from gmp_jax.finetune import expand_codebook
from gmp_jax.finetune import make_codebook_step
from gmp_jax.finetune import per_leaf_codebook
from gmp_jax.losses import cross_entropy_loss
from gmp_jax.losses import distillation_loss
from gmp_jax.losses import gmp_objective
from gmp_jax.losses import kl_distillation_loss
from gmp_jax.losses import mse_loss
from gmp_jax.optim import gmp_optimizer
from gmp_jax.prior import complexity_loss
from gmp_jax.prior import GaussianMixture
from gmp_jax.prior import hyperprior_log_prob
from gmp_jax.prior import Hyperpriors
from gmp_jax.prior import init_mixture
from gmp_jax.prior import mixture_log_prob
from gmp_jax.quantize import assign
from gmp_jax.quantize import merge_components
from gmp_jax.quantize import prune_masks
from gmp_jax.quantize import quantize
from gmp_jax.report import compression_report
from gmp_jax.straight_through import create_straight_through_state
from gmp_jax.straight_through import make_straight_through_step
from gmp_jax.straight_through import masked_latent
from gmp_jax.straight_through import nearest_indices
from gmp_jax.straight_through import per_leaf_codebooks
from gmp_jax.straight_through import quantized_params
from gmp_jax.straight_through import straight_through_params
from gmp_jax.straight_through import StraightThroughState
from gmp_jax.report import sparsity_table
from gmp_jax.train import compile_step
from gmp_jax.train import create_train_state
from gmp_jax.train import evaluate
from gmp_jax.train import make_eval_step
from gmp_jax.train import make_multi_step
from gmp_jax.train import make_train_step
from gmp_jax.train import TrainState

__version__ = '0.1.0'

# Sorted case-insensitively.
__all__ = (
    'assign',
    'codebook_from_quantized',
    'CodebookState',
    'compile_step',
    'complexity_loss',
    'compression_report',
    'CorruptFileError',
    'create_codebook_state',
    'create_straight_through_state',
    'create_train_state',
    'cross_entropy_loss',
    'distillation_loss',
    'evaluate',
    'expand_codebook',
    'GaussianMixture',
    'gmp_objective',
    'gmp_optimizer',
    'hyperprior_log_prob',
    'Hyperpriors',
    'init_mixture',
    'kl_distillation_loss',
    'load_compressed',
    'make_codebook_step',
    'make_eval_step',
    'make_multi_step',
    'make_straight_through_step',
    'make_train_step',
    'masked_latent',
    'merge_components',
    'mixture_log_prob',
    'mse_loss',
    'nearest_indices',
    'per_leaf_codebook',
    'per_leaf_codebooks',
    'prune_masks',
    'quantize',
    'quantized_params',
    'save_compressed',
    'sparsity_table',
    'straight_through_params',
    'StraightThroughState',
    'TrainState',
)
