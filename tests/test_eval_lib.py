"""COCO results and metrics: detections made from the ground truth itself score AP 1, worse ones less, none 0."""

import json

import numpy as np
import pytest

from fcos_jax import eval_lib

CATEGORIES = (1, 5, 90)  # Non-contiguous COCO ids; label = position in this sorted tuple.
# image id -> (width, height, [(category, [x, y, w, h]), ...]); sizes avoid the 32^2 and 96^2 area bounds.
IMAGES = {
    3: (640, 480, [(1, [10, 20, 20, 20]), (5, [100, 120, 50, 60]), (90, [300, 100, 150, 200])]),
    7: (500, 375, [(5, [50, 50, 200, 150]), (5, [60, 40, 190, 140]), (1, [400, 300, 25, 18])]),
    11: (300, 200, []),
    20: (800, 600, [(90, [5, 5, 60, 70]), (1, [700, 500, 80, 90])]),
}
CANVAS_LONG = 704  # Each image is resized so its long side is this.


@pytest.fixture(scope='module')
def gt_path(tmp_path_factory):
  images, annotations = [], []
  for image_id, (w, h, boxes) in IMAGES.items():
    images.append({'id': image_id, 'width': w, 'height': h, 'file_name': f'{image_id}.jpg'})
    for cat, (x, y, bw, bh) in boxes:
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': cat,
                          'bbox': [x, y, bw, bh], 'area': bw * bh, 'iscrowd': 0})
  data = {'images': images, 'annotations': annotations,
          'categories': [{'id': c, 'name': f'c{c}'} for c in CATEGORIES]}
  path = tmp_path_factory.mktemp('coco') / 'instances_val.json'
  path.write_text(json.dumps(data))
  return path


def perfect_batch(k=6):
  """Detections equal to the ground truth in canvas pixels, plus one masked-out padding image."""
  ids = list(IMAGES) + [3]
  b = len(ids)
  det = {'boxes': np.zeros((b, k, 4), np.float32), 'scores': np.zeros((b, k), np.float32),
         'classes': np.full((b, k), -1, np.int32), 'valid': np.zeros((b, k), bool)}
  scale = np.zeros((b, 2), np.float32)
  for i, image_id in enumerate(ids):
    w, h, boxes = IMAGES[image_id]
    sx = round(w * CANVAS_LONG / max(w, h)) / w
    sy = round(h * CANVAS_LONG / max(w, h)) / h
    scale[i] = sy, sx
    for j, (cat, (x, y, bw, bh)) in enumerate(boxes):
      det['boxes'][i, j] = np.array([x, y, x + bw, y + bh]) * [sx, sy, sx, sy]
      det['scores'][i, j] = 0.9 - 0.1 * j
      det['classes'][i, j] = CATEGORIES.index(cat)
      det['valid'][i, j] = True
  batch = {'image_id': np.array(ids), 'scale': scale, 'mask': np.array([True] * len(IMAGES) + [False])}
  return det, batch


def test_results_are_ground_truth_in_original_pixels():
  det, batch = perfect_batch()
  results = eval_lib.detections_to_coco(det, batch, CATEGORIES)
  expected = [(image_id, cat, box) for image_id, (_, _, boxes) in IMAGES.items() for cat, box in boxes]
  assert len(results) == len(expected)  # Invalid slots and the padding image are skipped.
  for r, (image_id, cat, box) in zip(results, expected):
    assert (r['image_id'], r['category_id']) == (image_id, cat)
    np.testing.assert_allclose(r['bbox'], box, atol=0.011)
    assert isinstance(r['image_id'], int) and isinstance(r['score'], float)
  del batch['mask']
  assert len(eval_lib.detections_to_coco(det, batch, CATEGORIES)) == len(expected) + 3


def test_perfect_detections_give_ap_one(gt_path):
  det, batch = perfect_batch()
  metrics = eval_lib.coco_evaluate(str(gt_path), eval_lib.detections_to_coco(det, batch, CATEGORIES))
  assert list(metrics) == list(eval_lib.METRIC_NAMES)
  for name in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR100', 'ARs', 'ARm', 'ARl'):
    assert metrics[name] == pytest.approx(1.0), name


def test_jittered_and_missing_detections_score_lower(gt_path):
  det, batch = perfect_batch()
  rng = np.random.default_rng(0)
  jittered = dict(det, boxes=det['boxes'] * rng.uniform(0.85, 1.15, det['boxes'].shape).astype(np.float32))
  ap_jitter = eval_lib.coco_evaluate(gt_path, eval_lib.detections_to_coco(jittered, batch, CATEGORIES))['AP']
  assert 0 < ap_jitter < 0.9
  missing = dict(det, valid=det['valid'] & (batch['image_id'] != 7)[:, None])  # Image 7: no predictions.
  results = eval_lib.detections_to_coco(missing, batch, CATEGORIES)
  metrics = eval_lib.coco_evaluate(gt_path, results)
  assert 0 < metrics['AP'] < 1 and metrics['AR100'] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)  # Per category.
  assert eval_lib.coco_evaluate(gt_path, results, image_ids=[3, 11, 20])['AP'] == pytest.approx(1.0)


def test_no_results_give_ap_zero(gt_path):
  metrics = eval_lib.coco_evaluate(gt_path, [])
  assert metrics['AP'] == 0 and metrics['AR100'] == 0
  assert set(metrics) == set(eval_lib.METRIC_NAMES)


def test_classes_the_dataset_lacks_are_not_scored():
  det, batch = perfect_batch()
  mapping = (1, -1, 90)  # The model's class 1 (category 5 here) is not in the dataset.
  results = eval_lib.detections_to_coco(det, batch, mapping)
  expected = [(i, c) for i, (_, _, boxes) in IMAGES.items() for c, _ in boxes if c != 5]
  assert [(r['image_id'], r['category_id']) for r in results] == expected
