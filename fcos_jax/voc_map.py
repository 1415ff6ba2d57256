"""PaddleDetection's VOC mAP (`VOCMetric` / `DetectionMAP`): average precision at IoU > 0.5 per class, '11point'
or 'integral', averaged over the classes with ground truth. NumPy only (no TensorFlow, no JAX).

Its rules: boxes in pixels with the +1 convention (area (x2 - x1 + 1) * (y2 - y1 + 1), boxes that only touch do not
overlap). Each image's detections, in descending score order, take the ground-truth box of their class they overlap
most (the first of equals); above the threshold, a box not taken yet makes a true positive, a taken one a false
positive, a `difficult` box neither (not counted as ground truth either, unless `evaluate_difficult`); below it,
a false positive. Per class, detections of all images sorted by score (stable) give precision and recall;
'11point' averages the best precision at recall >= 0, 0.1, ..., 1 (0 where none), 'integral' sums precision times
each rise of recall above 1e-6. A class with ground truth and no detection counts with AP 0.
"""

import numpy as np

MAP_TYPES = ('11point', 'integral')


def pixel_iou(boxes, gt):
  """IoU [n, m] of xyxy boxes [n, 4] and [m, 4] with the +1 pixel convention; 0 for boxes that do not overlap."""
  boxes, gt = np.asarray(boxes, np.float64).reshape(-1, 1, 4), np.asarray(gt, np.float64).reshape(1, -1, 4)
  apart = ((boxes[..., 0] >= gt[..., 2]) | (boxes[..., 2] <= gt[..., 0]) | (boxes[..., 1] >= gt[..., 3])
           | (boxes[..., 3] <= gt[..., 1]))
  inter = ((np.minimum(boxes[..., 2], gt[..., 2]) - np.maximum(boxes[..., 0], gt[..., 0]) + 1)
           * (np.minimum(boxes[..., 3], gt[..., 3]) - np.maximum(boxes[..., 1], gt[..., 1]) + 1))
  area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)  # noqa: E731
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(apart, 0.0, inter / (area(boxes) + area(gt) - inter))


def _match_image(det, gt, threshold, evaluate_difficult):
  """(labels, scores, true positive flags) of one image's counted detections, in descending score order."""
  boxes, scores, labels = (np.asarray(v) for v in det)
  gt_boxes, gt_labels, difficult = (np.asarray(v) for v in gt)
  order = np.argsort(-np.asarray(scores, np.float64), kind='stable')
  iou = pixel_iou(boxes[order], gt_boxes)
  same = labels[order, None].astype(np.int64) == gt_labels[None, :].astype(np.int64)
  iou = np.where(same, iou, -1.0)
  taken = np.zeros(len(gt_labels), bool)
  keep, positive = [], []
  for k in range(len(order)):
    best = int(np.argmax(iou[k])) if len(gt_labels) else -1
    if best < 0 or iou[k, best] <= threshold:
      keep.append(k)
      positive.append(False)
    elif evaluate_difficult or not difficult[best]:
      keep.append(k)
      positive.append(not taken[best])
      taken[best] = True
  picked = order[keep]
  return labels[picked].astype(np.int64), np.asarray(scores, np.float64)[picked], np.array(positive, bool)


def _average_precision(precision, recall, map_type):
  if map_type == '11point':
    return float(sum(precision[recall >= t].max(initial=0.0) for t in np.arange(11) / 10.0) / 11.0)
  ap, previous = 0.0, 0.0
  for p, r in zip(precision, recall):
    if abs(r - previous) > 1e-6:
      ap += p * abs(r - previous)
      previous = r
  return float(ap)


def detection_map(detections, ground_truth, num_classes, map_type='11point', overlap_threshold=0.5,
                  evaluate_difficult=False):
  """The mAP of per-image `detections` [(boxes [n, 4] xyxy pixels, scores [n], labels [n] in 0..C-1)] against
  `ground_truth` [(boxes [m, 4], labels [m], difficult [m] bool)], the same images in the same order."""
  if map_type not in MAP_TYPES:
    raise ValueError(f'map_type={map_type!r} must be one of {MAP_TYPES}')
  counts = np.zeros(num_classes, np.int64)
  labels, scores, positive = [], [], []
  for det, gt in zip(detections, ground_truth):
    gt_labels, difficult = np.asarray(gt[1], np.int64), np.asarray(gt[2], bool)
    counts += np.bincount(gt_labels[evaluate_difficult | ~difficult], minlength=num_classes)
    image = _match_image(det, gt, overlap_threshold, evaluate_difficult)
    labels.append(image[0])
    scores.append(image[1])
    positive.append(image[2])
  labels, scores, positive = (np.concatenate(v) if v else np.zeros(0) for v in (labels, scores, positive))
  aps = []
  for c in np.nonzero(counts)[0]:
    mine = labels == c
    order = np.argsort(-scores[mine], kind='stable')
    tp = np.cumsum(positive[mine][order])
    precision = tp / np.arange(1, len(tp) + 1)
    aps.append(_average_precision(precision, tp / counts[c], map_type) if len(tp) else 0.0)
  return float(np.mean(aps)) if aps else 0.0


def voc_metrics(coco_gt, results, image_ids):
  """{'voc_map_11point', 'voc_map_integral'} (fractions) of COCO result dicts `results` against a pycocotools
  ground truth with `difficult` flags (a VOC source's), over the images of `image_ids` with ground truth (those
  PaddleDetection's VOC reader keeps), classes in the order of the sorted category ids."""
  label_of = {cid: i for i, cid in enumerate(sorted(coco_gt.cats))}
  by_image = {}
  for r in results:
    by_image.setdefault(r['image_id'], []).append(r)
  detections, ground_truth = [], []
  for image_id in sorted({int(i) for i in image_ids}):
    anns = coco_gt.imgToAnns.get(image_id, [])
    if not anns:
      continue
    xywh = np.array([a['bbox'] for a in anns], np.float64).reshape(-1, 4)
    ground_truth.append((np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                         [label_of[a['category_id']] for a in anns], [bool(a.get('difficult', 0)) for a in anns]))
    mine = by_image.get(image_id, [])
    xywh = np.array([r['bbox'] for r in mine], np.float64).reshape(-1, 4)
    detections.append((np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), [r['score'] for r in mine],
                       np.array([label_of[r['category_id']] for r in mine], np.int64)))
  return {f'voc_map_{t}': detection_map(detections, ground_truth, len(label_of), t) for t in MAP_TYPES}
