"""Inference latency (normalise + forward + decode + NMS) at batch 1 and 8: fcos_jax vs torchvision, same network.

  python -m benchmarks.inference                                              # CPU: 512x512
  python -m benchmarks.inference --canvas 896 1408 --dtype bfloat16 --repeats 50 --peer-args=--bf16   # GPU
  python -m benchmarks.inference --batches 1 8 32 --methods fast paddle      # both post-processing rules

With .venv-torch, torchvision's `fcos_resnet50_fpn` (random weights, head perturbed so that ~100 boxes per image
survive) is timed first; its state dict is converted and fcos_jax runs the same network with torchvision's
semantics (`torchvision_fcos_config`: sqrt score, threshold 0.2, per-level top 1000, class-aware NMS 0.6, top 100),
so both do the same work and report the same number of detections. Without it, fcos_jax runs its own random init.
Each of `--methods` (postprocess.method) is a row per batch: 'fast' is torchvision's rule, 'paddle' the per-class
one (same network, other candidates). Prints median / p90 latency per batch and images/s; writes
benchmarks/results/inference.json.
"""

import argparse
import os
import tempfile
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import inputs, timing, torchvision_fcos
from fcos_jax.recipes import r50_1x
from fcos_jax import inference
from fcos_jax.convert import torchvision as tv_convert
from fcos_jax.model import fcos


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batches', type=int, nargs='+', default=(1, 8))
  parser.add_argument('--canvas', type=int, nargs=2, default=(512, 512))
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--methods', nargs='+', default=['fast'], choices=('fast', 'paddle'), help='postprocess.method')
  parser.add_argument('--peer-args', default='', help='extra flags for the torchvision run, e.g. "--bf16"')
  args = parser.parse_args(argv)
  canvas = tuple(args.canvas)

  weights = os.path.join(tempfile.mkdtemp(), 'torchvision_fcos.pth')
  peers = {}
  for batch in args.batches:  # Before JAX initialises a GPU (it reserves most of its memory).
    peers[batch] = torchvision_fcos.run('inference', batch, canvas, args.repeats,
                                        extra=['--save-weights', weights, *args.peer_args.split()])
    if peers[batch]:
      timing.progress(f'torchvision batch {batch}: {peers[batch]["ms_median"]:,.2f} ms')

  shared = os.path.exists(weights)  # torchvision ran and left its weights: run the same network.
  config = r50_1x.get_config()
  if shared:
    config = tv_convert.torchvision_fcos_config(config)
  config.model.dtype = args.dtype
  model = fcos.build_model(config.model)
  if shared:
    variables = tv_convert.convert_state(tv_convert.load_state_dict(weights), 'fcos_r50')
  else:
    variables = fcos.init_variables(model, 0)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('data',))
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  rows = []
  for batch in args.batches:
    peer = peers[batch]
    if peer:
      rows.append({'impl': 'torchvision', **{k: peer[k] for k in ('batch', 'ms_median', 'ms_p90', 'ms_min', 'ms_max',
                                                                   'repeats', 'detections_per_image',
                                                                   'images_per_s')}})
    data = inputs.random_batch(batch, canvas, 1)
    data = jax.device_put((data['image'], data['size']), NamedSharding(mesh, P('data')))
    for method in args.methods:
      rows.append(measure_detect(model, config, method, variables, data, args.repeats))
      if peer:
        rows[-1]['x_torchvision'] = rows[-1]['ms_median'] / peer['ms_median']
      timing.progress(f'{method} batch {batch}: compiled in {rows[-1]["compile_s"]:.1f} s, '
                      f'{rows[-1]["ms_median"]:,.2f} ms')
      note = (f'{jax.devices()[0].device_kind}, canvas {canvas}, {args.dtype}, median of {args.repeats}; '
              f'x_torchvision = fcos_jax time / torchvision time')
      timing.report('inference', rows, ['impl', 'method', 'batch', 'ms_median', 'ms_p90', 'images_per_s',
                                        'detections_per_image', 'compile_s', 'x_torchvision'], note,
                    echo=(batch, method) == (args.batches[-1], args.methods[-1]))


def measure_detect(model, config, method, variables, data, repeats):
  """One row: the jitted detect function with postprocess.method `method` on `data` (images, sizes on device)."""
  config = config.copy_and_resolve_references()
  config.postprocess.method = method
  step = jax.jit(inference.make_detect_fn(model, config))
  start = time.perf_counter()
  compiled = step.lower(variables, *data).compile()
  compile_s = time.perf_counter() - start
  out = {}

  def infer():
    out.update(jax.block_until_ready(compiled(variables, *data)))

  batch = data[0].shape[0]
  row = {'impl': 'fcos_jax', 'method': method, 'batch': batch, **timing.measure(infer, repeats),
         'compile_s': compile_s}
  row['detections_per_image'] = float(np.asarray(out['valid']).sum()) / batch
  row['images_per_s'] = batch / row['ms_median'] * 1e3
  return row


if __name__ == '__main__':
  main()
