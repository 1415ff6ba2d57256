"""R50 FCOS training step (normalise, forward, target assignment, loss, backward, SGD update): fcos_jax vs torchvision.

  python -m benchmarks.train_step                                    # CPU-sized: batch 1 at 512x512
  python -m benchmarks.train_step --batch 16 --canvas 896 1408 --dtype bfloat16 --peak-tflops 989 \\
      --repeats 20 --peer-args="--bf16 --channels-last"              # one H100
  python -m benchmarks.train_step --batch 4 --grad-accum 1 2 4 --no-peer  # the same global batch in k micro-batches
  python -m benchmarks.train_step --batch 16 --canvas 896 1408 --grad-accum 8 --compile-only --no-peer  # memory only
  python -m benchmarks.train_step --recipe r50_dcn_1x --no-peer      # another recipe of fcos_jax/recipes

Reports, for each k of --grad-accum (train.grad_accum_steps: k micro-batches of batch/k images in one step),
compile time, ms/step (median, p90, min-max), images/s, XLA's FLOPs per image and the MFU they give for
`--peak-tflops` per device, XLA's buffer sizes (temporaries: the activations of one micro-batch), and the device's
(GPU) or process's (CPU) peak memory, which only grows within a process: the k run largest first, so each row's
peak is its own as long as fewer micro-batches need more. When .venv-torch exists (and without --no-peer),
torchvision's `fcos_resnet50_fpn` (frozen BN, stem and layer1 frozen, SGD momentum 0.9 and weight decay 1e-4) runs
first on the same batch, canvas, boxes and thread count; x_torchvision is the time ratio.
"""

import argparse
import importlib
import math
import os
import time

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import inputs, timing, torchvision_fcos
from fcos_jax import config as config_lib
from fcos_jax import optim, runtime, train_lib
from fcos_jax.model import fcos


def device_peak_gib():
  stats = jax.devices()[0].memory_stats() or {}
  return stats['peak_bytes_in_use'] / 2**30 if 'peak_bytes_in_use' in stats else None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--canvas', type=int, nargs=2, default=(512, 512))
  parser.add_argument('--boxes', type=int, default=20)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--recipe', default='r50_1x', help='a module of fcos_jax/recipes')
  parser.add_argument('--peak-tflops', type=float, default=0.0, help='device peak for MFU (H200 bf16 dense: 990)')
  parser.add_argument('--peer-args', default='', help='extra flags for the torchvision run, e.g. "--bf16"')
  parser.add_argument('--grad-accum', type=int, nargs='+', default=[1], help='micro-batches per step (k), each a row')
  parser.add_argument('--no-peer', action='store_true', help='skip the torchvision run')
  parser.add_argument('--compile-only', action='store_true', help="XLA's memory and FLOPs only, no steps timed")
  args = parser.parse_args(argv)
  canvas = tuple(args.canvas)
  peer = None if args.no_peer else torchvision_fcos.run('train', args.batch, canvas, args.repeats,
                                                        extra=['--boxes', str(args.boxes), *args.peer_args.split()])
  if peer:
    timing.progress(f'torchvision: {peer["ms_median"]:,.1f} ms/step')
  rows = []
  if peer:
    rows.append({'impl': 'torchvision', 'recipe': 'fcos_resnet50_fpn', 'batch': peer['batch'],
                 'dtype': 'bf16 autocast' if peer['bf16'] else 'float32',
                 **{k: peer[k] for k in ('ms_median', 'ms_p90', 'ms_min', 'ms_max', 'images_per_s')},
                 'peak_memory_gib': peer.get('peak_gpu_gib', peer['peak_rss_gib'])})
  ks = sorted(args.grad_accum, reverse=True)
  for k in ks:
    rows.append(measure_step(args, canvas, k))
    if peer and 'ms_median' in rows[-1]:
      rows[-1]['x_torchvision'] = rows[-1]['ms_median'] / peer['ms_median']
    timing.progress(f'{args.recipe} {args.dtype} k={k}: compiled in {rows[-1]["compile_s"]:.1f} s, '
                    f'{rows[-1].get("ms_median", float("nan")):,.1f} ms/step')
    note = (f'{jax.devices()[0].device_kind} x{jax.device_count()}, canvas {canvas}, {args.boxes} boxes per image, '
            f'median of {args.repeats} steps after one warm-up; peak memory: GPU peak in use, or process RSS on CPU '
            f'(cumulative over the rows, largest k first); load average {os.getloadavg()[0]:.1f} at the end')
    timing.report('train_step', rows, ['impl', 'recipe', 'batch', 'k', 'micro_batch', 'dtype', 'compile_s',
                                       'ms_median', 'ms_p90', 'ms_min', 'ms_max', 'images_per_s', 'gflops_per_image',
                                       'mfu', 'xla_temp_gib', 'xla_memory_gib', 'peak_memory_gib', 'x_torchvision'],
                  note, echo=k == ks[-1])


def measure_step(args, canvas, k):
  """One row: the R50 train step at global batch args.batch in k micro-batches."""
  config = importlib.import_module(f'fcos_jax.recipes.{args.recipe}').get_config()
  config.model.dtype = args.dtype
  config.train.batch_size = args.batch
  config.train.grad_accum_steps = k
  if args.batch % config.data.pad_group:  # An odd batch (the CPU default, 1): each image its own group.
    config.data.pad_group = 1
  config.data.resize_on = 'host'  # The batch holds canvases; the device-side resize is timed by input_pipeline.py.
  config.data.pad_group = math.gcd(config.data.pad_group, args.batch)  # Batch 1 (CPU): each image its own group.
  config_lib.validate(config)
  mesh = runtime.create_mesh()
  model = fcos.build_model(config.model)
  tx = optim.make_optimizer(config)
  state, shardings = train_lib.create_state(model, tx, config, mesh)
  step = jax.jit(train_lib.make_train_step(model, config, tx), donate_argnums=0,
                 out_shardings=(shardings, NamedSharding(mesh, P())))
  batch = jax.device_put(inputs.random_batch(args.batch, canvas, args.boxes), NamedSharding(mesh, P('data')))
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0
  memory = compiled.memory_analysis()
  holder = [state]

  def run_step():
    holder[0], metrics = compiled(holder[0], batch)
    jax.block_until_ready(metrics)

  row = {'impl': 'fcos_jax', 'recipe': args.recipe, 'batch': args.batch, 'k': k, 'micro_batch': args.batch // k,
         'dtype': args.dtype, 'compile_s': compile_s}
  if k == 1:  # XLA's cost analysis counts a loop body once, whatever its trip count: no FLOPs for k > 1.
    row['gflops_per_image'] = flops / args.batch / 1e9
  if not args.compile_only:
    row.update(timing.measure(run_step, args.repeats))
    row['images_per_s'] = args.batch / row['ms_median'] * 1e3
  if args.peak_tflops and k == 1 and not args.compile_only:
    row['mfu'] = flops / (row['ms_median'] / 1e3) / (args.peak_tflops * 1e12 * jax.device_count())
  if memory is not None:
    row['xla_temp_gib'] = memory.temp_size_in_bytes / 2**30
    row['xla_memory_gib'] = (memory.temp_size_in_bytes + memory.argument_size_in_bytes +
                             memory.output_size_in_bytes) / 2**30
  row['peak_memory_gib'] = device_peak_gib() or timing.peak_rss_gib()
  del holder[:]
  return row


if __name__ == '__main__':
  main()
