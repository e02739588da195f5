"""gmp_jax: soft weight-sharing compression for JAX.

The pipeline, module by module: prior (Gaussian-mixture prior) -> losses
(distillation, eq. 1 objective) -> optim (partitioned optax) -> train (jitted
steps) -> quantize (merge, prune, quantise) -> codec (compressed file) ->
report (true size and paper-style compression rates).
"""

from gmp_jax.codec import CorruptFileError
from gmp_jax.codec import load_compressed
from gmp_jax.codec import load_compressed_with_metadata
from gmp_jax.codec import save_compressed
from gmp_jax.losses import cross_entropy_loss
from gmp_jax.losses import distillation_loss
from gmp_jax.losses import gmp_objective
from gmp_jax.losses import kl_distillation_loss
from gmp_jax.losses import mse_loss
from gmp_jax.losses import tempered_softmax
from gmp_jax.optim import gmp_optimizer
from gmp_jax.optim import partition_labels
from gmp_jax.prior import complexity_loss
from gmp_jax.prior import GaussianMixture
from gmp_jax.prior import hyperprior_log_prob
from gmp_jax.prior import Hyperpriors
from gmp_jax.prior import init_mixture
from gmp_jax.prior import is_floating
from gmp_jax.prior import mixture_log_prob
from gmp_jax.quantize import assign
from gmp_jax.quantize import compression_summary
from gmp_jax.quantize import merge_components
from gmp_jax.quantize import prune_masks
from gmp_jax.quantize import quantize
from gmp_jax.report import compression_report
from gmp_jax.train import build_train_step
from gmp_jax.train import create_train_state
from gmp_jax.train import evaluate
from gmp_jax.train import make_eval_step
from gmp_jax.train import make_scan_step
from gmp_jax.train import make_train_step
from gmp_jax.train import TrainState

__version__ = '0.1.0'

__all__ = (
    'compression_report',
    'save_compressed',
    'load_compressed_with_metadata',
    'load_compressed',
    'CorruptFileError',
    'assign',
    'build_train_step',
    'complexity_loss',
    'compression_summary',
    'create_train_state',
    'cross_entropy_loss',
    'distillation_loss',
    'evaluate',
    'GaussianMixture',
    'gmp_objective',
    'gmp_optimizer',
    'hyperprior_log_prob',
    'Hyperpriors',
    'init_mixture',
    'is_floating',
    'kl_distillation_loss',
    'make_eval_step',
    'make_scan_step',
    'make_train_step',
    'merge_components',
    'mixture_log_prob',
    'mse_loss',
    'partition_labels',
    'prune_masks',
    'quantize',
    'tempered_softmax',
    'TrainState',
)
