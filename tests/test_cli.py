"""The package as a user runs it: from a directory outside the repository, without PYTHONPATH, every module imports
and every entry point (repository scripts and installed console scripts) answers --help; user errors print one short
message and exit with status 2; a resume with another model stops before any work."""

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import sysconfig
import threading

import numpy as np
import orbax.checkpoint as ocp
import pytest

from fcos_jax import checkpoints, errors
from fcos_jax import config as config_lib
from fcos_jax.commands import harness
from fcos_jax.recipes import shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
# The console scripts pyproject.toml declares, as installed in this venv (`make` reinstalls when pyproject changes).
CONSOLE_SCRIPTS = sorted(e.name for e in importlib.metadata.distribution('fcos_jax').entry_points
                         if e.group == 'console_scripts')

IMPORT_EVERY_MODULE = """
import importlib, importlib.util, pkgutil, sys
import fcos_jax
assert importlib.util.find_spec('configs') is None  # The repository's top level is not importable from here.
names = [m.name for m in pkgutil.walk_packages(fcos_jax.__path__, 'fcos_jax.')]
for name in names:
  importlib.import_module(name)
assert 'configs' not in sys.modules
print(len(names), 'fcos_jax.commands.train' in names, 'recipes.r50_1x' in ' '.join(names))
"""


