"""Inference latency (normalise + forward + decode + NMS) at batch 1 and 8: fcos_jax vs torchvision, same network.

  python -m benchmarks.inference                                              # CPU: 512x512
  python -m benchmarks.inference --canvas 896 1408 --dtype bfloat16 --repeats 50 --peer-args=--bf16   # GPU

With .venv-torch, torchvision's `fcos_resnet50_fpn` (random weights, head perturbed so that ~100 boxes per image
survive) is timed first; its state dict is converted and fcos_jax runs the same network with torchvision's
semantics (`torchvision_fcos_config`: sqrt score, threshold 0.2, per-level top 1000, class-aware NMS 0.6, top 100),
so both do the same work and report the same number of detections. Without it, fcos_jax runs its own random init.
Prints median / p90 latency per batch and images/s; writes benchmarks/results/inference.json.
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
from fcos_jax import predict
from fcos_jax.convert import torchvision as tv_convert
from fcos_jax.model import fcos


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batches', type=int, nargs='+', default=(1, 8))
  parser.add_argument('--canvas', type=int, nargs=2, default=(512, 512))
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--peer-args', default='', help='extra flags for the torchvision run, e.g. "--bf16"')
  args = parser.parse_args(argv)
  canvas = tuple(args.canvas)

  weights = os.path.join(tempfile.mkdtemp(), 'torchvision_fcos.pth')
  peers = {}
  for batch in args.batches:  # Before JAX initialises a GPU (it reserves most of its memory).
    peers[batch] = torchvision_fcos.run('inference', batch, canvas, args.repeats,
                                        extra=['--save-weights', weights, *args.peer_args.split()])

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
  step = jax.jit(predict.make_detect_fn(model, config))

  rows = []
  for batch in args.batches:
    data = inputs.random_batch(batch, canvas, 1)
    data = jax.device_put((data['image'], data['size']), NamedSharding(mesh, P('data')))
    start = time.perf_counter()
    compiled = step.lower(variables, *data).compile()
    compile_s = time.perf_counter() - start
    out = {}

    def infer(compiled=compiled, data=data, out=out):
      out.update(jax.block_until_ready(compiled(variables, *data)))

    row = {'impl': 'fcos_jax', 'batch': batch, **timing.measure(infer, args.repeats), 'compile_s': compile_s}
    row['detections_per_image'] = float(np.asarray(out['valid']).sum()) / batch
    peer = peers[batch]
    if peer:
      peer_row = {'impl': 'torchvision', **{k: peer[k] for k in ('batch', 'ms_median', 'ms_p90', 'ms_min', 'ms_max',
                                                                  'repeats', 'detections_per_image')}}
      peer_row['images_per_s'] = peer['images_per_s']
      row['x_torchvision'] = row['ms_median'] / peer['ms_median']
      rows.append(peer_row)
    row['images_per_s'] = batch / row['ms_median'] * 1e3
    rows.append(row)
  note = (f'{jax.devices()[0].device_kind}, canvas {canvas}, {args.dtype}, median of {args.repeats}; '
          f'x_torchvision = fcos_jax time / torchvision time')
  timing.report('inference', rows, ['impl', 'batch', 'ms_median', 'ms_p90', 'images_per_s', 'detections_per_image',
                                    'compile_s', 'x_torchvision'], note)


if __name__ == '__main__':
  main()
