"""PaddleDetection's own `VOCDataSet` on a VOC folder in its list form: writes each record's image file, boxes,
class ids and difficult flags to OUT. Used by tests/test_data_voc_yolo.py when .venv-paddle exists.

Usage (in .venv-paddle): python parity/paddle_voc_reader.py ROOT SPLIT_FILE OUT.json
"""

import zlib  # noqa: F401  pylint: disable=unused-import  (before paddle, which bundles another zlib)
import json
import sys

from ppdet.data.source.voc import VOCDataSet


def main(root, split_file, out_path):
  dataset = VOCDataSet(dataset_dir=root, anno_path=split_file, label_list='label_list.txt',
                       data_fields=['image', 'gt_bbox', 'gt_class', 'difficult'])
  dataset.parse_dataset()
  records = [{'file': r['im_file'], 'boxes': r['gt_bbox'].tolist(), 'labels': r['gt_class'][:, 0].tolist(),
              'difficult': r['difficult'][:, 0].tolist()} for r in dataset.roidbs]
  with open(out_path, 'w') as f:
    json.dump(records, f)


if __name__ == '__main__':
  main(*sys.argv[1:])
