"""Outputs written whole or not at all: every artifact is written under a temporary name beside its destination
(`NAME.partial`) and renamed into place once complete. A failure removes the temporary and leaves nothing new; a
process killed meanwhile leaves only the clearly named `NAME.partial`."""

import contextlib
import json
import os
import shutil
from typing import Any, Iterator

PARTIAL = '.partial'


def _remove(path):
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` to write one file at; renames it to `path` when the block ends without an
  exception, else removes it."""
  tmp = path + PARTIAL
  _remove(tmp)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    _remove(tmp)


def write_json(path: str, value: Any, indent: int | None = None) -> None:
  """`value` as json at `path`, whole or not at all."""
  with replacing(path) as tmp, open(tmp, 'w') as f:
    json.dump(value, f, indent=indent)


def _merge(source, destination):
  """Moves every entry of directory `source` into directory `destination` (sub-directories merged, files replaced)."""
  for name in sorted(os.listdir(source)):
    src, dst = os.path.join(source, name), os.path.join(destination, name)
    if os.path.isdir(src) and os.path.isdir(dst):
      _merge(src, dst)
    else:
      if os.path.isdir(dst):
        shutil.rmtree(dst)
      os.replace(src, dst)


@contextlib.contextmanager
def directory(path: str) -> Iterator[str]:
  """Yields a new empty directory beside `path` to write the outputs into; when the block ends without an exception
  it becomes `path` (or, if `path` exists, its entries are moved into it), else it is removed."""
  tmp = path.rstrip(os.sep) + PARTIAL
  _remove(tmp)
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.isdir(path):
      _merge(tmp, path)
    else:
      os.replace(tmp, path)
  finally:
    _remove(tmp)
