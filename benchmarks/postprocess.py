"""Post-processing (decode + candidates + NMS) time per image, 'fast' vs 'paddle', jitted, on the default backend.

  python -m benchmarks.postprocess [--batches 1 8] [--canvas 896 1408] [--classes 80] [--repeats 5]

Random outputs: classifier logits ~ N(cls_mean, cls_std) so that a realistic few thousand (point, class) pairs per
image pass the 0.025 threshold, regression 1-8 strides (neighbouring boxes overlap, so NMS suppresses). Prints the
median milliseconds per image after compilation; torchvision's per-level top-k + batched_nms on the same data is a
third column when torch is importable.
"""

import argparse
import functools
import statistics
import time

import jax
import numpy as np

from configs.default import get_config
from fcos_jax import locations, postprocess


def median_ms(fn, *args, repeats):
  fn(*args)  # Compile and warm up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(*args)
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def random_outputs(rng, batch, num_points, num_classes, cls_mean, cls_std):
  return {'cls_logits': rng.normal(cls_mean, cls_std, (batch, num_points, num_classes)).astype(np.float32),
          'reg': rng.uniform(1, 8, (batch, num_points, 4)).astype(np.float32),
          'ctr_logits': rng.normal(0, 1, (batch, num_points)).astype(np.float32)}


def torchvision_postprocess(outputs, points, cfg):
  """torchvision FCOS.postprocess_detections' rule (per level top-k above threshold, batched_nms, top K) in torch."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  scores = torch.sigmoid(torch.from_numpy(outputs['cls_logits'])) * torch.sigmoid(
      torch.from_numpy(outputs['ctr_logits']))[..., None]
  stride = torch.from_numpy(points.stride)[:, None]
  xy = torch.from_numpy(points.xy)
  reg = torch.from_numpy(outputs['reg']) * stride
  boxes = torch.cat([xy - reg[..., :2], xy + reg[..., 2:]], dim=-1)
  num_classes, results = scores.shape[-1], []
  for image_scores, image_boxes in zip(scores, boxes):
    cand_boxes, cand_scores, cand_classes, start = [], [], [], 0
    for h, w in points.shapes:
      flat = image_scores[start:start + h * w].flatten()
      top, index = flat.topk(min(cfg.pre_nms_top_k, flat.numel()))
      keep = top > cfg.score_threshold
      top, index = top[keep], index[keep]
      cand_boxes.append(image_boxes[start + index // num_classes])
      cand_scores.append(top)
      cand_classes.append(index % num_classes)
      start += h * w
    cand_boxes, cand_scores, cand_classes = (torch.cat(v) for v in (cand_boxes, cand_scores, cand_classes))
    keep = torchvision.ops.batched_nms(cand_boxes, cand_scores, cand_classes, cfg.nms_iou)[:cfg.max_detections]
    results.append((cand_boxes[keep], cand_scores[keep], cand_classes[keep]))
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batches', type=int, nargs='+', default=(1, 8))
  parser.add_argument('--canvas', type=int, nargs=2, default=(896, 1408))
  parser.add_argument('--classes', type=int, default=80)
  parser.add_argument('--cls-mean', type=float, default=-7.5)
  parser.add_argument('--cls-std', type=float, default=1.5)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  config = get_config()
  points = locations.points_from_config(tuple(args.canvas), config)
  num_points = len(points.xy)
  try:
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    has_torch = True
  except ImportError:
    has_torch = False
    print('torch/torchvision not importable: no torchvision column')
  rng = np.random.default_rng(0)
  rows = []
  for batch in args.batches:
    outputs = random_outputs(rng, batch, num_points, args.classes, args.cls_mean, args.cls_std)
    device_outputs = jax.device_put(outputs)
    scores = np.asarray(postprocess.point_scores(device_outputs['cls_logits'], device_outputs['ctr_logits']))
    candidates = (scores > config.postprocess.score_threshold).sum() / batch
    row = [batch, candidates]
    for method in ('fast', 'paddle'):
      cfg = config.postprocess.copy_and_resolve_references()
      cfg.method = method
      detect = jax.jit(functools.partial(postprocess.detect, points=points, cfg=cfg))
      run = lambda o, detect=detect: jax.block_until_ready(detect(o))
      row.append(median_ms(run, device_outputs, repeats=args.repeats) / batch)
    if has_torch:
      run = functools.partial(torchvision_postprocess, points=points, cfg=config.postprocess)
      row.append(median_ms(run, outputs, repeats=args.repeats) / batch)
    rows.append(row)
  print(f'device: {jax.devices()[0].device_kind}, canvas {tuple(args.canvas)}, {num_points} points, '
        f'{args.classes} classes, K={config.postprocess.max_detections}, median of {args.repeats} runs')
  header = f'{"batch":>5s} {"cands/img":>10s} {"fast ms/img":>12s} {"paddle ms/img":>14s}'
  print(header + (f' {"torchvision ms/img":>19s}' if has_torch else ''))
  for batch, candidates, *times in rows:
    print(f'{batch:5d} {candidates:10.0f} ' + ' '.join(f'{t:{w}.2f}' for t, w in zip(times, (12, 14, 19))))


if __name__ == '__main__':
  main()
