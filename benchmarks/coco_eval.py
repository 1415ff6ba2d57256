"""COCO box evaluation time of the two backends (eval.backend): `eval_lib.evaluate_boxes` (result dicts -> the 12
numbers, the per-class table and the PR curves) with faster-coco-eval and with pycocotools, on the same generated
ground truth and detections.

The generated split is COCO-like: image and category ids with gaps, about 7 boxes an image over the three size
ranges, crowd boxes, images without any box, a category with detections but no ground truth; each image has
--detections results (jittered copies of its boxes, some of another class, and false positives, scores with ties).
Both backends run --repeats times after one untimed run; the table gives the median and the figures' largest
difference from pycocotools'.

    python -m benchmarks.coco_eval [--images 5000] [--detections 100] [--repeats 3]
"""

import argparse
import contextlib
import io
import os
import statistics
import time

import numpy as np

from benchmarks import timing
from fcos_jax import eval_lib
from fcos_jax.data import annotations

# (id, name): ids with gaps, as COCO's; the last has detections but no ground truth.
CATEGORIES = ((1, 'person'), (3, 'car'), (17, 'cat'), (44, 'bottle'), (62, 'chair'), (90, 'toothbrush'))


def ground_truth(num_images: int, seed: int = 0) -> dict:
  """A COCO ground truth dict of `num_images` generated images (see the module docstring). Deterministic."""
  rng = np.random.default_rng(seed)
  gt_categories = np.array([c for c, _ in CATEGORIES[:-1]])
  images, boxes = [], []
  for i in range(num_images):
    image_id, width, height = 7 * i + 5, int(rng.integers(240, 1025)), int(rng.integers(240, 1025))
    images.append({'id': image_id, 'width': width, 'height': height, 'file_name': f'{image_id:012d}.jpg'})
    n = 0 if rng.random() < 0.1 else int(rng.poisson(7))
    wh = np.minimum(np.exp(rng.uniform(np.log(4), np.log(600), (n, 2))), [width - 1, height - 1])
    xywh = np.concatenate([rng.uniform(0, 1, (n, 2)) * ([width, height] - wh), wh], axis=1).round(2)
    first = len(boxes) + 1
    boxes.extend({'id': first + k, 'image_id': image_id, 'category_id': int(c), 'bbox': b.tolist(),
                  'area': float(b[2] * b[3]), 'iscrowd': int(crowd)}
                 for k, (b, c, crowd) in enumerate(zip(xywh, rng.choice(gt_categories, n), rng.random(n) < 0.03)))
  return {'images': images, 'annotations': boxes, 'categories': [{'id': c, 'name': name} for c, name in CATEGORIES]}


def detections(gt: dict, per_image: int = 100, seed: int = 0) -> list[dict]:
  """`per_image` COCO result dicts for each image of the ground truth dict `gt`: up to 3 jittered copies of each of
  its boxes (a tenth of them of another category of `gt`), the rest false positives; scores rounded to 3 decimals
  (ties), the copies' higher. Deterministic."""
  rng = np.random.default_rng(seed)
  categories = np.array([c['id'] for c in gt['categories']])
  by_image = {image['id']: [] for image in gt['images']}
  for box in gt['annotations']:
    by_image[box['image_id']].append((box['bbox'], box['category_id']))
  results = []
  for image in gt['images']:
    boxes = by_image[image['id']]
    xywh = np.array([b for b, _ in boxes], np.float64).reshape(-1, 4)
    cats = np.array([c for _, c in boxes], np.int64)
    source = np.repeat(np.arange(len(boxes)), rng.integers(1, 4, len(boxes)))[:per_image]
    found = xywh[source] + rng.normal(0, 0.1, (len(source), 4)) * np.tile(xywh[source, 2:], 2)
    found[:, 2:] = np.maximum(found[:, 2:], 1)
    found_cats = np.where(rng.random(len(source)) < 0.1, rng.choice(categories, len(source)), cats[source])
    m = per_image - len(source)
    wrong = np.concatenate([rng.uniform(0, 1, (m, 2)) * [image['width'], image['height']],
                            np.exp(rng.uniform(np.log(4), np.log(400), (m, 2)))], axis=1)
    scores = np.concatenate([rng.beta(4, 2, len(source)), rng.beta(1, 6, m)]).round(3)
    results.extend({'image_id': image['id'], 'category_id': int(c), 'bbox': b, 'score': float(s)}
                   for c, b, s in zip(np.concatenate([found_cats, rng.choice(categories, m)]),
                                      np.concatenate([found, wrong]).round(2).tolist(), scores))
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=5000)
  parser.add_argument('--detections', type=int, default=100, help='results per image')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  gt = ground_truth(args.images)
  results = detections(gt, args.detections)
  timing.progress(f'{args.images} images, {len(gt["annotations"])} boxes, {len(results)} detections')
  times, evaluations = {}, {}
  for backend in ('pycocotools', 'faster'):
    times[backend] = []
    for _ in range(args.repeats + 1):
      coco_gt = annotations.quiet_coco(gt)  # A fresh index each time, as each evaluation of a run gets.
      start = time.perf_counter()
      with contextlib.redirect_stdout(io.StringIO()):
        evaluations[backend] = eval_lib.evaluate_boxes(coco_gt, results, backend=backend)
      times[backend].append(time.perf_counter() - start)
      timing.progress(f'{backend}: {times[backend][-1]:.2f} s')
  reference = evaluations['pycocotools']
  rows = []
  for backend, seconds in times.items():
    e = evaluations[backend]
    table_difference = max(abs(v - reference.per_class[name][k]) for name, row in e.per_class.items()
                           for k, v in row.items() if v is not None)
    rows.append({'backend': backend, 'images': args.images, 'detections': len(results),
                 's (median)': statistics.median(seconds[1:]), 's (min)': min(seconds[1:]),
                 'speed-up': statistics.median(times['pycocotools'][1:]) / statistics.median(seconds[1:]),
                 'AP': e.metrics['AP'],
                 'max |diff| 12 numbers': f'{max(abs(v - reference.metrics[k]) for k, v in e.metrics.items()):.1e}',
                 'max |diff| per class': f'{table_difference:.1e}'})
  timing.report('coco_eval', rows, list(rows[0]),
                note=f'evaluate_boxes from result dicts (COCOeval, summary, per-class table, PR curves), '
                     f'{args.repeats} timed runs after an untimed one; load average {os.getloadavg()[0]:.1f} '
                     f'({timing.cpu_name()}).')


if __name__ == '__main__':
  main()
