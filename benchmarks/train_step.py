"""R50 FCOS training step (normalise, forward, target assignment, loss, backward, SGD update) on the default
backend: compile time, ms/step (median, min, max), images/s, XLA FLOPs per image, MFU for a given peak, memory.

  python -m benchmarks.train_step                                     # CPU-sized: batch 1 at 512x512
  python -m benchmarks.train_step --batch 16 --canvas 896 1408 --dtype bfloat16 --peak-tflops 989   # H100
"""

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import r50_1x
from fcos_jax import optim, train_lib
from fcos_jax.model import fcos


def random_batch(batch, canvas, num_boxes, seed=0):
  rng = np.random.default_rng(seed)
  h, w = canvas
  xy = rng.uniform(0, [w * 0.8, h * 0.8], (batch, num_boxes, 2))
  wh = np.exp(rng.uniform(np.log(16), np.log(min(h, w) * 0.6), (batch, num_boxes, 2)))
  boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(np.float32)
  return {'image': rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8), 'boxes': boxes,
          'labels': rng.integers(0, 80, (batch, num_boxes)).astype(np.int32),
          'valid': np.ones((batch, num_boxes), bool), 'size': np.tile(np.array([[h, w]], np.int32), (batch, 1))}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--canvas', type=int, nargs=2, default=(512, 512))
  parser.add_argument('--boxes', type=int, default=20)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--peak-tflops', type=float, default=0.0, help='device peak for MFU (H100 bf16 dense: 989)')
  parser.add_argument('--out', default='benchmarks/results/train_step.json')
  args = parser.parse_args()

  config = r50_1x.get_config()
  config.model.dtype = args.dtype
  config.train.batch_size = args.batch
  mesh = train_lib.create_mesh()
  model = fcos.build_model(config.model)
  tx = optim.make_optimizer(config)
  state, shardings = train_lib.create_state(model, tx, config, mesh)
  step = jax.jit(train_lib.make_train_step(model, config, tx), donate_argnums=0,
                 out_shardings=(shardings, NamedSharding(mesh, P())))
  batch = jax.device_put(random_batch(args.batch, tuple(args.canvas), args.boxes), NamedSharding(mesh, P('data')))

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0
  memory = compiled.memory_analysis()
  peak_bytes = None
  if memory is not None:
    peak_bytes = sum(getattr(memory, f, 0) or 0 for f in ('temp_size_in_bytes', 'argument_size_in_bytes',
                                                         'output_size_in_bytes'))
  state, metrics = compiled(state, batch)  # Warm-up.
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  result = {'device': jax.devices()[0].device_kind, 'devices': jax.device_count(), 'batch': args.batch,
            'canvas': list(args.canvas), 'dtype': args.dtype, 'compile_s': compile_s, 'ms_median': median * 1e3,
            'ms_min': min(times) * 1e3, 'ms_max': max(times) * 1e3, 'images_per_s': args.batch / median,
            'gflops_per_image': flops / args.batch / 1e9, 'peak_memory_gib': peak_bytes / 2**30 if peak_bytes else None}
  if args.peak_tflops:
    result['mfu'] = flops / median / (args.peak_tflops * 1e12 * jax.device_count())
  for key, value in result.items():
    print(f'{key:18s} {value:.3f}' if isinstance(value, float) else f'{key:18s} {value}')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
