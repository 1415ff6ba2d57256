"""Runs a notebook in place with this Python's kernel and stores its outputs, as `make notebook` does.

    .venv/bin/python notebooks/execute.py notebooks/inspect_assignment.ipynb

The kernel starts in a temporary folder, so the notebook imports the installed fcos_jax, not a checkout beside it.
Figures are stored as 256-colour PNGs (the pictures' noisy backgrounds would otherwise make the file megabytes), and
TensorFlow's timestamped start-up notes on stderr are left out.
"""

import base64
import io
import os
import re
import sys
import tempfile

import nbclient
import nbformat
from PIL import Image


# Lines TensorFlow's C++ logging prints when it is imported (absl's preamble, then e.g. 'I0000 00:00:17... port.cc').
STARTUP_NOTE = re.compile(r'WARNING: All log messages before absl::InitializeLog\(\)'
                          r'|[IW]\d{4} [\d:.]+ +\d+ \w+\.cc:\d+\]')


def is_startup_note(output) -> bool:
  """Whether `output` is a stderr stream holding nothing but TensorFlow's start-up notes."""
  lines = output.get('text', '').splitlines() if output.get('name') == 'stderr' else []
  return bool(lines) and all(STARTUP_NOTE.match(line) for line in lines)


def compact_png(data: str) -> str:
  """A base64 PNG as a base64 256-colour PNG (no dithering, so the shapes and boxes keep their flat colours)."""
  image = Image.open(io.BytesIO(base64.b64decode(data))).convert('RGB')
  out = io.BytesIO()
  image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(out, 'PNG', optimize=True)
  return base64.b64encode(out.getvalue()).decode('ascii')


def execute(path: str) -> None:
  """Executes the notebook at `path` top to bottom in a fresh kernel and writes it back with its outputs."""
  nb = nbformat.read(path, as_version=4)
  with tempfile.TemporaryDirectory() as cwd:
    nbclient.NotebookClient(nb, timeout=600, kernel_name='python3', record_timing=False,
                            resources={'metadata': {'path': cwd}}).execute()
  for cell in nb.cells:
    if cell.cell_type == 'code':
      cell.outputs = [output for output in cell.outputs if not is_startup_note(output)]
    for output in cell.get('outputs', []):
      if 'image/png' in output.get('data', {}):
        output['data']['image/png'] = compact_png(output['data']['image/png'])
  nbformat.write(nb, path)
  print(f'{path}: executed, {os.path.getsize(path) / 1024:.0f} KiB')


if __name__ == '__main__':
  for notebook in sys.argv[1:] or ['notebooks/inspect_assignment.ipynb']:
    execute(notebook)
