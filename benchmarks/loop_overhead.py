"""The training loop's own cost per step on the host: what the main thread spends between two batches (handing the
batch out, sending it to the devices, dispatching the step, bookkeeping), against the step's device time.

Trains a tiny shapes model with `train_lib.train_and_evaluate` (the real loop; tf.data's threads and XLA's compute
run on other threads) and records the main thread's CPU time (`time.thread_time`) and the wall time at every batch
request. The step's device time comes from the same jitted step called alone on one batch. The loop keeps the
devices busy when its host time per step is below the device time: the host runs one step ahead.

    python -m benchmarks.loop_overhead [--steps 60] [--log-every 20]
"""

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from benchmarks import timing
from fcos_jax import optim, runtime, train_lib
from fcos_jax.data import iterator, pipeline, synthetic
from fcos_jax.model import fcos
from fcos_jax.recipes import shapes


def tiny_config(root, steps, log_every):
  c = shapes.get_config()
  c.data.root, c.data.generate_synthetic = root, False
  c.data.short_sizes, c.data.eval_short_size, c.data.max_size = (128,), 128, 192
  c.data.canvases, c.data.max_boxes = ((256, 256),), 16
  c.model.update(dict(stem_width=8, fpn_channels=16, gn_groups=4))
  c.train.update(dict(batch_size=8, num_steps=steps, log_every=log_every, checkpoint_every=10**6, final_eval=False))
  return c


def loop_times(config, workdir):
  """Per batch request of the loop: (main-thread CPU s, wall s) since the previous request."""
  marks = []
  original = iterator.BatchIterator.__next__

  def marked(self):
    marks.append((time.thread_time(), time.perf_counter()))
    return original(self)

  iterator.BatchIterator.__next__ = marked
  try:
    train_lib.train_and_evaluate(config, workdir)
  finally:
    iterator.BatchIterator.__next__ = original
  return np.diff(np.array(marks), axis=0)


def step_ms(config, repeats):
  """Median wall ms of the jitted train step alone on one batch (already on the device)."""
  mesh = runtime.create_mesh()
  model = fcos.build_model(config.model)
  tx = optim.make_optimizer(config)
  state, _ = train_lib.create_state(model, tx, config, mesh)
  batch = runtime.to_global(next(iter(pipeline.make_train_dataset(config))), mesh)
  step = jax.jit(train_lib.make_train_step(model, config, tx))
  holder = {'state': state}

  def run():
    holder['state'], metrics = step(holder['state'], batch)
    jax.block_until_ready(metrics)
  return timing.measure(run, repeats, warmup=2)['ms_median']


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--log-every', type=int, default=20)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    root = os.path.join(tmp, 'data')
    synthetic.generate(root, num_train=32, num_val=4, seed=0)
    config = tiny_config(root, args.steps, args.log_every)
    times = loop_times(config, os.path.join(tmp, 'run'))[3:]  # After the compile and the first steps.
    device = step_ms(config, repeats=20)
  cpu_ms, wall_ms = times[:, 0] * 1e3, times[:, 1] * 1e3
  rows = [{'steps timed': len(times), 'host CPU ms/step (median)': statistics.median(cpu_ms),
           'host CPU ms/step (p90)': float(np.percentile(cpu_ms, 90)), 'loop wall ms/step': statistics.median(wall_ms),
           'step alone ms': device, 'devices': jax.device_count(), 'backend': jax.default_backend()}]
  timing.report('loop_overhead', rows, list(rows[0]),
                note=f'Tiny shapes model, batch 8 at 256x256, log every {args.log_every} steps; load average '
                     f'{os.getloadavg()[0]:.1f}.')


if __name__ == '__main__':
  main()
