"""Named plug-ins of the pipeline: models, datasets and tasks.

The pipeline finds everything it runs by name, from the config
(`config.model`, `config.data.name`, `config.task`), in three tables:

* **models**: name -> `ModelEntry` (constructor, display name, the
  published anchors `experiments.tools.compare` and `experiments.tools.sweep` show);
* **datasets**: name -> `DatasetEntry` (loader, input shape and dtype, the
  number of classes or the vocabulary size, the task it is for);
* **tasks**: name -> a `experiments.infra.tasks.Task` (the loss, metric and
  evaluation logic of a kind of problem: image classification; a language
  model).

A new one plugs in with a call, no code of the pipeline changes::

  from experiments.infra import registry
  registry.register_model('mlp', lambda info: MLP(info.num_outputs),
                          display_name='MLP 784-64-10')
  registry.register_dataset('digits', load_digits, input_shape=(8, 8, 1),
                            num_classes=10)

then `--config.model=mlp --config.data.name=digits`. Names are matched
ignoring case, ``-`` and ``_``; aliases resolve to their entry. The
built-in entries are registered by `experiments.image.models`,
`experiments.image.data`, `experiments.infra.tasks` and
`experiments.language.task`, imported on the first look-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
import importlib
import sys
from typing import Any, Generic, TypeVar

Entry = TypeVar('Entry')

# The modules that register the built-in entries.
_BUILTIN_MODULES = ('experiments.image.models', 'experiments.image.data',
                    'experiments.infra.tasks', 'experiments.language.task')


def canonical(name: str) -> str:
  """The look-up key of a name: lower case, without ``-`` and ``_``."""
  return str(name).lower().replace('-', '').replace('_', '')


class Registry(Mapping, Generic[Entry]):
  """A name -> entry table with aliases; a read-only mapping of names.

  Iteration yields the registered names (not the aliases) in registration
  order.
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Entry] = {}
    self._names: dict[str, str] = {}  # canonical name or alias -> name

  def add(self, name: str, entry: Entry, *, aliases: Sequence[str] = (),
          replace: bool = False) -> Entry:
    """Registers `entry` under `name` and `aliases`.

    Raises:
      ValueError: an empty name, or a name or alias taken by another entry
        (unless `replace`, which re-registers `name` itself).
    """
    if not isinstance(name, str) or not canonical(name):
      raise ValueError(f'A {self.kind} needs a non-empty name, got {name!r}.')
    keys = [canonical(k) for k in (name, *aliases)]
    for key, given in zip(keys, (name, *aliases)):
      owner = self._names.get(key)
      if owner is not None and not (replace and owner == name):
        raise ValueError(
            f'{self.kind} name {given!r} is taken by the registered '
            f'{self.kind} {owner!r}; pick another name or pass '
            'replace=True to re-register it.')
    if replace and name in self._entries:
      self._names = {k: v for k, v in self._names.items() if v != name}
    self._entries[name] = entry
    for key in keys:
      self._names[key] = name
    return entry

  def name_of(self, name: str) -> str:
    """The registered name that `name` (any spelling or alias) means.

    Raises:
      ValueError: no such entry; the message lists the registered names.
    """
    _load_builtins()
    key = canonical(name)
    if key not in self._names:
      aliases = sorted(k for k, v in self._names.items()
                       if k != canonical(v))
      raise ValueError(
          f'Unknown {self.kind} {name!r}; expected one of {tuple(self)}'
          + (f' (aliases {tuple(aliases)})' if aliases else '') + '.')
    return self._names[key]

  def aliases(self) -> dict[str, str]:
    """`{alias: name}` for the keys that are not a name's own spelling."""
    _load_builtins()
    return {k: v for k, v in self._names.items() if k != canonical(v)}

  def __getitem__(self, name: str) -> Entry:
    return self._entries[self.name_of(name)]

  def __contains__(self, name: object) -> bool:
    _load_builtins()
    return isinstance(name, str) and canonical(name) in self._names

  def __iter__(self) -> Iterator[str]:
    _load_builtins()
    return iter(list(self._entries))

  def __len__(self) -> int:
    _load_builtins()
    return len(self._entries)


_builtins = {'loaded': False}


