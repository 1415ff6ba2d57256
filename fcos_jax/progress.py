"""The progress line of long work (evaluation, prediction): one terminal line, rewritten in place."""

from typing import TextIO

_WIDTH = 30  # Characters of the bar.


def show(stream: TextIO, what: str, done: int, total: int, detail: str) -> None:
  """Rewrites the current line of `stream` as 'what [#####     ] detail', the bar `done` / `total` full."""
  stream.write(f'\r{what} [{"#" * (_WIDTH * done // max(total, 1)):<{_WIDTH}s}] {detail}')
  stream.flush()
