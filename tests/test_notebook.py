"""notebooks/inspect_assignment.ipynb: the committed copy shows its pictures, and it still runs top to bottom in a
fresh kernel (headless, from a folder outside the repository, so it imports the installed package)."""

import pathlib

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'notebooks' / 'inspect_assignment.ipynb'
FIGURE_CALL = 'explain_plots.plot_'  # A code cell calling one of these draws a figure.


def figure_cells(nb):
  return [cell for cell in nb.cells if cell.cell_type == 'code' and FIGURE_CALL in cell.source]


def without_picture(nb):
  """The last source line of each figure cell that has no PNG output."""
  return [cell.source.splitlines()[-1] for cell in figure_cells(nb)
          if not any('image/png' in o.get('data', {}) for o in cell.outputs)]


def stdout(nb):
  """Per code cell, the text it printed."""
  return [''.join(o.get('text', '') for o in cell.outputs if o.get('name') == 'stdout')
          for cell in nb.cells if cell.cell_type == 'code']


def test_committed_notebook_shows_its_figures():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert len(figure_cells(nb)) >= 6
  assert not without_picture(nb), f'figure cells stored without a picture (run `make notebook`): {without_picture(nb)}'
  outputs = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.outputs]
  assert not [o for o in outputs if o.get('output_type') == 'error']
  assert not [cell for cell in nb.cells if 'sys.path' in cell.source]  # The installed package, not a checkout.
  assert NOTEBOOK.stat().st_size < 800_000, 'keep the stored figures small (notebooks/execute.py)'


def test_inspect_assignment_notebook_executes(tmp_path):
  committed = nbformat.read(NOTEBOOK, as_version=4)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=300, kernel_name='python3', allow_errors=False,
                          resources={'metadata': {'path': str(tmp_path)}})
  client.execute()  # Raises CellExecutionError, naming the cell, on any error.
  assert not without_picture(nb)
  text = ''.join(stdout(nb))
  assert 'max(ltrb) range' in text  # The box table was printed.
  assert 'too small: no location inside its sampling region' in text
  assert stdout(nb) == stdout(committed), 'the committed outputs are stale: run `make notebook`'
