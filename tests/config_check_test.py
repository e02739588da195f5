"""experiments.infra.config_check: one pass rejects a bad config before any stage."""

import os

import jax
import numpy as np
import pytest

import helpers
from experiments.infra import config_check
from experiments.stages import runner as pipeline
from experiments.infra import registry
from experiments.configs import mnist as mnist_config


def _smoke(**overrides):
  return helpers.override(mnist_config.get_config('smoke'), **overrides)


def _tokens(*, source, data_dir, download, num_train, num_test, seed):
  del source, data_dir, download
  rng = np.random.default_rng(seed)
  split = lambda n: (rng.integers(0, 7, (n, 5)).astype(np.int32),) * 2
  return {'train': split(num_train or 8), 'test': split(num_test or 4)}


registry.register_dataset('test_tokens', _tokens, input_shape=(5,),
                          input_dtype='int32', vocab_size=7,
                          task='classification', sources=('random',),
                          replace=True)


@pytest.mark.parametrize('overrides, match', [
    ({'model': 'resnet50'}, 'Unknown model'),
    ({'retrain.student': 'resnet50'}, 'Unknown model'),
    ({'data.name': 'cifar'}, 'Unknown dataset'),
    ({'data.source': 'web'}, 'data.source'),
    ({'retrain.mode': 'bogus'}, 'retrain.mode'),
    ({'retrain.lr_decay_to': 1.5}, 'lr_decay_to'),
    ({'retrain.tau_warmup_epochs': 9}, 'tau_warmup_epochs'),
    ({'postprocess.finetune_epochs': -1}, 'finetune_epochs'),
    ({'postprocess.finetune_mode': 'bogus'}, 'finetune_mode'),
    ({'postprocess.max_components': 1},
     r'postprocess\.max_components must be None \(no cap\) or an int >= 2'),
    ({'data.augment_shift': 28}, 'augment_shift'),
    ({'data.augment_shift': -1}, 'augment_shift'),
    ({'loop.kind': 'bogus'}, 'loop kind'),
    ({'loop.steps_per_call': 0}, 'steps_per_call'),
    ({'mesh.num_devices': 10**6}, 'num_devices'),
    ({'data.name': 'test_tokens'}, 'classification task needs'),
])
def test_bad_fields_fail_before_any_stage(tmp_path, overrides, match):
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match=match):
    pipeline.train_and_evaluate(_smoke(**overrides), workdir)
  assert not os.path.exists(workdir)  # Not even the workdir was made.


def test_what_the_pass_resolves():
  checked = config_check.check_config(_smoke(**{
      'model': 'lenet-300', 'data.augment_shift': 2,
      'postprocess.finetune_epochs': 3}))
  assert checked.model.name == checked.student.name == 'lenet300100'
  assert checked.dataset.name == 'mnist' and checked.task.metric == 'accuracy'
  assert checked.augment_shift == 2 and checked.finetune_epochs == 3
  assert checked.finetune_mode == 'straight_through'
  # A mesh over every device, none for one.
  assert (checked.runtime is None) == (jax.device_count() == 1)
  off = config_check.check_config(_smoke(**{'postprocess.finetune_epochs': 0}))
  assert off.finetune_epochs == 0 and off.augment_shift == 0


def _untyped_none_fields(config, prefix=''):
  """Fields holding a plain None, which `--config.FIELD=...` cannot set."""
  from ml_collections import config_dict  # pylint: disable=import-outside-toplevel
  for name in config.keys():
    value = config[name]
    if isinstance(value, config_dict.ConfigDict):
      yield from _untyped_none_fields(value, f'{prefix}{name}.')
    elif value is None:
      try:
        config.get_ref(name)  # A typed placeholder has a reference.
      except ValueError:
        yield prefix + name


@pytest.mark.parametrize('module, arg', [
    (m, a) for m in ('mnist', 'lenet300', 'lenet5', 'fashion_mnist')
    for a in (None, 'smoke')] + [('shakespeare', a)
                                  for a in (None, 'smoke', 'converged')])
def test_every_none_field_can_be_set_from_the_command_line(module, arg):
  """A None option is a typed placeholder, so the flag parser accepts it."""
  import importlib  # pylint: disable=import-outside-toplevel
  config_module = importlib.import_module(f'experiments.configs.{module}')
  assert list(_untyped_none_fields(config_module.get_config(arg))) == []


def test_shakespeare_mixture_options_parse_from_the_command_line():
  """What a user types, parsed by the same flag machinery as the entry point."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from experiments.configs import shakespeare  # pylint: disable=import-outside-toplevel
  argv = ['prog', f'--config={shakespeare.__file__}',
          '--config.retrain.zero_proportion=0.99',
          '--config.retrain.learn_zero_proportion=true',
          '--config.retrain.init_std=0.05']
  values = flags.FlagValues()
  # sys_argv: the overrides it defines as flags (else the real sys.argv's).
  config_flags.DEFINE_config_file('config', flag_values=values, sys_argv=argv)
  values(argv)
  rc = values.config.retrain
  assert (rc.zero_proportion, rc.learn_zero_proportion, rc.init_std) == (
      0.99, True, 0.05)
