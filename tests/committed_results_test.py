"""The committed results in results/: each reloads to its report's metric,
and each headline run is what its config runs today.

Apart from tests/pipeline_test.py so that xdist's scheduler can run it
beside that module's whole-pipeline runs.
"""

import glob
import json
import os

import jax
import pytest

import gmp_jax
from experiments.configs import lenet300 as lenet300_config
from experiments.configs import lenet5 as lenet5_config
from experiments.configs import mnist as mnist_config
from experiments.configs import shakespeare as shakespeare_config
from experiments.image import data as data_lib
from experiments.image import models
from experiments.infra import registry
from experiments.tools import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


COMMITTED = sorted(
    os.path.relpath(os.path.dirname(path), os.path.join(REPO, 'results'))
    for pattern in ('*/report.json', '*/*/report.json')  # Sweeps: one level down.
    for path in glob.glob(os.path.join(REPO, 'results', pattern)))


@pytest.fixture(scope='module')
def committed_evaluator():
  """`(dataset, student, metric) -> params -> metrics`, built once each.

  The committed runs of one net share the test split, loaded once, and
  one compiled evaluation.
  """
  built = {}

  def get(dataset_name, student, metric):
    key = (dataset_name, student, metric)
    if key not in built:
      try:
        dataset = data_lib.load_dataset(dataset_name, download=False)
      except data_lib.DataError as e:
        pytest.skip(f'{dataset_name} is not on this machine: {e}')
      model = models.get_model(student, dataset_name)
      apply_fn = lambda p, x: model.apply({'params': p}, x)  # pylint: disable=unnecessary-lambda-assignment
      x, y = dataset['test']
      if metric == 'accuracy':
        step = gmp_jax.make_eval_step(apply_fn)
        x, y = jax.device_put((x, y))
        built[key] = lambda params: gmp_jax.evaluate(step, params, x, y,
                                                     batch_size=1000)
      else:
        task = registry.task(registry.dataset(dataset_name).task)
        built[key] = task.evaluator(task.test_set(x, y, batch_size=64),
                                    apply_fn)
    return built[key]

  return get


@pytest.mark.xla_optimized
@pytest.mark.parametrize('name', COMMITTED)
def test_committed_result_reproduces_its_accuracy(name, committed_evaluator):
  """Each committed file, reloaded, scores its report's headline metric.

  The file holds the fine-tuned model when the run fine-tuned (cleanup
  keeps predictions bit-identical), the pruned one otherwise. Accuracy is
  recomputed by `gmp_jax.evaluate`, any other task's metric by its task,
  on the whole test split.
  """
  results = os.path.join(REPO, 'results', name)
  report = json.load(open(os.path.join(results, 'report.json')))
  dataset_name = report['config']['data']['name']
  if dataset_name == 'mnist' and not data_lib.is_cached('mnist'):
    pytest.skip('MNIST is not cached (python -m experiments.data mnist)')
  metric = report.get('metric', 'accuracy')
  evaluate = committed_evaluator(dataset_name, report['student'], metric)
  path = os.path.join(results, report['compressed_file'])
  params = gmp_jax.load_compressed(path)
  assert os.path.getsize(path) == report['file_bytes']
  table2 = report['table2']
  want = table2.get('finetuned', table2['pruned'])
  assert evaluate(params)[metric] == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize('name, config_module', [
    ('mnist', mnist_config), ('lenet5', lenet5_config),
    ('lenet300', lenet300_config), ('shakespeare', shakespeare_config)])
def test_committed_headline_runs_are_their_configs(name, config_module):
  """results/<name> is what `--config=experiments/configs/<name>.py` runs.

  Fields added since the run count as equal only while they are None.
  """
  report = json.load(open(os.path.join(REPO, 'results', name,
                                       'report.json')))
  current = json.loads(json.dumps(config_module.get_config().to_dict()))
  assert sweep.same_config(report['config'], current)
