"""gmp_jax: soft weight-sharing compression for JAX.

This module is the public contract: every name below is `gmp_jax.NAME`. The
modules, by stage:

* `prior`: the Gaussian-mixture prior over the weights (its fused kernel in
  `_prior_kernel`); `filters`: which leaves it covers.
* `losses`: distillation, the eq. 1 objective, `LossOptions`.
* `optim`: the partitioned optax optimiser.
* `train`: the retraining step; `compiling` (`compile_step`, the one place
  that jits), `_multi_step` and `_evaluation` run any step.
* `calibration`: the tau rule and diagnostics.
* `quantize`: merge, prune, quantise.
* `finetune`: codebook and straight-through fine-tuning, mask fixed.
* `codec/`: the compressed file (`gmp_jax.codec`; `codec.fileio` holds the
  atomic writer); `inspect`: its command line, `python -m gmp_jax.inspect`.
* `packed`: quantised leaves held as indices and a codebook, run by
  `packed_apply`; `packed_kernel`: an experimental Pallas matmul for them.
* `report`: Table 1 and the true size.
* `flax`: optional Flax adapters (`import gmp_jax.flax`; `import gmp_jax`
  imports no Flax). `_nonparams` recognises model state for `train` and
  `prior`.
"""

# Prior: the Gaussian mixture over the weights and its hyperpriors.
from gmp_jax.prior import GaussianMixture
from gmp_jax.prior import Hyperpriors
from gmp_jax.prior import init_mixture
from gmp_jax.prior import mixture_log_prob
from gmp_jax.prior import hyperprior_log_prob
from gmp_jax.prior import complexity_loss

# Losses: data terms, the eq. 1 objective, the options every step shares.
from gmp_jax.losses import LossOptions
from gmp_jax.losses import cross_entropy_loss
from gmp_jax.losses import distillation_loss
from gmp_jax.losses import kl_distillation_loss
from gmp_jax.losses import mse_loss
from gmp_jax.losses import gmp_objective

# Optimiser: optax partitions for the weights and the mixture.
from gmp_jax.optim import gmp_optimizer

# Train steps: retraining, and what runs any step (jit, several per call,
# evaluation).
from gmp_jax.train import TrainState
from gmp_jax.train import create_train_state
from gmp_jax.train import make_train_step
from gmp_jax.compiling import compile_step
from gmp_jax._multi_step import make_multi_step
from gmp_jax._evaluation import make_eval_step
from gmp_jax._evaluation import evaluate

# Calibration and diagnostics: the tau rule, what a retraining cannot show.
from gmp_jax.calibration import GradientScales
from gmp_jax.calibration import gradient_scales
from gmp_jax.calibration import calibrate_tau
from gmp_jax.calibration import diagnose

# Post-processing: merge components, prune, quantise.
from gmp_jax.quantize import merge_components
from gmp_jax.quantize import prune_masks
from gmp_jax.quantize import assign
from gmp_jax.quantize import quantize

# Fine-tuning: the codebook (assignment fixed) and straight-through (mask
# fixed) steps, their states and helpers.
from gmp_jax.finetune import CodebookState
from gmp_jax.finetune import create_codebook_state
from gmp_jax.finetune import make_codebook_step
from gmp_jax.finetune import codebook_from_quantized
from gmp_jax.finetune import expand_codebook
from gmp_jax.finetune import tiled_per_leaf_codebook
from gmp_jax.finetune import StraightThroughState
from gmp_jax.finetune import create_straight_through_state
from gmp_jax.finetune import make_straight_through_step
from gmp_jax.finetune import masked_latent
from gmp_jax.finetune import nearest_indices
from gmp_jax.finetune import per_leaf_codebook_tree
from gmp_jax.finetune import straight_through_params

# File: the compressed format.
from gmp_jax.codec import save_compressed
from gmp_jax.codec import load_compressed
from gmp_jax.codec import load_compressed_with_info
from gmp_jax.codec import CorruptFileError

# Packed: quantised leaves resident as indices and a codebook, and run so.
from gmp_jax.packed import PackedArray
from gmp_jax.packed import SparsePackedArray
from gmp_jax.packed import pack
from gmp_jax.packed import unpack
from gmp_jax.packed import packed_apply

# Report: Table 1 and the true size.
from gmp_jax.report import compression_report
from gmp_jax.report import sparsity_table

# Named leaf filters (`gmp_jax.filters.FILTERS`), a module.
from gmp_jax import filters

__version__ = '0.1.0'

__all__ = (
    # Prior.
    'GaussianMixture',
    'Hyperpriors',
    'init_mixture',
    'mixture_log_prob',
    'hyperprior_log_prob',
    'complexity_loss',
    # Losses.
    'LossOptions',
    'cross_entropy_loss',
    'distillation_loss',
    'kl_distillation_loss',
    'mse_loss',
    'gmp_objective',
    # Optimiser.
    'gmp_optimizer',
    # Train steps.
    'TrainState',
    'create_train_state',
    'make_train_step',
    'compile_step',
    'make_multi_step',
    'make_eval_step',
    'evaluate',
    # Calibration and diagnostics.
    'GradientScales',
    'gradient_scales',
    'calibrate_tau',
    'diagnose',
    # Post-processing.
    'merge_components',
    'prune_masks',
    'assign',
    'quantize',
    # Fine-tuning.
    'CodebookState',
    'create_codebook_state',
    'make_codebook_step',
    'codebook_from_quantized',
    'expand_codebook',
    'tiled_per_leaf_codebook',
    'StraightThroughState',
    'create_straight_through_state',
    'make_straight_through_step',
    'masked_latent',
    'nearest_indices',
    'per_leaf_codebook_tree',
    'straight_through_params',
    # File.
    'save_compressed',
    'load_compressed',
    'load_compressed_with_info',
    'CorruptFileError',
    # Packed.
    'PackedArray',
    'SparsePackedArray',
    'pack',
    'unpack',
    'packed_apply',
    # Report.
    'compression_report',
    'sparsity_table',
)
