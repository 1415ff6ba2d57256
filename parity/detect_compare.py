"""`fcos-predict` on image files against PaddleDetection end to end (`paddle_detect.py`) on the same files.

    python parity/detect_compare.py WORK

Runs the installed `fcos-predict` (beside this Python) as a user would: from a directory outside the repository,
without PYTHONPATH, on WORK/reader/val's files (`reader_compare.py make`: JPEG baseline, progressive, 4:4:4,
grayscale, PNG; sizes that round differently) with the converted checkpoint WORK/ckpt_paddle_fcos_r50, once with
one image per batch and once with two (images of different sizes share a batch and its canvas). Each of
PaddleDetection's detections (WORK/detect_paddle.npz) must have a partner of ours: the same class, score within
SCORE_TOL, box IoU above MIN_IOU or, for boxes a pixel or so thin (where results.json's rounding to 0.01 alone
moves the IoU by a percent), every coordinate within ROUNDING; and ours none left over. A detection whose score is within SCORE_TOL of the score
threshold, or of the lowest score kept when MAX_DETECTIONS are kept, may be on one side only: a rounding-level
difference moves it across the cut. Prints a table; exits 1 on a failure.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from fcos_jax.data.categories import COCO_CATEGORY_IDS

SCORE_TOL = 1e-4
MIN_IOU = 0.99
ROUNDING = 0.011  # results.json rounds x, y, w, h to 0.01: x2 = x + w within 0.01 (plus float error).
SCORE_THRESHOLD = 0.025  # MultiClassNMS(score_threshold=0.025, keep_top_k=100) in fcos_r50_fpn_1x_coco.yml.
MAX_DETECTIONS = 100


def iou(box, boxes):
  """IoU of one xyxy box with each of `boxes` [n, 4]."""
  lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
  area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)  # A zero-area pair overlaps by 0.


def predict(work, batch_size):
  """fcos-predict's detections per file name: [n, 6] rows (class index, score, x1, y1, x2, y2)."""
  command = os.path.join(os.path.dirname(sys.executable), 'fcos-predict')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  with tempfile.TemporaryDirectory() as cwd:
    subprocess.run([command, '--checkpoint', os.path.abspath(os.path.join(work, 'ckpt_paddle_fcos_r50')),
                    '--out', 'out', '--batch-size', str(batch_size),
                    os.path.abspath(os.path.join(work, 'reader', 'val'))], cwd=cwd, env=env, check=True)
    with open(os.path.join(cwd, 'out', 'results.json')) as f:
      results = json.load(f)
    with open(os.path.join(cwd, 'out', 'images.json')) as f:
      files = {image['id']: os.path.basename(image['file_name']) for image in json.load(f)}
  rows = {name: [] for name in files.values()}
  for r in results:
    x, y, w, h = r['bbox']
    rows[files[r['image_id']]].append([COCO_CATEGORY_IDS.index(r['category_id']), r['score'], x, y, x + w, y + h])
  return {name: np.array(r, np.float64).reshape(-1, 6) for name, r in rows.items()}


def match(ours, ref):
  """(pairs, worst score difference, lowest IoU, unpaired rows that are not at a cut, at-the-cut count)."""
  used = np.zeros(len(ours), bool)
  worst_score, lowest_iou, pairs, left = 0.0, 1.0, 0, []
  for row in ref[np.argsort(-ref[:, 1], kind='stable')]:
    candidates = np.flatnonzero((ours[:, 0] == row[0]) & ~used & (np.abs(ours[:, 1] - row[1]) <= SCORE_TOL))
    overlaps = iou(row[2:], ours[candidates, 2:]) if len(candidates) else np.zeros(0)
    same = (overlaps > MIN_IOU) | (np.abs(ours[candidates, 2:] - row[2:]).max(axis=1) <= ROUNDING)
    if not same.any():
      left.append(('paddle', row))
      continue
    best = candidates[same][np.argmax(overlaps[same])]
    used[best] = True
    pairs += 1
    worst_score, lowest_iou = max(worst_score, abs(ours[best, 1] - row[1])), min(lowest_iou, overlaps[same].max())
  left += [('fcos_jax', row) for row in ours[~used]]
  cuts = [SCORE_THRESHOLD] + [side[:, 1].min() for side in (ours, ref) if len(side) == MAX_DETECTIONS]
  at_cut = [(side, row) for side, row in left if min(abs(row[1] - c) for c in cuts) <= SCORE_TOL]
  failures = [(side, row) for side, row in left if not any(row is r for _, r in at_cut)]
  return pairs, worst_score, lowest_iou, failures, len(at_cut)


def main(work):
  ref = dict(np.load(os.path.join(work, 'detect_paddle.npz')))
  table, failed = [], []
  for batch_size in (1, 2):
    ours = predict(work, batch_size)
    for name, want in ref.items():
      pairs, worst, lowest, failures, at_cut = match(ours[name], want)
      table.append((name, batch_size, len(want), len(ours[name]), pairs, f'{worst:.1e}', f'{lowest:.5f}', at_cut,
                    len(failures)))
      for side, row in failures:
        failed.append(f'{name} (batch {batch_size}): {side} only: class {int(row[0])} score {row[1]:.6f} '
                      f'box {np.round(row[2:], 2).tolist()}')
  head = ('file', 'batch', 'paddle', 'fcos_jax', 'paired', 'max |score diff|', 'min IoU', 'at a cut', 'unpaired')
  widths = [max(len(str(r[i])) for r in table + [head]) for i in range(len(head))]
  for row in [head] + table:
    print('  '.join(str(c).ljust(wd) for c, wd in zip(row, widths)).rstrip())
  print('\n'.join(failed))
  print(f'{sum(r[2] for r in table)} PaddleDetection detections over {len(table)} runs; ' +
        (f'FAILED: {len(failed)} unpaired' if failed else
         f'all paired: same class, score within {SCORE_TOL:g}, IoU > {MIN_IOU} or coordinates within '
         f'{ROUNDING:g}'))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1]))
