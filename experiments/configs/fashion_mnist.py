"""Fashion-MNIST: the poster's network and the default MNIST recipe.

Run (reads the IDX files of the Debian package `dataset-fashion-mnist`,
`apt-get install dataset-fashion-mnist`, from /usr/share/datasets/fashion-mnist
or from DATA_DIR/fashion-mnist; then trains the teacher, retrains it with the
mixture prior, prunes, quantises and saves):

  python -m experiments.mnist --config=experiments/configs/fashion_mnist.py \
      --workdir=workdir/fashion_mnist

Everything but the data is `experiments/configs/mnist.py` (the 642,460-
parameter poster network, 12 teacher epochs, 30 retraining epochs,
tau=2e-2, K=17, the published learning rates); override fields as there,
e.g. `--config.retrain.tau=5e-3`.

Expected (2-core CPU, results/fashion_mnist/ holds the committed run):
teacher 92.09% test accuracy; retrained 91.15%; pruned 89.94%, fine-tuned
90.42% with 5.37% of the weights non-zero, a 26,376-byte file (CR_file 97x);
21 minutes while other jobs shared the machine.

`--config=experiments/configs/fashion_mnist.py:smoke` is the MNIST `:smoke`
variant on real Fashion-MNIST images: the first 300 training and 100 test
images (the tests point `data_dir` at the shipped sample).
"""

import ml_collections

from experiments.configs import mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The MNIST config (`arg` as there) with Fashion-MNIST data."""
  config = mnist.get_config(arg)
  config.data.name = 'fashion_mnist'
  if arg == 'smoke':
    config.data.source = 'offline'
    config.data.num_train = 300
    config.data.num_test = 100
  else:
    # pinned: the committed run used no cap
    config.postprocess.max_components = None
  return config
