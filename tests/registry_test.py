"""experiments.infra.registry: models, datasets and tasks plugged in by name."""

import os
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tools import compare
from experiments.image import data as data_lib
from experiments.image import models
from experiments.infra import registry
from experiments.tools import sweep
from experiments.infra import tasks
from experiments.configs import mnist as mnist_config


def test_builtins_are_registered_with_their_aliases():
  assert {'poster', 'lenet300100', 'lenet5caffe'} <= set(registry.MODELS)
  assert {'mnist', 'fashion_mnist'} <= set(registry.DATASETS)
  assert 'classification' in registry.TASKS
  for alias, name in [('lenet300', 'lenet300100'), ('LeNet-5', 'lenet5caffe'),
                      ('PosterNet', 'poster'), ('Fashion-MNIST',
                                                'fashion_mnist')]:
    table = registry.DATASETS if 'mnist' in name else registry.MODELS
    assert table.name_of(alias) == name
  info = registry.dataset('fashion-mnist')
  assert (info.input_shape, info.num_classes, info.task) == (
      (28, 28, 1), 10, 'classification')


def test_model_entries_hold_what_the_tables_show():
  entry = registry.model('lenet5')
  assert entry.display_name == 'LeNet-5-Caffe'
  assert entry.parameters == 431_080
  assert entry.benchmark == 'lenet5' and entry.results_dir == 'results/lenet5'
  assert [a.method for a in entry.anchors][-1] == 'MIRACLE (Havasi et al. 2019)'
  # Every registered parameter count is the built model's.
  for e in registry.MODELS.values():
    if e.parameters is not None:
      params = models.init_params(e.name, jax.random.key(0))
      assert sum(x.size for x in jax.tree.leaves(params)) == e.parameters
  assert list(compare.nets()) == ['lenet300', 'lenet5', 'poster']


@pytest.mark.parametrize('table, lookup, kind', [
    (registry.MODELS, registry.model, 'model'),
    (registry.DATASETS, registry.dataset, 'dataset'),
    (registry.TASKS, registry.task, 'task')])
def test_unknown_names_list_the_known_ones(table, lookup, kind):
  with pytest.raises(ValueError, match=f'Unknown {kind}') as err:
    lookup('no_such_thing')
  assert repr(next(iter(table))) in str(err.value)


def test_a_taken_name_is_refused():
  with pytest.raises(ValueError, match='taken'):
    registry.register_model('poster', lambda info: models.PosterNet())
  with pytest.raises(ValueError, match='taken'):
    registry.register_model('my-net', lambda info: models.PosterNet(),
                            aliases=('lenet5',))
  with pytest.raises(ValueError, match='exactly one'):
    registry.register_dataset('both', None, input_shape=(4,),
                              num_classes=3, vocab_size=5)
  with pytest.raises(ValueError, match='counts'):
    registry.register_model('odd', lambda info: None, anchors=[
        dict(method='x', error=0.1, compression=2, counts='bits')])


class _Tiny(nn.Module):
  outputs: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.outputs)(x.reshape(x.shape[0], -1))


def _digits(*, source, data_dir, download, num_train, num_test, seed):
  del source, data_dir, download
  rng = np.random.default_rng(seed)
  split = lambda n: (rng.uniform(size=(n, 6, 6, 2)).astype(np.float32),
                     rng.integers(0, 3, n).astype(np.int32))
  return {'train': split(num_train or 8), 'test': split(num_test or 4)}


def test_a_registered_dataset_sizes_the_models():
  info = registry.register_dataset(
      'test_digits3', _digits, input_shape=(6, 6, 2), num_classes=3,
      display_name='Digits-3', sources=('offline',), replace=True)
  registry.register_model('test_tiny', lambda i: _Tiny(i.num_outputs),
                          default_dataset='test_digits3', replace=True)
  ds = data_lib.load_dataset('test-digits3', num_train=5, seed=1)
  assert ds['train'][0].shape == (5, 6, 6, 2)
  with pytest.raises(ValueError, match='data source'):
    data_lib.load_dataset('test_digits3', source='random')
  # The model's kernel follows the dataset: 6 * 6 * 2 inputs, 3 outputs.
  params = models.init_params('test_tiny', jax.random.key(0))
  assert params['Dense_0']['kernel'].shape == (72, 3)
  # A built-in net sized for it: its last layer has 3 units, the input
  # size follows the images.
  poster = models.init_params('lenet300', jax.random.key(0), dataset=info)
  assert poster['dense1']['kernel'].shape == (72, 300)
  assert poster['dense3']['kernel'].shape == (100, 3)
  net = models.get_model('lenet300', 'test_digits3')
  assert net.apply({'params': poster}, ds['train'][0]).shape == (5, 3)
  # The old table still works as a view.
  assert 'test_tiny' in models._MODELS  # pylint: disable=protected-access


def test_the_mnist_net_is_unchanged_by_the_registry():
  """`init_params` by name equals a hand-built module's eager init."""
  for name, cls in [('poster', models.PosterNet),
                    ('lenet5caffe', models.LeNet5Caffe)]:
    got = models.init_params(name, jax.random.key(3))
    want = cls().init(jax.random.key(3),
                      jnp.zeros((1, 28, 28, 1), jnp.float32))['params']
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_sweep_reads_anchors_from_the_registry():
  got = sweep.anchors_for('LeNet-300-100', 266_610)
  entry = registry.model('lenet300100')
  assert [a['label'] for a in got] == [a.method for a in entry.anchors]
  # 4 N / CR bytes for a byte-counting anchor.
  assert got[1]['bytes'] == pytest.approx(4 * 266_610 / 124)


def test_a_task_is_found_from_the_dataset_or_the_config():
  config = mnist_config.get_config('smoke')
  assert tasks.for_config(config) is tasks.CLASSIFICATION
  registry.register_task('test_other', tasks.Classification(), replace=True)
  config.task = 'test_other'
  assert tasks.for_config(config) is registry.task('test_other')


def test_running_a_builtin_module_registers_its_entries_once(tmp_path):
  # `python -m experiments.data` runs data.py as __main__; the registry must
  # not import it a second time (which would register 'mnist' twice). The
  # Fashion-MNIST offline source reads local files only (never the network):
  # it loads, or names the missing files.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.data', 'fashion_mnist',
       f'--data_dir={tmp_path}'],
      capture_output=True, text=True, timeout=300, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert 'is taken' not in proc.stderr, proc.stderr[-2000:]
  assert proc.returncode == 0 or 'DataError' in proc.stderr, proc.stderr[-2000:]
