"""Post-processing (decode + candidates + NMS) time per image, 'fast' vs 'paddle', jitted, on the default backend.

  python -m benchmarks.postprocess [--batches 1 8] [--canvas 896 1408] [--classes 80] [--repeats 5]

Random outputs: classifier logits ~ N(cls_mean, cls_std) so that a realistic few thousand (point, class) pairs per
image pass the 0.025 threshold, regression 1-8 strides (neighbouring boxes overlap, so NMS suppresses). Prints the
median milliseconds per image after compilation; torchvision's rule (per-level top-k + batched_nms) on the same data
is a third column when .venv-torch exists (see torchvision_fcos.py).
"""

import argparse
import functools
import os
import tempfile

import jax
import numpy as np

from benchmarks import timing, torchvision_fcos
from fcos_jax.config import get_config
from fcos_jax import locations, postprocess


def median_ms(fn, *args, repeats):
  return timing.measure(lambda: fn(*args), repeats)['ms_median']


def random_outputs(rng, batch, num_points, num_classes, cls_mean, cls_std):
  return {'cls_logits': rng.normal(cls_mean, cls_std, (batch, num_points, num_classes)).astype(np.float32),
          'reg': rng.uniform(1, 8, (batch, num_points, 4)).astype(np.float32),
          'ctr_logits': rng.normal(0, 1, (batch, num_points)).astype(np.float32)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batches', type=int, nargs='+', default=(1, 8))
  parser.add_argument('--canvas', type=int, nargs=2, default=(896, 1408))
  parser.add_argument('--classes', type=int, default=80)
  parser.add_argument('--cls-mean', type=float, default=-7.5)
  parser.add_argument('--cls-std', type=float, default=1.5)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  config = get_config()
  points = locations.points_from_config(tuple(args.canvas), config)
  num_points = len(points.xy)
  rng = np.random.default_rng(0)
  rows = []
  for batch in args.batches:
    outputs = random_outputs(rng, batch, num_points, args.classes, args.cls_mean, args.cls_std)
    device_outputs = jax.device_put(outputs)
    scores = np.asarray(postprocess.point_scores(device_outputs['cls_logits'], device_outputs['ctr_logits']))
    row = {'batch': batch, 'candidates_per_image': float((scores > config.postprocess.score_threshold).sum() / batch)}
    for method in ('fast', 'paddle'):
      cfg = config.postprocess.copy_and_resolve_references()
      cfg.method = method
      detect = jax.jit(functools.partial(postprocess.detect, points=points, cfg=cfg))
      run = lambda o, detect=detect: jax.block_until_ready(detect(o))
      row[f'{method}_ms_per_image'] = median_ms(run, device_outputs, repeats=args.repeats) / batch
    path = os.path.join(tempfile.mkdtemp(), 'outputs.npz')
    p = config.postprocess
    np.savez(path, **outputs, xy=points.xy, stride=points.stride, shapes=np.asarray(points.shapes),
             score_threshold=p.score_threshold, pre_nms_top_k=p.pre_nms_top_k, nms_iou=p.nms_iou,
             max_detections=p.max_detections)
    peer = torchvision_fcos.run('postprocess', batch, tuple(args.canvas), args.repeats, extra=['--outputs', path])
    if peer:
      row['torchvision_ms_per_image'] = peer['ms_median'] / batch
      row['fast_x_torchvision'] = row['fast_ms_per_image'] / row['torchvision_ms_per_image']
    rows.append(row)
  timing.report('postprocess', rows, ['batch', 'candidates_per_image', 'fast_ms_per_image', 'paddle_ms_per_image',
                                      'torchvision_ms_per_image', 'fast_x_torchvision'],
                f'{jax.devices()[0].device_kind}, canvas {tuple(args.canvas)}, {num_points} points, {args.classes} '
                f'classes, K={config.postprocess.max_detections}, median of {args.repeats} runs')


if __name__ == '__main__':
  main()
