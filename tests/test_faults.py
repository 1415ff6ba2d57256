"""The fault matrix (slow: `make test-slow`): real `train.py` processes are killed or stopped at awkward moments, or
lose their newest checkpoint, their disk or an image file, and each case ends with a run of the same command whose
parameters equal, to the bit, those of one uninterrupted run. The default suite's short version is test_resume.py."""

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fcos_jax import checkpoints
from fcos_jax.data import synthetic
from fcos_jax.model import fcos
from fcos_jax.recipes import shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
TINY = ['--config.data.generate_synthetic=false', '--config.data.short_sizes=(128,)',
        '--config.data.eval_short_size=128', '--config.data.max_size=192', '--config.data.canvases=((256, 256),)',
        '--config.data.max_boxes=16', '--config.model.stem_width=8', '--config.model.fpn_channels=16',
        '--config.model.gn_groups=4', f'--config.train.num_steps={STEPS}', '--config.train.log_every=1',
        '--config.train.checkpoint_every=1', '--config.train.final_eval=false']

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """The dataset, a compilation cache shared by every process, and the parameters of one uninterrupted run."""
  base = tmp_path_factory.mktemp('faults')
  synthetic.generate(str(base / 'data'), num_train=16, num_val=4, seed=0)
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'PYTHONPATH')}
  env.update(JAX_COMPILATION_CACHE_DIR=str(base / 'jax_cache'), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  context = {'root': base / 'data', 'env': env}
  run(context, base / 'straight')
  context['straight'] = params(base / 'straight')
  return context


def command(context, workdir, *extra):
  return [sys.executable, os.path.join(REPO, 'train.py'), '--config=shapes', f'--workdir={workdir}',
          f'--config.data.root={context["root"]}', *TINY, *extra]


def run(context, workdir, *extra, **kwargs):
  """The same command a user reruns after a fault; it must finish."""
  done = subprocess.run(command(context, workdir, *extra), cwd=os.path.dirname(workdir), env=context['env'],
                        capture_output=True, text=True, timeout=900, **kwargs)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  return done.stdout


def params(workdir):
  config = shapes.get_config()
  config.model.update(dict(stem_width=8, fpn_channels=16, gn_groups=4))
  model = fcos.build_model(config.model)
  abstract = jax.eval_shape(lambda: fcos.init_variables(model, 0))
  return checkpoints.load_variables(str(workdir / 'checkpoints'), abstract)


def assert_recovered(context, workdir, *extra):
  """Rerun the command until it has trained all steps; the result equals the uninterrupted run's."""
  run(context, workdir, *extra)
  assert checkpoints.manager(str(workdir / 'checkpoints')).latest_step() == STEPS
  for x, y in zip(jax.tree_util.tree_leaves(context['straight']), jax.tree_util.tree_leaves(params(workdir))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def start(context, workdir, *extra):
  return subprocess.Popen(command(context, workdir, *extra), cwd=os.path.dirname(workdir), env=context['env'],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def signal_when(proc, starts_with, signum):
  """Sends `signum` when the process prints a line starting with `starts_with`; returns everything it printed."""
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(starts_with):
      proc.send_signal(signum)
      break
  rest, _ = proc.communicate(timeout=600)
  return ''.join(lines) + rest


@pytest.mark.parametrize('trial', range(10))
def test_sigkill_at_a_random_moment_of_the_saves(setup, tmp_path, trial):
  proc = start(setup, tmp_path / 'w')
  ckpt = tmp_path / 'w' / 'checkpoints'
  deadline = time.time() + 600
  while not (ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir())) and time.time() < deadline:
    time.sleep(0.02)
  # Every step saves: a moment drawn within the next few steps falls inside a save or close to one.
  time.sleep(np.random.default_rng(trial).uniform(0, 1.5))
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert_recovered(setup, tmp_path / 'w')


@pytest.mark.parametrize('moment', ['Compiling the train step', 'step 2/', 'evaluating'])
def test_sigterm_during_compilation_a_save_or_an_evaluation(setup, tmp_path, moment):
  extra = ('--config.train.eval_every=2',) if moment == 'evaluating' else ()
  output = signal_when(start(setup, tmp_path / 'w', *extra), moment, signal.SIGTERM)
  assert 'SIGTERM: saved a checkpoint at step' in output or 'before the first step' in output, output[-2000:]
  assert 'Traceback' not in output, output[-3000:]
  assert_recovered(setup, tmp_path / 'w', *extra)


def test_resumed_twice_by_sigterm(setup, tmp_path):
  for _ in range(2):
    output = signal_when(start(setup, tmp_path / 'w'), 'step ', signal.SIGTERM)
    assert 'SIGTERM: saved a checkpoint at step' in output, output[-2000:]
  assert_recovered(setup, tmp_path / 'w')


def test_truncated_newest_checkpoint(setup, tmp_path):
  run(setup, tmp_path / 'w', '--config.train.num_steps=3')
  step_dir = tmp_path / 'w' / 'checkpoints' / '3' / 'variables'
  largest = max((os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs), key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  refused = subprocess.run(command(setup, tmp_path / 'w'), cwd=tmp_path, env=setup['env'], capture_output=True,
                           text=True, timeout=900)
  assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-3000:]
  error = refused.stderr.strip().splitlines()[-1]
  assert 'step 3' in error and 'Step 2 can' in error and 'Traceback' not in refused.stderr, refused.stderr[-3000:]
  assert_recovered(setup, tmp_path / 'w', '--config.train.resume_fallback=true')


def test_disk_full_during_a_save(setup, tmp_path):
  """Files may grow to 64 KiB only (RLIMIT_FSIZE): the first save that needs more fails; the step before it stays
  the newest, and the rerun with room to write ends like the uninterrupted run."""
  def small_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

  failed = subprocess.run(command(setup, tmp_path / 'w'), cwd=tmp_path, env=setup['env'], capture_output=True,
                          text=True, timeout=900, preexec_fn=small_files)
  assert failed.returncode != 0
  assert 'File too large' in failed.stderr or 'EFBIG' in failed.stderr or 'too large' in failed.stderr.lower(), (
      failed.stderr[-3000:])
  assert_recovered(setup, tmp_path / 'w')


def test_an_image_that_disappears_mid_run(setup, tmp_path):
  """An image file deleted while the train step compiles (its first epoch's read already done): a later epoch's read
  fails; the run saves its last completed step and names the file in one line (exit status 2), and once the file is
  back the same command ends like the uninterrupted run."""
  context = {**setup, 'root': tmp_path / 'data'}
  shutil.copytree(setup['root'], context['root'])
  image = sorted((context['root'] / 'train').iterdir())[0]
  kept = image.read_bytes()
  proc = start(context, tmp_path / 'w')
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith('Compiling the train step'):
      image.unlink()
      break
  rest, _ = proc.communicate(timeout=600)
  output = ''.join(lines) + rest
  assert proc.returncode == 2 and 'Traceback' not in output, output[-3000:]
  error = output.strip().splitlines()[-1]
  stopped = re.fullmatch(rf'fcos-train: error: Input pipeline: {re.escape(str(image))}; No such file or directory\. '
                         r'Training stopped after step (\d+), which is saved: fix the file and run the same command '
                         r'to resume\.', error)
  assert stopped, error
  assert checkpoints.manager(str(tmp_path / 'w' / 'checkpoints')).latest_step() == int(stopped.group(1))
  image.write_bytes(kept)
  assert_recovered(context, tmp_path / 'w')
