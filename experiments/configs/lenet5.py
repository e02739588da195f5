"""LeNet-5-Caffe (20@5x5, 50@5x5, 800-500-10; 431,080 parameters) on MNIST.

  python -m experiments.mnist --config=experiments/configs/lenet5.py \
      --workdir=workdir/lenet5

This variant has a ReLU after each convolution (Caffe's original has none).
Expected (2-core CPU, ~10 minutes of retraining; results/lenet5/ holds the
committed run): teacher 99.34%; after pruning 98.92%, after straight-through
fine-tuning 99.04%, with 0.90% of the weights non-zero in a 4,131-byte file
(CR_file 417x): 0.96% error at >= 400x, the target. Seed 1 misses it:
teacher 99.17%, file 98.76% at 4,041 bytes (results/lenet5_seeds/seed1).
The literature: soft weight-sharing 0.97% error at 162x (Han-style count),
Bayesian Compression 1.0% at 419x (analytic), EPR 1.0% at 606x and MIRACLE
0.96% at 1110x (real or encoded bits).

Differences from the poster recipe: Hinton's KL distillation (T = 4) instead
of the MSE of eq. 2, tau 0.35 (not 2e-2; the KL term is larger, BUILD_NOTES
"Literature benchmarks"), 60 retraining epochs (not 30), and 4 epochs of
straight-through fine-tuning (not 2). `:smoke` shrinks it for tests.
"""

from experiments.configs import mnist


def get_config(arg: str | None = None):
  config = mnist.get_config(arg)
  config.model = 'lenet5caffe'
  if arg != 'smoke':
    config.retrain.distillation = 'kl'
    config.retrain.tau = 0.35
    config.retrain.epochs = 60
    config.postprocess.finetune_epochs = 4
    # pinned: the committed run used no cap
    config.postprocess.max_components = None
  return config
