"""Real `train.py` processes: SIGTERM or SIGINT saves and exits cleanly; after SIGKILL at an arbitrary moment,
rerunning the same command ends with the parameters of an uninterrupted run, to the bit (slow: `make test-slow`)."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fcos_jax.recipes import shapes
from fcos_jax import checkpoints
from fcos_jax.data import synthetic
from fcos_jax.model import fcos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.data.generate_synthetic=false', '--config.data.short_sizes=(128,)',
        '--config.data.eval_short_size=128', '--config.data.max_size=192', '--config.data.canvases=((256, 256),)',
        '--config.data.max_boxes=16', '--config.model.stem_width=8',
        '--config.model.fpn_channels=16', '--config.model.gn_groups=4', '--config.train.num_steps=100000',
        '--config.train.log_every=1', '--config.train.checkpoint_every=100000']


def train_command(workdir, root, *extra):
  return [sys.executable, 'train.py', '--config=configs/shapes.py', f'--workdir={workdir}',
          f'--config.data.root={root}', *TINY, *extra]


def cpu_env():
  return {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
  root = tmp_path / 'data'
  synthetic.generate(str(root), num_train=16, num_val=4, seed=0)
  steps = ['--config.train.num_steps=8', '--config.train.checkpoint_every=2', '--config.train.final_eval=false']
  subprocess.run(train_command(tmp_path / 'straight', root, *steps), cwd=REPO, env=cpu_env(), check=True,
                 capture_output=True, timeout=600)
  killed = subprocess.Popen(train_command(tmp_path / 'killed', root, *steps), cwd=REPO, env=cpu_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = tmp_path / 'killed' / 'checkpoints'
  deadline = time.time() + 300
  while not (ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())) and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(np.random.default_rng().uniform(0, 0.5))  # Somewhere in the next steps, maybe inside a save.
  killed.send_signal(signal.SIGKILL)
  assert killed.wait() == -signal.SIGKILL  # It was still running: the kill interrupted it.
  subprocess.run(train_command(tmp_path / 'killed', root, *steps), cwd=REPO, env=cpu_env(), check=True,
                 capture_output=True, timeout=600)
  config = shapes.get_config()
  config.model.update(dict(stem_width=8, fpn_channels=16, gn_groups=4))
  model = fcos.build_model(config.model)
  abstract = jax.eval_shape(lambda: fcos.init_variables(model, 0))
  a = checkpoints.load_variables(str(tmp_path / 'straight' / 'checkpoints'), abstract)
  b = checkpoints.load_variables(str(ckpt_dir), abstract)
  assert checkpoints.manager(str(ckpt_dir)).latest_step() == 8
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_signal_saves_and_exits(tmp_path, signum):
  root = tmp_path / 'data'
  synthetic.generate(str(root), num_train=16, num_val=4, seed=0)
  proc = subprocess.Popen(train_command(tmp_path / 'w', root), cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith('step 2/'):
      proc.send_signal(signum)
      break
  rest, _ = proc.communicate(timeout=300)
  output = ''.join(lines) + rest
  assert proc.returncode == 0, output[-3000:]
  saved = re.search(rf'{signum.name}: saved a checkpoint at step (\d+)', output)
  assert saved, output[-3000:]
  assert checkpoints.manager(str(tmp_path / 'w' / 'checkpoints')).latest_step() == int(saved.group(1))