def user_env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'FCOS_JAX_DEBUG')}
  return {**env, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2', **extra}


def run(command, cwd, **env):
  return subprocess.run(command, cwd=cwd, env=user_env(**env), capture_output=True, text=True, timeout=300)


def test_console_scripts_are_declared():
  assert {'fcos-train', 'fcos-evaluate', 'fcos-convert'} <= set(CONSOLE_SCRIPTS)


def test_every_module_imports_outside_the_repository(tmp_path):
  result = run([sys.executable, '-c', IMPORT_EVERY_MODULE], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  count, has_commands, has_recipes = result.stdout.split()
  assert int(count) >= 30 and has_commands == has_recipes == 'True'


@pytest.mark.parametrize('command', [
    ['train.py'], ['evaluate.py'], ['-m', 'fcos_jax.commands.convert'], *[[script] for script in CONSOLE_SCRIPTS]])
def test_entry_points_answer_help(tmp_path, command):
  if command[0].endswith('.py'):
    command = [sys.executable, os.path.join(REPO, command[0])]
  elif command[0] == '-m':
    command = [sys.executable, *command]
  else:
    command = [os.path.join(BIN, command[0])]
  result = run([*command, '--help'], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith('usage: fcos-')
  assert '--config.FIELD=VALUE' in result.stdout and 'r50_dcn_1x' in result.stdout and '--verbose' in result.stdout


def train_cli(tmp_path, *args, **env):
  return run([sys.executable, os.path.join(REPO, 'train.py'), f'--workdir={tmp_path / "w"}', *args], tmp_path, **env)


@pytest.mark.parametrize('args,message', [
    (['--config.train.batchsize=4'], 'train.batchsize is not a config field (did you mean train.batch_size?)'),
    (['--config=r50-1x'], "No config file 'r50-1x' and no recipe of that name (did you mean r50_1x?)"),
    (['--config.train.batch_size=abc'], "--config.train.batch_size=abc: invalid literal for int()"),
    (['--config.postprocess.method=fastt'],
     "Invalid config: postprocess.method='fastt' must be one of 'fast', 'paddle' (did you mean 'fast'?)"),
    (['--config.data.max_boxes=0'], 'Invalid config: data.max_boxes=0 must be positive'),
    (['--config.data.flip=maybe'], '--config.data.flip=maybe: data.flip must be true or false'),
    (['--config.data.augment=RandomCrop,Rotate(k=1)'], "data.augment='RandomCrop,Rotate(k=1)': unknown op 'Rotate'"),
])
def test_user_errors_print_one_line_and_exit_2(tmp_path, args, message):
  result = train_cli(tmp_path, *args)
  assert result.returncode == 2
  assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith('fcos-train: error: ')
  assert message in result.stderr
  assert not os.path.exists(tmp_path / 'w')  # Stopped before any work.


def test_verbose_and_debug_variable_show_the_traceback(tmp_path):
  for result in (train_cli(tmp_path, '--config.train.batchsize=4', '--verbose'),
                 train_cli(tmp_path, '--config.train.batchsize=4', FCOS_JAX_DEBUG='1')):
    assert result.returncode != 0 and 'Traceback' in result.stderr and 'ConfigError' in result.stderr


def evaluate_cli(tmp_path, *args):
  return run([os.path.join(BIN, 'fcos-evaluate'), f'--workdir={tmp_path}', *args], tmp_path)


def test_evaluate_reports_a_missing_checkpoint_in_one_line(tmp_path):
  for config in ([], ['--config=shapes']):  # Its recorded config or a recipe: the checkpoint is missing either way.
    result = evaluate_cli(tmp_path, *config, f'--checkpoint={tmp_path / "none"}')
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert f'No checkpoint directory at {tmp_path / "none"}' in result.stderr.splitlines()[-1]


def test_evaluate_overrides_the_checkpoints_recorded_config(tmp_path):
  variables = {'params': {'w': np.zeros(2, np.float32)}, 'frozen': {}}
  checkpoints.save_variables(str(tmp_path / 'ckpt'), variables, checkpoints.make_metadata(shapes.get_config()))
  result = evaluate_cli(tmp_path, f'--checkpoint={tmp_path / "ckpt"}', '--config.model.fpn_channels=36')
  assert result.returncode == 2, result.stderr[-3000:]  # gn_groups=8 is the shapes recipe's, not the default 32.
  assert result.stderr.splitlines()[-1] == ('fcos-evaluate: error: Invalid config: model.fpn_channels=36 must be '
                                            'divisible by model.gn_groups=8')
  old = checkpoints.manager(str(tmp_path / 'old'), item_names=('variables',))  # Written before metadata existed.
  old.save(0, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables)))
  old.wait_until_finished()
  result = evaluate_cli(tmp_path, f'--checkpoint={tmp_path / "old"}')
  assert result.returncode == 2 and 'records no config' in result.stderr.splitlines()[-1], result.stderr[-3000:]


def test_resume_with_another_model_stops_listing_the_differences(tmp_path):
  workdir = tmp_path / 'w'
  saved = shapes.get_config()
  saved.model.fpn_channels = 16
  saved.train.batch_size = 16
  os.makedirs(workdir / 'checkpoints' / '400')
  (workdir / 'config.json').write_text(saved.to_json())
  result = train_cli(tmp_path, '--config=shapes', '--config.train.num_steps=1200')  # num_steps may change.
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  assert 'holds checkpoints of a run with another model, assignment or data shape' in lines[-3]
  assert lines[-2:] == ['  model.fpn_channels: 16 in the saved run, 32 now',
                        '  train.batch_size: 16 in the saved run, 8 now']
  assert json.loads((workdir / 'config.json').read_text())['model']['fpn_channels'] == 16  # Left as it was.


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
  """A wheel built from the repository, installed into a new venv that borrows this venv's dependencies (a .pth
  line, so that jax and TensorFlow are not installed again): modules, console scripts, recipes by name."""
  build = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(tmp_path / 'dist'), REPO],
                         capture_output=True, text=True, timeout=600)
  assert build.returncode == 0, build.stderr[-3000:]
  assert 'deprecated' not in build.stderr  # setuptools' warning about a TOML-table license.
  wheel, = (tmp_path / 'dist').glob('fcos_jax-*.whl')
  venv = tmp_path / 'venv'
  subprocess.run([sys._base_executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=300)
  python = str(venv / 'bin' / 'python')
  site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                        capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(site, 'project_dependencies.pth'), 'w') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')
  subprocess.run([sys.executable, '-m', 'pip', '--python', python, 'install', '-q', '--no-deps', '--no-index',
                  str(wheel)], check=True, capture_output=True, timeout=300)

  result = run([python, '-c', IMPORT_EVERY_MODULE + 'print(fcos_jax.__file__)'], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split()[1:3] == ['True', 'True'] and result.stdout.split()[3].startswith(site)
  for script in CONSOLE_SCRIPTS:
    result = run([str(venv / 'bin' / script), '--help'], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(f'usage: {script}'), result.stderr[-3000:]
  result = run([python, '-c', 'from fcos_jax import config; c = config.load("r50_dcn_1x"); '
                'print(c.model.dcn_head, config.load("shapes").model.depth)'], tmp_path)
  assert result.stdout.split() == ['all', '18'], result.stderr[-3000:]
  result = run([str(venv / 'bin' / 'fcos-evaluate'), '--workdir=w', '--config=r50_1x', '--config.model.depth=51'],
               tmp_path)
  assert result.returncode == 2 and result.stderr.startswith('fcos-evaluate: error: Invalid config: model.depth=51')


def test_config_arguments_in_every_form(tmp_path):
  parser = harness.make_parser('fcos-test', 'test', 'shapes')
  args, rest = parser.parse_known_args([
      '--config.model.freeze_at', '-1', '--noconfig.data.flip', '--config.data.short_sizes=(640, 800)',
      '--config', 'r50_1x', '--config.optimizer.lr=1'])
  config = config_lib.load(args.config, harness.split_overrides(parser, rest))
  assert (config.model.freeze_at, config.data.flip, config.data.short_sizes) == (-1, False, (640, 800))
  assert config.optimizer.lr == 1.0 and isinstance(config.optimizer.lr, float)
  assert config.data.root == os.path.abspath('data/coco')  # Paths are recorded absolute.
  assert problem(lambda: config_lib.load('shapes', ['--config.train.eval_every=-2'])) == (
      'Invalid config: train.eval_every=-2 must be >= 0')

  own = tmp_path / 'my_config.py'
  own.write_text('from fcos_jax.recipes import shapes\n\ndef get_config():\n  c = shapes.get_config()\n'
                 '  c.train.num_step = 10\n  return c\n')
  assert problem(lambda: config_lib.load(str(own))) == (
      'Invalid config: train.num_step is not a config field (did you mean train.num_steps?)')
  own.write_text('def get_config():\n  return undefined_name\n')
  assert problem(lambda: config_lib.load(str(own))) == (
      f"Config file {own}: NameError: name 'undefined_name' is not defined")


def problem(load):
  with pytest.raises(errors.ConfigError) as e:
    load()
  return str(e.value)


def test_only_user_errors_are_reported_in_one_line(capsys, monkeypatch):
  """A file that disappears during a run is a bug or an accident, not a user error: its traceback is kept."""
  monkeypatch.delenv('FCOS_JAX_DEBUG', raising=False)
  parser = harness.make_parser('fcos-test', 'test', 'shapes')

  def vanished(args, config):
    raise FileNotFoundError(2, 'No such file or directory', 'data/shapes/train/000000000001.jpg')

  with pytest.raises(FileNotFoundError):
    harness.run(vanished, parser, [])

  def missing_input(args, config):
    raise errors.MissingFileError('No input file x.pdparams')

  with pytest.raises(SystemExit) as exit_:
    harness.run(missing_input, parser, [])
  assert exit_.value.code == 2 and capsys.readouterr().err == 'fcos-test: error: No input file x.pdparams\n'


def test_a_user_error_in_process_leaves_the_callers_hooks_alone(monkeypatch):
  """Called with argv (a notebook, a script), a user error raises SystemExit(2) and changes nothing process-wide:
  only the command run as the process silences its abandoned work on the way out."""
  monkeypatch.delenv('FCOS_JAX_DEBUG', raising=False)
  parser = harness.make_parser('fcos-test', 'test', 'shapes')

  def missing_input(args, config):
    raise errors.MissingFileError('No input file x.pdparams')

  hooks = (sys.stderr, sys.excepthook, sys.unraisablehook, threading.excepthook, logging.root.manager.disable)
  with pytest.raises(SystemExit):
    harness.run(missing_input, parser, [])
  assert (sys.stderr, sys.excepthook, sys.unraisablehook, threading.excepthook,
          logging.root.manager.disable) == hooks
