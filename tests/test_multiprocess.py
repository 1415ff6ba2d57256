"""Multi-process data parallelism: two `train.py` processes on this machine (2 CPU devices each), joined by
`jax.distributed.initialize` on loopback and each reading its own shard of the data, end with the parameters of one
process that trains on the same global batches (the two shards side by side), with the device-side resize;
SIGTERM on one of them stops both at the same step (slow)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from fcos_jax.recipes import shapes
from fcos_jax import checkpoints
from fcos_jax.data import pipeline, synthetic
from fcos_jax.model import fcos
from test_signals import REPO, cpu_env, train_command
from test_train_step import run_steps

STEPS = 3


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def tiny_shapes_config(root):
  """The config that `train_command(..., root)` builds from its flags (test_signals.TINY), as a ConfigDict."""
  c = shapes.get_config()
  c.data.update(dict(root=str(root), generate_synthetic=False, short_sizes=(128,), eval_short_size=128, max_size=192,
                     canvases=((256, 256),), max_boxes=16))
  c.model.update(dict(stem_width=8, fpn_channels=16, gn_groups=4))
  c.train.num_steps = STEPS
  return c


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
  root = tmp_path / 'data'
  synthetic.generate(str(root), num_train=16, num_val=4, seed=0)
  port, workdir = free_port(), tmp_path / 'two'
  env = {**cpu_env(), 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
  procs = [subprocess.Popen(train_command(workdir, root, f'--config.train.num_steps={STEPS}',
                                          f'--config.train.checkpoint_every={STEPS}', '--config.data.resize_on=device',
                                          f'--config.train.coordinator_address=127.0.0.1:{port}',
                                          '--config.train.num_processes=2', f'--config.train.process_id={i}'),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert f'step {STEPS}/{STEPS} | loss' in outputs[0] and 'COCO box AP' in outputs[0]  # Process 0 logs, evaluates.
  assert 'COCO box AP' not in outputs[1]
  assert os.path.exists(workdir / f'metrics_step{STEPS}.json')

  config = tiny_shapes_config(root)
  config.data.resize_on = 'device'  # The processes resize in the step (the other tests here: the CPU's host path).
  shards = [iter(pipeline.make_train_dataset(config, i, 2)) for i in range(2)]
  batches = [{k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
             for parts in (tuple(next(s) for s in shards) for _ in range(STEPS))]
  state, _, _ = run_steps(config, jax.devices()[:4], batches)

  got = checkpoints.load_variables(str(workdir / 'checkpoints'), {'params': state.params, 'frozen': state.frozen})
  assert checkpoints.manager(str(workdir / 'checkpoints')).latest_step() == STEPS
  want = jax.device_get(state.params)
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(want)[0]]
  for name, a, b in zip(names, jax.tree_util.tree_leaves(got['params']), jax.tree_util.tree_leaves(want)):
    # Float32 rounding: gloo's cross-process sums add in another order than one process's. Measured on these 3 steps:
    # the two differ by at most 3.0e-8 (the same at the commit that loosened this bound to 1e-4 after seeing 2.1e-5
    # elsewhere, not reproduced), one process on 1 and on 4 devices by 6.0e-8; float32 itself is up to 3.4e-7 from
    # the same steps in float64, where 1 and 4 devices agree to 9.5e-11. So 1e-6 bounds rounding, not semantics.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=name)
  initial = fcos.init_variables(fcos.build_model(config.model), config.seed)['params']
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(initial),
                                                       jax.tree_util.tree_leaves(want)))  # Training did happen.


@pytest.mark.slow
def test_two_evaluate_processes_join_and_read_the_checkpoints_config(tmp_path):
  """`evaluate.py` without --config on each process: the config recorded in the checkpoint is read before the
  processes join (reading it must not start JAX), each process evaluates its shard, process 0 scores them all."""
  root = tmp_path / 'data'
  synthetic.generate(str(root), num_train=4, num_val=6, seed=0)
  config = tiny_shapes_config(root)
  variables = fcos.init_variables(fcos.build_model(config.model), config.seed)
  checkpoints.save_variables(str(tmp_path / 'ckpt'), variables, checkpoints.make_metadata(config))
  port = free_port()
  env = {**cpu_env(), 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
  procs = [subprocess.Popen([sys.executable, 'evaluate.py', f'--workdir={tmp_path / "eval"}',
                             f'--checkpoint={tmp_path / "ckpt"}', f'--config.train.coordinator_address=127.0.0.1:{port}',
                             '--config.train.num_processes=2', f'--config.train.process_id={i}'],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert 'COCO box AP' in outputs[0] and 'COCO box AP' not in outputs[1]
  with open(tmp_path / 'eval' / 'metrics.json') as f:
    assert json.load(f)['num_images'] == 6  # Both shards (3 + 3 images, padded to the eval batch) were scored.


def launch_pair(workdir, root, *extra):
  """Two train.py processes (2 CPU devices each) joined on a free loopback port."""
  port = free_port()
  env = {**cpu_env(), 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
  return [subprocess.Popen(train_command(workdir, root, *extra, f'--config.train.coordinator_address=127.0.0.1:{port}',
                                         '--config.train.num_processes=2', f'--config.train.process_id={i}'),
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(2)]


def finish(procs):
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


@pytest.mark.slow
def test_sigterm_on_one_process_stops_both_at_the_same_step_and_the_rerun_equals_an_uninterrupted_run(tmp_path):
  root = tmp_path / 'data'
  synthetic.generate(str(root), num_train=16, num_val=4, seed=0)
  steps = ['--config.train.num_steps=12', '--config.train.log_every=2', '--config.train.checkpoint_every=100000',
           '--config.train.final_eval=false']
  procs = launch_pair(tmp_path / 'stopped', root, *steps)
  lines = []
  for line in procs[0].stdout:  # Process 0 prints the progress; the signal goes to process 1.
    lines.append(line)
    if line.startswith('step 2/'):
      procs[1].send_signal(signal.SIGTERM)
      break
  outputs = finish(procs)
  outputs[0] = ''.join(lines) + outputs[0]
  saved = [re.search(r'(SIGTERM|A stop requested by another process): saved a checkpoint at step (\d+)', out)
           for out in outputs]
  assert all(saved), [out[-2000:] for out in outputs]
  assert saved[0].group(1) == 'A stop requested by another process' and saved[1].group(1) == 'SIGTERM'
  stopped_at = int(saved[0].group(2))
  assert stopped_at == int(saved[1].group(2)) and 2 < stopped_at < 12 and stopped_at % 2 == 0  # At a log step.
  ckpt_dir = tmp_path / 'stopped' / 'checkpoints'
  assert checkpoints.manager(str(ckpt_dir)).latest_step() == stopped_at

  finish(launch_pair(tmp_path / 'stopped', root, *steps))  # The same command resumes and finishes.
  finish(launch_pair(tmp_path / 'straight', root, *steps))
  config = tiny_shapes_config(root)
  abstract = jax.eval_shape(lambda: fcos.init_variables(fcos.build_model(config.model), 0))
  a = checkpoints.load_variables(str(ckpt_dir), abstract)
  b = checkpoints.load_variables(str(tmp_path / 'straight' / 'checkpoints'), abstract)
  assert checkpoints.manager(str(ckpt_dir)).latest_step() == 12
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