def _load_builtins() -> None:
  """Imports the modules that register the built-in entries, once."""
  if _builtins['loaded']:
    return
  _builtins['loaded'] = True  # Before importing: they look names up too.
  main = sys.modules.get('__main__')
  main_name = getattr(getattr(main, '__spec__', None), 'name', None)
  try:
    for module in _BUILTIN_MODULES:
      if module == main_name and module not in sys.modules:
        # `python -m` of a registering module: that run is the module and has
        # registered its entries; importing it again would register twice.
        sys.modules[module] = main
        continue
      importlib.import_module(module)
  except BaseException:
    _builtins['loaded'] = False
    raise


# --------------------------------------------------------------- datasets ---


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  """A dataset: how to load it and what one example looks like.

  Attributes:
    name: the registered name.
    loader: `loader(*, source, data_dir, download, num_train, num_test,
      seed) -> {'train': (x, y), 'test': (x, y)}` of NumPy arrays; with
      `validation`, it also takes `num_valid` and returns a `'valid'`
      split.
    input_shape: one example's shape without the batch axis, e.g.
      ``(28, 28, 1)`` for images or ``(T,)`` for token windows.
    input_dtype: dtype of the inputs (``'float32'`` images, ``'int32'``
      tokens).
    num_classes: classes of a classification dataset, else None.
    vocab_size: tokens of a text dataset, else None.
    task: the registered task it is for by default (`config.task` None).
    display_name: the name reports print, e.g. ``'Fashion-MNIST'``.
    sources: the values `config.data.source` may take.
    validation: whether the loader returns a validation split (`'valid'`,
      kept apart from `'train'` and `'test'`), on which the teacher can
      stop early (`config.teacher.patience`).
  """
  name: str
  loader: Callable[..., Any]
  input_shape: tuple[int, ...]
  input_dtype: str = 'float32'
  num_classes: int | None = None
  vocab_size: int | None = None
  task: str = 'classification'
  display_name: str = ''
  sources: tuple[str, ...] = ('offline',)
  validation: bool = False

  @property
  def num_outputs(self) -> int:
    """Logits per prediction: the classes, else the vocabulary."""
    return self.num_classes if self.num_classes is not None else (
        self.vocab_size)

  @property
  def is_image(self) -> bool:
    """NHWC images (what random shifts and conv nets take)."""
    return len(self.input_shape) == 3


DATASETS: Registry[DatasetEntry] = Registry('dataset')


def register_dataset(name: str, loader: Callable[..., Any], *,
                     input_shape: Sequence[int],
                     input_dtype: str = 'float32',
                     num_classes: int | None = None,
                     vocab_size: int | None = None,
                     task: str = 'classification',
                     display_name: str | None = None,
                     sources: Sequence[str] = ('offline',),
                     aliases: Sequence[str] = (),
                     replace: bool = False,
                     validation: bool = False) -> DatasetEntry:
  """Registers a dataset (see `DatasetEntry` for the arguments).

  Exactly one of `num_classes` (classification) and `vocab_size` (text)
  is given.

  Raises:
    ValueError: both or neither of `num_classes` and `vocab_size`, a
      non-positive size, or a name already taken.
  """
  if (num_classes is None) == (vocab_size is None):
    raise ValueError(f'dataset {name!r}: give exactly one of num_classes '
                     f'and vocab_size, got {num_classes!r} and '
                     f'{vocab_size!r}.')
  size = num_classes if num_classes is not None else vocab_size
  if not (isinstance(size, int) and size >= 2):
    raise ValueError(f'dataset {name!r}: the number of classes or tokens '
                     f'must be an int >= 2, got {size!r}.')
  shape = tuple(int(d) for d in input_shape)
  if not shape or any(d < 1 for d in shape):
    raise ValueError(f'dataset {name!r}: bad input_shape {input_shape!r}.')
  entry = DatasetEntry(
      name=name, loader=loader, input_shape=shape, input_dtype=input_dtype,
      num_classes=num_classes, vocab_size=vocab_size, task=task,
      display_name=display_name or name, sources=tuple(sources),
      validation=validation)
  return DATASETS.add(name, entry, aliases=aliases, replace=replace)


def dataset(name: str) -> DatasetEntry:
  """The registered dataset `name` (raises ValueError naming the known)."""
  return DATASETS[name]


# ----------------------------------------------------------------- models ---


