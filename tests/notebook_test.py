"""experiments/colab_tpu.ipynb runs top to bottom, headless, in smoke mode.

The notebook is executed as committed with nbclient in a fresh IPython
kernel (this interpreter's), with `GMP_JAX_NOTEBOOK_SMOKE=1`: the `:smoke`
config on CPU. Any cell error fails the module. The checks then read the
outputs against what the run left on disk.
"""

import base64
import json
import os
import re

import nbformat
from nbclient import NotebookClient
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'experiments', 'colab_tpu.ipynb')
CELL_TIMEOUT_S = 900
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('colab_notebook'))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  with pytest.MonkeyPatch.context() as mp:
    # The kernel inherits this environment.
    mp.setenv('GMP_JAX_NOTEBOOK_SMOKE', '1')
    mp.setenv('GMP_JAX_NOTEBOOK_WORKDIR', workdir)
    mp.setenv('JAX_PLATFORMS', 'cpu')
    # One CPU device, not conftest's four: the notebook's pipeline then
    # compiles single-device programs (about 10 s less on 2 cores). The
    # mesh paths it would take on a TPU are tested by the pipeline's own
    # mesh tests.
    mp.setenv('JAX_NUM_CPU_DEVICES', '1')
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name='python3',
        allow_errors=False, resources={'metadata': {'path': REPO}})
    client.execute()  # Raises CellExecutionError on the first failing cell.
  return nb, workdir


def _outputs(nb):
  for cell in nb.cells:
    if cell.cell_type == 'code':
      yield from cell.get('outputs', [])


def _text(nb) -> str:
  """Every stream and text/* output of the executed notebook, joined."""
  parts = []
  for out in _outputs(nb):
    if out.output_type == 'stream':
      parts.append(out.text)
    elif out.output_type in ('display_data', 'execute_result'):
      for mime, value in out.data.items():
        if mime.startswith('text/'):
          parts.append(value if isinstance(value, str) else ''.join(value))
  return '\n'.join(parts)


def _code(nb) -> str:
  return '\n'.join(c.source for c in nb.cells if c.cell_type == 'code')


def test_every_code_cell_ran_without_error(run):
  nb, _ = run
  code_cells = [c for c in nb.cells if c.cell_type == 'code']
  assert len(code_cells) >= 8
  for cell in code_cells:
    assert cell.execution_count is not None
    assert not [o for o in cell.outputs if o.output_type == 'error']


def test_install_cell_does_nothing_when_gmp_jax_imports(run):
  nb, _ = run
  text = _text(nb)
  assert 'nothing to install' in text
  assert 'keeping' not in text and 'installed gmp_jax' not in text


def test_device_check_explains_how_to_get_a_tpu(run):
  nb, _ = run
  text = _text(nb)
  assert 'No TPU here: this runtime runs on CPU' in text
  assert 'Change runtime type' in text


def test_size_report_matches_the_file_on_disk(run):
  nb, workdir = run
  with open(os.path.join(workdir, 'report.json')) as f:
    report = json.load(f)
  model = os.path.join(workdir, report['compressed_file'])
  file_bytes = os.path.getsize(model)
  match = re.search(r'size report: (\S+): ([\d,]+) bytes on disk, '
                    r'CR_file ([\d.]+)x, CR_Han ([\d.]+x|n/a)', _text(nb))
  assert match, 'size report line missing'
  assert match.group(1) == model
  assert int(match.group(2).replace(',', '')) == file_bytes
  n = report['table1'][-1]['parameters']
  assert float(match.group(3)) == pytest.approx(32 * n / (8 * file_bytes),
                                                abs=0.051)
  # The per-leaf size table and Tables 1 and 2.
  text = _text(nb)
  assert f'| {file_bytes:,} |' in text
  assert 'CR_Han (Deep Compression storage count)' in text
  assert '**Table 1: sparsity**' in text
  assert '**Table 2: test accuracy**' in text
  pruned = f"{100 * report['table2']['pruned']:.2f}%"
  assert pruned in text


def test_figures_are_shown_inline(run):
  nb, workdir = run
  images = [base64.b64decode(o.data['image/png']) for o in _outputs(nb)
            if o.output_type == 'display_data' and 'image/png' in o.data]
  assert len(images) >= 2
  for name in ('retraining_clustering.png', 'model_weights.png'):
    with open(os.path.join(workdir, 'figures', name), 'rb') as f:
      on_disk = f.read()
    assert on_disk.startswith(PNG_SIGNATURE)
    assert on_disk in images


def test_compose_section_quantises_a_model_of_ones_own(run):
  nb, workdir = run
  match = re.search(r'my MLP: .* ([\d,]+) bytes', _text(nb))
  assert match
  saved = os.path.getsize(os.path.join(workdir, 'my_mlp.gmpz'))
  assert int(match.group(1).replace(',', '')) == saved


def test_download_cell_names_the_file_off_colab(run):
  nb, _ = run
  assert 'Not on Colab: the file stays at the path above.' in _text(nb)


def test_committed_notebook_is_stripped_and_colab_ready():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None
  assert nb.metadata['accelerator'] == 'TPU'
  code = _code(nb)
  assert 'setup_tpu' not in code  # Gone from jax; a TPU runtime needs none.
  assert re.search(r"^GMP_JAX_REPO_URL = '[^']+'\s+# <-- EDIT", code,
                   re.MULTILINE)
  assert 'jax[tpu]' not in code and ' -U ' not in code
