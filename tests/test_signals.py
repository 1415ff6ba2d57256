"""A real `train.py` process: SIGTERM saves a checkpoint at the current step and exits cleanly (slow: run with
`make test-slow`)."""

import os
import re
import signal
import subprocess
import sys

import pytest

from fcos_jax import checkpoints
from fcos_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.data.generate_synthetic=false', '--config.data.short_sizes=(128,)',
        '--config.data.eval_short_size=128', '--config.data.max_size=192', '--config.data.canvases=((256, 256),)',
        '--config.data.max_boxes=16', '--config.data.shuffle_buffer=32', '--config.model.stem_width=8',
        '--config.model.fpn_channels=16', '--config.model.gn_groups=4', '--config.train.num_steps=100000',
        '--config.train.log_every=1', '--config.train.checkpoint_every=100000']


@pytest.mark.slow
def test_sigterm_saves_and_exits(tmp_path):
  root = tmp_path / 'data'
  synthetic.generate(str(root), num_train=16, num_val=4, seed=0)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.Popen([sys.executable, 'train.py', '--config=configs/shapes.py', f'--workdir={tmp_path / "w"}',
                           f'--config.data.root={root}', *TINY], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith('step 2/'):
      proc.send_signal(signal.SIGTERM)
      break
  rest, _ = proc.communicate(timeout=300)
  output = ''.join(lines) + rest
  assert proc.returncode == 0, output[-3000:]
  saved = re.search(r'SIGTERM: saved a checkpoint at step (\d+)', output)
  assert saved, output[-3000:]
  assert checkpoints.manager(str(tmp_path / 'w' / 'checkpoints')).latest_step() == int(saved.group(1))
