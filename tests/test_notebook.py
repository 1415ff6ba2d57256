"""notebooks/inspect_assignment.ipynb runs top to bottom in a fresh kernel (headless) and shows its pictures."""

import pathlib

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'notebooks' / 'inspect_assignment.ipynb'


def test_inspect_assignment_notebook_executes():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=120, kernel_name='python3', allow_errors=False,
                          resources={'metadata': {'path': str(ROOT)}})
  client.execute()  # Raises CellExecutionError, naming the cell, on any error.
  outputs = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.get('outputs', [])]
  assert not [o for o in outputs if o.get('output_type') == 'error']
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) >= 5, f'expected the walkthrough pictures, got {len(images)} PNG outputs'
  text = ''.join(o.get('text', '') for o in outputs if o.get('output_type') == 'stream')
  assert 'max(ltrb) range' in text  # The box table was printed.
  assert 'too small: no location inside its sampling region' in text
