"""`python -m experiments.mnist`: an alias of `python -m experiments.main`.

  python -m experiments.mnist --config=experiments/configs/mnist.py \\
      --workdir=workdir/mnist

The same flags and the same run for any config (the name is historical:
the README, CI and the Colab notebook use it). See `experiments/main.py`.
"""

from absl import app

from experiments.main import main

if __name__ == '__main__':
  app.run(main)