@dataclasses.dataclass(frozen=True)
class Anchor:
  """A published result a model's runs are compared with.

  Attributes:
    method: who and what, e.g. ``'EPR (Oktay et al. 2020)'``.
    error: the compressed model's test error.
    compression: the published compression rate.
    counts: what the rate counts, and so the column it goes in: ``'file'``
      (real bitstream, CR_file), ``'analytic'`` (Han-style storage count,
      CR_Han) or ``'sparsity'`` (|W| / |W != 0|).
    note: a short remark for the table.
    file: the published file size as printed, if any.
    error_reference: the uncompressed model's error, if published.
  """
  method: str
  error: float
  compression: float
  counts: str
  note: str = ''
  file: str | None = None
  error_reference: float | None = None

  def as_dict(self) -> dict[str, Any]:
    """The anchor as the dict `experiments.tools.compare.ANCHORS` has held."""
    out = {'method': self.method, 'error': self.error,
           'compression': self.compression, 'counts': self.counts}
    for key in ('error_reference', 'file'):
      if getattr(self, key) is not None:
        out[key] = getattr(self, key)
    out['note'] = self.note
    return out


ANCHOR_COUNTS = ('file', 'analytic', 'sparsity')


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A model: how to build it and what it is compared with.

  Attributes:
    name: the registered name.
    constructor: `constructor(info) -> flax module`, `info` the
      `DatasetEntry` it runs on (its `input_shape`, `num_outputs`).
    display_name: the name tables print, e.g. ``'LeNet-300-100'``.
    default_dataset: the dataset a model built without one is sized for.
    parameters: its parameter count on `default_dataset`, if it has
      published anchors (tables check runs against it).
    anchors: published results (`Anchor`) of this net.
    results_dir: the committed run `experiments.tools.compare` shows, if any.
    benchmark: the key of this net's rows in the comparison tables.
  """
  name: str
  constructor: Callable[[DatasetEntry], Any]
  display_name: str
  default_dataset: str = 'mnist'
  parameters: int | None = None
  anchors: tuple[Anchor, ...] = ()
  results_dir: str | None = None
  benchmark: str | None = None

  def build(self, info: DatasetEntry | str | None = None):
    """The module for dataset `info` (a name or entry; None: the default)."""
    if info is None:
      info = self.default_dataset
    if isinstance(info, str):
      info = dataset(info)
    return self.constructor(info)


MODELS: Registry[ModelEntry] = Registry('model')


def register_model(name: str, constructor: Callable[[DatasetEntry], Any], *,
                   display_name: str | None = None,
                   aliases: Sequence[str] = (),
                   default_dataset: str = 'mnist',
                   parameters: int | None = None,
                   anchors: Sequence[Anchor | Mapping[str, Any]] = (),
                   results_dir: str | None = None,
                   benchmark: str | None = None,
                   replace: bool = False) -> ModelEntry:
  """Registers a model (see `ModelEntry` for the arguments).

  `anchors` may be `Anchor`s or dicts of its fields.

  Raises:
    ValueError: an anchor that counts something other than
      `ANCHOR_COUNTS`, or a name already taken.
  """
  anchors = tuple(a if isinstance(a, Anchor) else Anchor(**a)
                  for a in anchors)
  for a in anchors:
    if a.counts not in ANCHOR_COUNTS:
      raise ValueError(f'model {name!r}: anchor {a.method!r} counts '
                       f'{a.counts!r}; expected one of {ANCHOR_COUNTS}.')
  entry = ModelEntry(
      name=name, constructor=constructor, display_name=display_name or name,
      default_dataset=default_dataset, parameters=parameters,
      anchors=anchors, results_dir=results_dir,
      benchmark=benchmark or name)
  return MODELS.add(name, entry, aliases=aliases, replace=replace)


def model(name: str) -> ModelEntry:
  """The registered model `name` (raises ValueError naming the known)."""
  return MODELS[name]


def benchmark_models() -> dict[str, ModelEntry]:
  """`{benchmark key: entry}` of the models with published anchors."""
  return {e.benchmark: e for e in MODELS.values() if e.anchors}


# ------------------------------------------------------------------ tasks ---


TASKS: Registry[Any] = Registry('task')


def register_task(name: str, task: Any, *, aliases: Sequence[str] = (),
                  replace: bool = False) -> Any:
  """Registers a task: an `experiments.infra.tasks.Task` instance."""
  return TASKS.add(name, task, aliases=aliases, replace=replace)


def task(name: str) -> Any:
  """The registered task `name` (raises ValueError naming the known)."""
  return TASKS[name]


__all__ = ('ANCHOR_COUNTS', 'Anchor', 'DATASETS', 'DatasetEntry', 'MODELS',
           'ModelEntry', 'Registry', 'TASKS', 'benchmark_models',
           'canonical', 'dataset', 'model', 'register_dataset',
           'register_model', 'register_task', 'task')
