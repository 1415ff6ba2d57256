"""Evaluation: detections of a batch -> COCO result dicts in original-image pixels -> pycocotools box metrics."""

import contextlib
import io
import os

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# The order of COCOeval.stats for boxes.
METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def detections_to_coco(detections, batch, label_to_category, decimals=2):
  """COCO result dicts for the valid detections of one batch, skipping padding images (`batch['mask']` False).

  `detections`: `boxes` [B, K, 4] xyxy canvas pixels, `scores` [B, K], `classes` [B, K], `valid` [B, K] (NumPy or
  JAX). `batch`: `image_id` [B], `scale` [B, 2] (sy, sx) resize factors, optional `mask` [B]. Boxes go back to
  original pixels (divided by the scale) as [x, y, w, h] rounded to `decimals`; `label_to_category[label]` is the
  COCO category id of a contiguous label.
  """
  keep = np.asarray(detections['valid'], bool)
  if batch.get('mask') is not None:
    keep = keep & np.asarray(batch['mask'], bool)[:, None]
  image, slot = np.nonzero(keep)
  sy, sx = np.asarray(batch['scale'], np.float64)[image].T
  xyxy = np.asarray(detections['boxes'], np.float64)[image, slot] / np.stack([sx, sy, sx, sy], axis=-1)
  xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=-1).round(decimals)
  categories = np.asarray(label_to_category)[np.asarray(detections['classes'])[image, slot]]
  image_ids = np.asarray(batch['image_id'])[image]
  scores = np.asarray(detections['scores'], np.float64)[image, slot]
  return [{'image_id': i, 'category_id': c, 'bbox': b, 'score': s}
          for i, c, b, s in zip(image_ids.tolist(), categories.tolist(), xywh.tolist(), scores.tolist())]


def _empty_results(coco_gt):
  """A COCO result set without detections (pycocotools' loadRes cannot build one)."""
  coco_dt = COCO()
  coco_dt.dataset = {'images': list(coco_gt.dataset['images']), 'categories': list(coco_gt.dataset['categories']),
                     'annotations': []}
  with contextlib.redirect_stdout(io.StringIO()):
    coco_dt.createIndex()
  return coco_dt


def coco_evaluate(coco_gt, results, image_ids=None):
  """The 12 standard COCO box metrics {name: value} of `results` (dicts as from `detections_to_coco`).

  `coco_gt` is a pycocotools COCO or the path of a COCO annotations json; `image_ids` restricts the evaluation to
  those images (default: all of coco_gt, so images without results count as missed). Prints pycocotools' table.
  No results at all give AP 0 (-1 where a size range has no ground truth, as pycocotools reports).
  """
  if isinstance(coco_gt, (str, os.PathLike)):
    coco_gt = COCO(os.fspath(coco_gt))
  # loadRes adds fields to the dicts it gets: hand it copies.
  coco_dt = coco_gt.loadRes([dict(r) for r in results]) if results else _empty_results(coco_gt)
  evaluator = COCOeval(coco_gt, coco_dt, 'bbox')
  if image_ids is not None:
    evaluator.params.imgIds = sorted(int(i) for i in image_ids)
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return dict(zip(METRIC_NAMES, (float(v) for v in evaluator.stats)))
