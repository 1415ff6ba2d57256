"""PaddleDetection's VOC mAP (fcos_jax.voc_map): hand-computed cases, a plain-Python re-derivation on generated
cases, and PaddleDetection's own DetectionMAP on the same cases when its environment (.venv-paddle, made by
parity/run.sh) exists."""

import json
import os
import subprocess

import numpy as np
import pytest

from fcos_jax import voc_map
from fcos_jax.data import annotations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PADDLE_PYTHON = os.path.join(REPO, '.venv-paddle', 'bin', 'python')


def test_hand_computed_average_precision():
  """1 class, 2 boxes; detections TP 0.9, FP 0.8 (a second box on a taken one), TP 0.7: precision 1, 1/2, 2/3 at
  recall 1/2, 1/2, 1. 11point: 1 at recall >= 0..0.5 (6 points), 2/3 at 0.6..1 (5 points); integral: 1 * 1/2 +
  2/3 * 1/2."""
  gt = [(np.array([[0, 0, 9, 9], [20, 20, 29, 29]]), [0, 0], [False, False])]
  det = [(np.array([[0, 0, 9, 9], [20, 20, 29, 29], [1, 0, 9, 9]]), [0.9, 0.7, 0.8], [0, 0, 0])]
  assert voc_map.detection_map(det, gt, 1, '11point') == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)
  assert voc_map.detection_map(det, gt, 1, 'integral') == pytest.approx(0.5 + 1 / 3, abs=1e-12)


def test_difficult_boxes_neither_count_nor_penalise():
  """A detection on a difficult box is dropped (no TP, no FP) and the box is not counted: AP 1 from the one plain
  box; with evaluate_difficult the difficult box counts and its detection is a TP."""
  gt = [(np.array([[0, 0, 9, 9], [20, 20, 29, 29]]), [0, 0], [False, True])]
  det = [(np.array([[20, 20, 29, 29], [0, 0, 9, 9]]), [0.9, 0.8], [0, 0])]
  assert voc_map.detection_map(det, gt, 1, 'integral') == 1.0
  assert voc_map.detection_map(det, gt, 1, 'integral', evaluate_difficult=True) == 1.0
  miss = [(np.array([[20, 20, 29, 29]]), [0.9], [0])]
  assert voc_map.detection_map(miss, gt, 1, 'integral') == 0.0  # Only the plain box counts, and it is missed.


def test_pixel_iou_uses_the_plus_one_convention():
  """[0, 0, 9, 9] is 10x10 pixels; [5, 0, 14, 9] overlaps it by 5x10: IoU 50 / 150; [8, 0, 20, 9] by 2x10.
  Boxes whose edges meet (x2 of one = x1 of the other) do not overlap, as in PaddleDetection."""
  iou = voc_map.pixel_iou([[0, 0, 9, 9]], [[5, 0, 14, 9], [8, 0, 20, 9], [9, 0, 20, 9], [0, 9, 9, 20]])
  np.testing.assert_allclose(iou, [[50 / 150, 20 / (100 + 130 - 20), 0.0, 0.0]], rtol=0, atol=1e-15)


def reference_map(detections, ground_truth, num_classes, map_type, evaluate_difficult=False):
  """The mAP re-derived in plain Python, detection by detection, from the rules in fcos_jax.voc_map's docstring."""
  def area(b):
    return (b[2] - b[0] + 1) * (b[3] - b[1] + 1)

  def iou(a, b):
    if a[0] >= b[2] or a[2] <= b[0] or a[1] >= b[3] or a[3] <= b[1]:
      return 0.0
    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    return inter / (area(a) + area(b) - inter)

  counts, records = [0] * num_classes, [[] for _ in range(num_classes)]
  for (boxes, scores, labels), (gt_boxes, gt_labels, difficult) in zip(detections, ground_truth):
    for label, hard in zip(gt_labels, difficult):
      counts[label] += int(evaluate_difficult or not hard)
    taken = [False] * len(gt_labels)
    for k in sorted(range(len(scores)), key=lambda k: -scores[k]):
      best, best_iou = -1, -1.0
      for j, gl in enumerate(gt_labels):
        if gl == labels[k] and iou(list(boxes[k]), list(gt_boxes[j])) > best_iou:
          best, best_iou = j, iou(list(boxes[k]), list(gt_boxes[j]))
      if best_iou > 0.5 and (evaluate_difficult or not difficult[best]):
        records[labels[k]].append((scores[k], not taken[best]))
        taken[best] = True
      elif best_iou <= 0.5:
        records[labels[k]].append((scores[k], False))
  aps = []
  for c in range(num_classes):
    if not counts[c]:
      continue
    ranked = sorted(records[c], key=lambda r: -r[0])
    tp = np.cumsum([p for _, p in ranked])
    precision, recall = tp / np.arange(1, len(tp) + 1), tp / counts[c]
    if map_type == '11point':
      aps.append(sum(max([p for p, r in zip(precision, recall) if r >= t / 10], default=0.0) for t in range(11)) / 11)
    else:
      ap, last = 0.0, 0.0
      for p, r in zip(precision, recall):
        if r - last > 1e-6:
          ap, last = ap + p * (r - last), r
      aps.append(ap)
  return float(np.mean(aps)) if aps else 0.0


