"""The command-line entry points `fcos-train` and `fcos-evaluate` (in the repository also `python train.py` and
`python evaluate.py`), and what they share: the config (a recipe name or a config file, with `--config.FIELD=VALUE`
overrides), checked before any heavy import, data loading or compilation; and the handling of user errors.

A user error (unknown field, bad value, missing config file, checkpoint or data file) prints one message naming what
is wrong and exits with status 2, without a traceback; `--verbose` or `FCOS_JAX_DEBUG=1` show the traceback.
"""

import argparse
import importlib.machinery
import importlib.util
import os
import sys
import textwrap

from absl import flags
from ml_collections import config_flags

from fcos_jax import config as config_lib

DEFAULT_CONFIG = 'shapes'  # The demo: trains on CPU in minutes, on a dataset it generates.
USER_ERRORS = (config_lib.ConfigError, FileNotFoundError)

CONFIG_HELP = f"""config:
  --config=NAME_OR_PATH    a recipe ({', '.join(config_lib.recipe_names())}) or a config file whose get_config()
                           starts from fcos_jax.config.get_config() (default: {{default}})
  --config.FIELD=VALUE     override one field, e.g. --config.train.batch_size=8 --config.data.root=/data/coco
                           --config.data.short_sizes='(640, 800)' --config.data.flip=false
  Every field, with its default and what it does: fcos_jax/config.py (python -c 'import fcos_jax.config as c;
  print(c.get_config())'). Every value is checked before the run starts.

environment:
  FCOS_JAX_DEBUG=1         show the traceback of a user error (as --verbose)
"""


def make_parser(prog, description, config_default=DEFAULT_CONFIG):
  """The arguments every command has: --config (its overrides are parsed by `load_config`), --verbose."""
  default = config_default or 'the config recorded in the checkpoint'
  parser = argparse.ArgumentParser(prog=prog, description=textwrap.fill(description, 116),
                                   epilog=CONFIG_HELP.format(default=default), allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default=config_default, metavar='NAME_OR_PATH',
                      help=f'recipe name or config file (default: {default}); see "config" below')
  parser.add_argument('--verbose', action='store_true', help='show tracebacks of user errors')
  return parser


def _override_path(arg):
  """'train.batch_size' for '--config.train.batch_size=8' or '--noconfig.data.flip'; None for other arguments."""
  name = arg.split('=', 1)[0].lstrip('-')
  name = name[2:] if name.startswith('noconfig.') else name
  return name[len('config.'):] if name.startswith('config.') else None


def split_overrides(parser, rest):
  """The `--config.FIELD[=VALUE]` arguments (with their values where given separately) among the arguments that
  `parser` left; anything else is a usage error."""
  overrides, unknown, expects_value = [], [], False
  for arg in rest:
    if _override_path(arg) is not None:
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


def _load_file(path):
  """`get_config()` of the Python file at `path`; any error in the file is reported as a ConfigError naming it."""
  name = 'fcos_jax_config_' + os.path.splitext(os.path.basename(path))[0]
  try:
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module.get_config()
  except Exception as e:  # The user's code: whatever it raises is reported as a problem of that file.
    raise config_lib.ConfigError(f'Config file {path}: {type(e).__name__}: {e}') from e


def apply_overrides(config, overrides):
  """Sets the `--config.FIELD=VALUE` overrides on `config` with ml_collections' parsers (types kept)."""
  problems = [config_lib.unknown_field_problem(path) for path in map(_override_path, overrides) if path]
  problems = [p for p in problems if p]
  if problems:
    raise config_lib.ConfigError('\n'.join(problems))
  argv = ['fcos', *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_dict('config', config, flag_values=values, sys_argv=argv, lock_config=True)
  try:
    values(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    message = str(e)[len('flag '):] if str(e).startswith('flag ') else str(e)
    raise config_lib.ConfigError(message) from e
  return config


def load_config(name_or_path, overrides=()):
  """The config of a recipe name or config file, with the `--config.FIELD=VALUE` overrides, validated (all but the
  device count, which `train_and_evaluate` and `evaluate_checkpoint` check once the processes have joined)."""
  config = _load_file(config_lib.recipe_path(name_or_path))
  return config_lib.validate(apply_overrides(config, overrides))


def run(command, parser, argv=None, recorded_config=None):
  """Parses `argv` (default: sys.argv[1:]) with `parser` and the config arguments, then calls
  `command(args, config)`; a user error prints one message and exits with status 2. Without --config (where the
  parser allows it), the config is `recorded_config(args)` (e.g. a checkpoint's), with the overrides."""
  argv = sys.argv[1:] if argv is None else list(argv)
  verbose = '--verbose' in argv or os.environ.get('FCOS_JAX_DEBUG', '') not in ('', '0')
  try:
    args, rest = parser.parse_known_args(argv)
    overrides = split_overrides(parser, rest)
    if args.config is None:
      config = config_lib.validate(apply_overrides(recorded_config(args), overrides))
    else:
      config = load_config(args.config, overrides)
    return command(args, config)
  except USER_ERRORS as e:
    if verbose:
      raise
    print(f'{parser.prog}: error: {str(e).strip()}', file=sys.stderr)
    sys.exit(2)


def _quiet_libraries():
  """Progress is printed by fcos_jax; orbax and TensorFlow are chatty at INFO."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)


def train_main(argv=None):
  """fcos-train: train (resuming from the latest checkpoint in --workdir), then evaluate."""
  parser = make_parser('fcos-train', 'Train FCOS in --workdir (resuming from its latest checkpoint), evaluating at '
                       'the end and every train.eval_every steps.')
  parser.add_argument('--workdir', required=True, help='directory for config.json, checkpoints, TensorBoard logs '
                      'and metrics')

  def train(args, config):
    _quiet_libraries()
    from fcos_jax import runtime, train_lib  # pylint: disable=g-import-not-at-top  (after the checks: fast errors)
    runtime.keep_tensorflow_off_accelerators()
    train_lib.train_and_evaluate(config, args.workdir)

  run(train, parser, argv)


def evaluate_main(argv=None):
  """fcos-evaluate: COCO box metrics of a checkpoint."""
  parser = make_parser('fcos-evaluate', 'Evaluate a checkpoint on the val split of its config (the one it records, '
                       'or --config): writes results.json and metrics.json into --workdir and prints the COCO table. '
                       'Joins a multi-process run like training (--config.train.coordinator_address=..., or '
                       'distributed_auto).', config_default=None)
  parser.add_argument('--workdir', required=True, help='directory with checkpoints/; results and metrics are '
                      'written here')
  parser.add_argument('--checkpoint', help='checkpoint directory to evaluate instead of the latest in --workdir '
                      '(a training run\'s checkpoints/ or a converted checkpoint)')

  def evaluate(args, config):
    _quiet_libraries()
    from fcos_jax import eval_lib, runtime  # pylint: disable=g-import-not-at-top
    runtime.keep_tensorflow_off_accelerators()
    eval_lib.evaluate_checkpoint(config, args.workdir, args.checkpoint)

  def recorded_config(args):
    from fcos_jax import checkpoints  # pylint: disable=g-import-not-at-top
    return checkpoints.config_from_checkpoint(args.checkpoint or os.path.join(args.workdir, 'checkpoints'))

  run(evaluate, parser, argv, recorded_config)
