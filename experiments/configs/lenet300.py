"""LeNet-300-100 (784-300-100-10, 266,610 parameters) on MNIST.

  python -m experiments.mnist --config=experiments/configs/lenet300.py \
      --workdir=workdir/lenet300

The literature benchmark of Han et al. (2015) and Ullrich et al. (2017);
soft weight-sharing reported 1.94% error at 4.3% of the weights non-zero
(64x). This config has not been run to completion in this repository; no
result is claimed for it. `:smoke` shrinks it for tests.
"""

from experiments.configs import mnist


def get_config(arg: str | None = None):
  config = mnist.get_config(arg)
  config.model = 'lenet300100'
  return config
