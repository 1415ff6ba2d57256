"""Exported runtimes vs the JAX detector (and torchvision's FCOS) on one canvas: latency at batch 1, throughput at 8.

  python -m benchmarks.export                          # CPU: 512x512, median of 3
  python -m benchmarks.export --canvas 896 1408 --repeats 10

Every runtime computes the same function (normalise + network + decode + NMS, R50-FPN, K = 100): the JAX
detect function jitted, the StableHLO artifact reloaded with jax.export.deserialize, the TF SavedModel
(tf.saved_model.load), and the ONNX model in onnxruntime (CPUExecutionProvider, default threads). With
.venv-torch, torchvision's `fcos_resnet50_fpn` runs first and every fcos_jax runtime uses its converted weights and
detection rule (as benchmarks/inference.py does); without it, fcos_jax's random init.
Prints median / p90 latency per batch and images/s; writes benchmarks/results/export.json.
"""

import argparse
import os
import tempfile
import time

import jax
import numpy as np
import onnxruntime

from benchmarks import inputs, timing, torchvision_fcos
from fcos_jax import export, inference
from fcos_jax.convert import torchvision as tv_convert
from fcos_jax.model import fcos
from fcos_jax.recipes import r50_1x


def runtimes(config, variables, canvas, workdir):
  """{name: (images, sizes) -> outputs with 'valid'} for every runtime, each loaded as its users load it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  detect = jax.jit(inference.make_detect_fn(fcos.build_model(config.model), config))
  on_device = jax.device_put(variables, jax.devices()[0])
  found = {'jax': lambda images, sizes: jax.block_until_ready(detect(on_device, images, sizes))}
  start = time.perf_counter()
  path = export.export(config, variables, 'stablehlo', os.path.join(workdir, 'stablehlo'), canvas)
  print(f'stablehlo export {time.perf_counter() - start:.1f} s', flush=True)
  exported = jax.export.deserialize(open(path, 'rb').read())
  found['stablehlo'] = lambda images, sizes: jax.block_until_ready(exported.call(images, sizes))
  start = time.perf_counter()
  path = export.export(config, variables, 'savedmodel', os.path.join(workdir, 'savedmodel'), canvas)
  print(f'savedmodel export {time.perf_counter() - start:.1f} s', flush=True)
  saved = tf.saved_model.load(path)
  found['savedmodel'] = lambda images, sizes: {k: v.numpy() for k, v in saved.serve(images, sizes).items()}
  start = time.perf_counter()
  path = export.export(config, variables, 'onnx', os.path.join(workdir, 'onnx'), canvas)
  print(f'onnx export {time.perf_counter() - start:.1f} s', flush=True)
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  names = [o.name for o in session.get_outputs()]
  found['onnxruntime'] = lambda images, sizes: dict(zip(names, session.run(None, {'images': images, 'sizes': sizes})))
  return found


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batches', type=int, nargs='+', default=(1, 8))
  parser.add_argument('--canvas', type=int, nargs=2, default=(512, 512))
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  canvas = tuple(args.canvas)
  workdir = tempfile.mkdtemp()
  weights = os.path.join(workdir, 'torchvision_fcos.pth')
  peers = {batch: torchvision_fcos.run('inference', batch, canvas, args.repeats, extra=['--save-weights', weights])
           for batch in args.batches}
  config = r50_1x.get_config()
  config.data.canvases = (canvas,)
  if os.path.exists(weights):
    config = tv_convert.torchvision_fcos_config(config)
    variables = tv_convert.convert_state(tv_convert.load_state_dict(weights), 'fcos_r50')
  else:
    variables = fcos.init_variables(fcos.build_model(config.model), 0)
  variables = jax.tree_util.tree_map(np.asarray, variables)
  rows = []
  for name, run in runtimes(config, variables, canvas, workdir).items():
    for batch in args.batches:
      data = inputs.random_batch(batch, canvas, 1)
      out = {}
      start = time.perf_counter()
      out.update(run(data['image'], data['size']))  # The first call compiles (JAX) or loads the kernels (TF).
      row = {'impl': name, 'batch': batch, 'first_call_s': time.perf_counter() - start,
             **timing.measure(lambda: run(data['image'], data['size']), args.repeats, warmup=0)}
      row['images_per_s'] = batch / row['ms_median'] * 1e3
      row['detections_per_image'] = float(np.asarray(out['valid']).sum()) / batch
      rows.append(row)
      print(f'{name} batch {batch}: {row["ms_median"]:.0f} ms', flush=True)
  for batch, peer in peers.items():
    if peer:
      rows.append({'impl': 'torchvision', 'batch': batch, 'images_per_s': peer['images_per_s'],
                   **{k: peer[k] for k in ('ms_median', 'ms_p90', 'ms_min', 'ms_max', 'repeats',
                                           'detections_per_image')}})
  base = {r['batch']: r['ms_median'] for r in rows if r['impl'] == 'jax'}
  tv = {r['batch']: r['ms_median'] for r in rows if r['impl'] == 'torchvision'}
  for row in rows:
    row['x_jax'] = row['ms_median'] / base[row['batch']]
    if row['batch'] in tv:
      row['x_torchvision'] = row['ms_median'] / tv[row['batch']]
  note = (f'{jax.devices()[0].device_kind}, {os.cpu_count()} cores, canvas {canvas}, median of {args.repeats}; '
          'x_jax / x_torchvision = time / that runtime\'s time at the same batch')
  timing.report('export', rows, ['impl', 'batch', 'ms_median', 'ms_p90', 'images_per_s', 'detections_per_image',
                                 'first_call_s', 'x_jax', 'x_torchvision'], note)


if __name__ == '__main__':
  main()
