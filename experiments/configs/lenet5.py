"""LeNet-5-Caffe (20@5x5, 50@5x5, 800-500-10; 431,080 parameters) on MNIST.

  python -m experiments.mnist --config=experiments/configs/lenet5.py \
      --workdir=workdir/lenet5

The literature benchmark of Han et al. (2015) and Ullrich et al. (2017);
soft weight-sharing reported 0.97% error at 0.5% of the weights non-zero
(162x). This config has not been run to completion in this repository; no
result is claimed for it. `:smoke` shrinks it for tests.
"""

from experiments.configs import mnist


def get_config(arg: str | None = None):
  config = mnist.get_config(arg)
  config.model = 'lenet5caffe'
  return config
