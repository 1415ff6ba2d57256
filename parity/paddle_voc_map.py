"""PaddleDetection's own `DetectionMAP` (the engine of its `VOCMetric`) on the cases of a JSON file: writes the mAP
of each case to OUT. Used by tests/test_voc_map.py when .venv-paddle exists.

Each case: {num_classes, map_type, evaluate_difficult, images: [{boxes, scores, labels, gt_boxes, gt_labels,
difficult}]}; each image's detections are handed over in the order given (PaddleDetection's NMS gives them in
descending score order), as `VOCMetric.update` hands them: boxes, scores, labels, then the ground truth.

Usage (in .venv-paddle): python parity/paddle_voc_map.py CASES.json OUT.json
"""

import zlib  # noqa: F401  pylint: disable=unused-import  (before paddle, which bundles another zlib)
import json
import sys

import numpy as np
from ppdet.metrics.map_utils import DetectionMAP


def main(cases_path, out_path):
  with open(cases_path) as f:
    cases = json.load(f)
  out = []
  for case in cases:
    metric = DetectionMAP(class_num=case['num_classes'], overlap_thresh=0.5, map_type=case['map_type'],
                          is_bbox_normalized=False, evaluate_difficult=case['evaluate_difficult'],
                          catid2name={i: str(i) for i in range(case['num_classes'])})
    for image in case['images']:
      metric.update(np.array(image['boxes'], np.float32).reshape(-1, 4), np.array(image['scores'], np.float32),
                    np.array(image['labels'], np.float32), np.array(image['gt_boxes'], np.float32).reshape(-1, 4),
                    np.array(image['gt_labels'], np.int32).reshape(-1, 1),
                    np.array(image['difficult'], np.int32).reshape(-1, 1))
    metric.accumulate()
    out.append(metric.get_map())
  with open(out_path, 'w') as f:
    json.dump(out, f)


if __name__ == '__main__':
  main(*sys.argv[1:])
