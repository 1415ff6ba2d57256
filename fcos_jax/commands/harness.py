"""What every command shares: the config arguments (`--config=NAME_OR_PATH`, `--config.FIELD=VALUE` overrides,
loaded by `fcos_jax.config.load` before any heavy import), `--verbose`, output paths checked before any work, and
the report of user errors: one line `PROG: error: MESSAGE`, exit status 2, no traceback (`--verbose` or
`FCOS_JAX_DEBUG=1` show it). Any other exception is a bug and keeps its traceback.
"""

import argparse
import io
import logging
import os
import sys
import threading
import textwrap
from typing import Callable

from absl import logging as absl_logging
import ml_collections

from fcos_jax import config as config_lib
from fcos_jax import errors

CONFIG_HELP = f"""config:
  --config=NAME_OR_PATH    a recipe ({', '.join(config_lib.recipe_names())}) or a config file whose get_config()
                           starts from fcos_jax.config.get_config() (default: {{default}})
  --config.FIELD=VALUE     override one field, e.g. --config.train.batch_size=8 --config.data.root=/data/coco
                           --config.data.short_sizes='(640, 800)' --config.data.flip=false
  Every field, with its default and what it does: fcos_jax/config.py (python -c 'import fcos_jax.config as c;
  print(c.get_config())'). Every value is checked before the command starts its work.

environment:
  FCOS_JAX_DEBUG=1         show the traceback of a user error (as --verbose)
"""


def make_parser(prog: str, description: str, config_default: str | None = None,
                config_meaning: str = 'the config recorded in the checkpoint') -> argparse.ArgumentParser:
  """A parser with the arguments every command has: --config (default `config_default`, else `config_meaning`),
  its --config.FIELD=VALUE overrides (see `run`), --verbose."""
  default = config_default or config_meaning
  paragraphs = [p if p.startswith('  ') else textwrap.fill(p, 116) for p in description.strip().split('\n\n')]
  parser = argparse.ArgumentParser(prog=prog, description='\n\n'.join(paragraphs),
                                   epilog=CONFIG_HELP.format(default=default), allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default=config_default, metavar='NAME_OR_PATH',
                      help=f'recipe name or config file (default: {default}); see "config" below')
  parser.add_argument('--verbose', action='store_true', help='show tracebacks of user errors')
  return parser


def split_overrides(parser: argparse.ArgumentParser, rest: list[str]) -> list[str]:
  """The `--config.FIELD[=VALUE]` arguments (with their values where given separately) among the arguments that
  `parser` left; anything else is a usage error."""
  overrides, unknown, expects_value = [], [], False
  for arg in rest:
    if config_lib.override_path(arg) is not None:
      overrides.append(arg)
      expects_value = '=' not in arg and not arg.lstrip('-').startswith('no')
    elif expects_value and not arg.startswith('--'):  # absl's `--config.FIELD VALUE` form (VALUE may be -1).
      overrides.append(arg)
      expects_value = False
    else:
      unknown.append(arg)
  if unknown:
    parser.error(f'unrecognized arguments: {" ".join(unknown)}')
  return overrides


def check_output_directory(path: str, flag: str) -> None:
  """A DataError naming `flag` if `path`, an output directory to write into, is a file (checked before any work)."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise errors.DataError(f'{flag}={path} is a file, not a directory')


Recorded = Callable[[argparse.Namespace], ml_collections.ConfigDict]


def run(command: Callable, parser: argparse.ArgumentParser, argv: list[str] | None = None,
        recorded: Recorded | None = None, uses: str = 'train') -> int:
  """Parses `argv` (default: sys.argv[1:]) with `parser` and the config overrides, loads the config
  (`config_lib.load`; without --config, `recorded(args)`, e.g. a checkpoint's; None without either), then
  returns `command(args, config)`'s exit status (None: 0). The config is validated for what the command `uses`
  (`config_lib.USES`). A user error prints one line and exits with status 2."""
  program = argv is None  # Run as the process's command: a user error ends the process.
  argv = sys.argv[1:] if program else list(argv)
  verbose = '--verbose' in argv or os.environ.get('FCOS_JAX_DEBUG', '') not in ('', '0')
  try:
    args, rest = parser.parse_known_args(argv)
    overrides = split_overrides(parser, rest)
    base = recorded(args) if args.config is None and recorded else None
    if args.config is None and base is None:
      if overrides:
        parser.error('--config.FIELD=VALUE overrides need --config')
      config = None
    else:
      config = config_lib.load(args.config, overrides, base, uses)
    return command(args, config) or 0
  except errors.UserError as e:
    if verbose:
      raise
    print(f'{parser.prog}: error: {str(e).strip()}', file=sys.stderr, flush=True)
    if program:
      _silence_abandoned_work()
    sys.exit(2)


def _silence_abandoned_work():
  """The error is reported and the process is ending: work abandoned by it (e.g. orbax's pending reads of a
  damaged checkpoint) must not print 'Exception ignored ...' blocks, its threads' tracebacks ('Event loop is
  closed') or asyncio's log on the way out. Process-wide, so only for a command run as the process."""
  sys.unraisablehook = lambda unraisable: None
  threading.excepthook = lambda args: None
  sys.excepthook = lambda *exc_info: None
  sys.stderr = io.StringIO()
  logging.disable(logging.CRITICAL)


def quiet_libraries():
  """Progress is printed by fcos_jax; orbax and TensorFlow are chatty at INFO."""
  absl_logging.set_verbosity(absl_logging.WARNING)