def generated_cases(count=24, seed=0):
  """Cases with whole and half pixel boxes and scores in 1/64 steps (exact in float32, as PaddleDetection takes
  them; ties on purpose): detections near boxes (true positives, duplicates, near misses), random false positives,
  difficult boxes, images without boxes or without detections, classes without ground truth."""
  rng = np.random.default_rng(seed)
  cases = []
  for i in range(count):
    num_classes = int(rng.integers(1, 5))
    images = []
    for _ in range(int(rng.integers(1, 6))):
      m = int(rng.integers(0, 6))
      xy = rng.integers(0, 200, (m, 2))
      gt_boxes = np.concatenate([xy, xy + rng.integers(4, 60, (m, 2))], 1).astype(np.float64)
      gt_labels = rng.integers(0, num_classes, m)
      difficult = rng.random(m) < 0.2
      near = gt_boxes[rng.integers(0, m, int(rng.integers(0, 2 * m + 1)))] if m else np.zeros((0, 4))
      near = near + rng.integers(-8, 9, near.shape) / 2
      xy = rng.integers(0, 200, (int(rng.integers(0, 4)), 2))
      far = np.concatenate([xy, xy + rng.integers(4, 60, xy.shape)], 1)
      boxes = np.concatenate([near, far]).reshape(-1, 4)
      boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
      labels = np.concatenate([gt_labels[rng.integers(0, m, len(near))] if m else np.zeros(0, int),
                               rng.integers(0, num_classes, len(far))])
      labels = np.where(rng.random(len(labels)) < 0.1, rng.integers(0, num_classes, len(labels)), labels)
      scores = rng.integers(1, 64, len(labels)) / 64
      order = np.argsort(-scores, kind='stable')  # As PaddleDetection's NMS hands them over.
      images.append({'boxes': boxes[order].tolist(), 'scores': scores[order].tolist(),
                     'labels': labels[order].tolist(), 'gt_boxes': gt_boxes.tolist(), 'gt_labels': gt_labels.tolist(),
                     'difficult': difficult.astype(int).tolist()})
    cases.append({'num_classes': num_classes, 'map_type': voc_map.MAP_TYPES[i % 2], 'evaluate_difficult': i % 3 == 2,
                  'images': images})
  return cases


def ours(case, fn=voc_map.detection_map):
  detections = [(np.array(im['boxes']).reshape(-1, 4), im['scores'], np.array(im['labels'], int))
                for im in case['images']]
  truth = [(np.array(im['gt_boxes']).reshape(-1, 4), im['gt_labels'], np.array(im['difficult'], bool))
           for im in case['images']]
  return fn(detections, truth, case['num_classes'], case['map_type'], evaluate_difficult=case['evaluate_difficult'])


def test_matches_a_plain_python_re_derivation_on_generated_cases():
  cases = generated_cases(60, seed=1)
  got = [ours(case) for case in cases]
  assert len({round(v, 6) for v in got}) > 20  # Varied cases, not all 0 or 1.
  for case, value in zip(cases, got):
    assert value == pytest.approx(ours(case, reference_map), abs=1e-12)


@pytest.mark.skipif(not os.path.exists(os.path.join(REPO, '.venv-paddle', '.installed')),
                    reason='PaddleDetection environment .venv-paddle not built (parity/run.sh builds it)')
def test_matches_paddledetection_detection_map(tmp_path):
  cases = generated_cases(40, seed=2)
  (tmp_path / 'cases.json').write_text(json.dumps(cases))
  proc = subprocess.run([PADDLE_PYTHON, os.path.join(REPO, 'parity', 'paddle_voc_map.py'), 'cases.json', 'out.json'],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  paddle = json.loads((tmp_path / 'out.json').read_text())
  got = [ours(case) for case in cases]
  assert len({round(v, 6) for v in paddle}) > 15
  np.testing.assert_allclose(got, paddle, rtol=0, atol=1e-12)


def test_voc_metrics_read_a_coco_ground_truth_with_difficult_flags():
  """Images without ground truth are left out (PaddleDetection's reader drops them); category ids map to labels in
  sorted order; COCO [x, y, w, h] boxes become xyxy."""
  dataset = {'images': [{'id': i, 'file_name': f'{i}.jpg', 'height': 100, 'width': 100} for i in (1, 2, 3)],
             'categories': [{'id': 5, 'name': 'b'}, {'id': 2, 'name': 'a'}],
             'annotations': [{'id': 1, 'image_id': 1, 'category_id': 5, 'bbox': [10, 10, 20, 20], 'area': 400,
                              'iscrowd': 0, 'difficult': 0},
                             {'id': 2, 'image_id': 2, 'category_id': 2, 'bbox': [0, 0, 30, 30], 'area': 900,
                              'iscrowd': 0, 'difficult': 1}]}
  gt = annotations.quiet_coco(dataset)
  results = [{'image_id': 1, 'category_id': 5, 'bbox': [10, 10, 20, 20], 'score': 0.9},
             {'image_id': 1, 'category_id': 2, 'bbox': [10, 10, 20, 20], 'score': 0.8},  # Class a: no plain box.
             {'image_id': 2, 'category_id': 2, 'bbox': [0, 0, 30, 30], 'score': 0.7},  # On the difficult box.
             {'image_id': 3, 'category_id': 5, 'bbox': [0, 0, 5, 5], 'score': 0.95}]  # Image without boxes.
  assert voc_map.voc_metrics(gt, results, [1, 2, 3]) == {'voc_map_11point': 1.0, 'voc_map_integral': 1.0}
  results[0]['bbox'] = [40, 40, 20, 20]
  assert voc_map.voc_metrics(gt, results, [1, 2, 3]) == {'voc_map_11point': 0.0, 'voc_map_integral': 0.0}
