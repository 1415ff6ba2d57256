"""PaddleDetection's own reader ops on the photo files of `reader_compare.py make`: WORK/reader_paddle.npz.

For each image of WORK/reader/annotations/instances_val.json: `Decode` (OpenCV), the EvalReader's
`Resize(target_size=[800, 1333], keep_ratio=True, interp=1)`, and for every multiscale short side the TrainReader's
`RandomFlip(prob=1.0)` then `RandomResize(target_size=[[short, 1333]], keep_ratio=True, interp=1)` (one size and a
flip that always happens: deterministic). Saves the pixels (uint8), `scale_factor` and `gt_bbox` of each.

Usage (in .venv-paddle): python parity/paddle_reader.py WORK
"""

import zlib  # noqa: F401  pylint: disable=unused-import  (before paddle, which bundles another zlib)
import json
import os
import sys

import numpy as np
from ppdet.data.transform import operators as ops

SHORT_SIDES = (640, 672, 704, 736, 768, 800)  # fcos_r50_fpn_multiscale_2x_coco.yml's RandomResize.


def sample_of(root, image, boxes):
  return {'im_file': os.path.join(root, 'val', image['file_name']), 'gt_bbox': np.array(boxes, np.float32)}


def run(chain, sample):
  for op in chain:
    sample = op(sample)
  return sample


def main(work):
  root = os.path.join(work, 'reader')
  with open(os.path.join(root, 'annotations', 'instances_val.json')) as f:
    dataset = json.load(f)
  out = {}
  for image in dataset['images']:
    boxes = [[x, y, x + w, y + h] for a in dataset['annotations'] if a['image_id'] == image['id']
             for x, y, w, h in [a['bbox']]]
    key = str(image['id'])
    decoded = run([ops.Decode()], sample_of(root, image, boxes))
    out[f'{key}/decode'] = decoded['image']
    chains = {'eval': [ops.Decode(), ops.Resize(target_size=[800, 1333], keep_ratio=True, interp=1)]}
    for short in SHORT_SIDES:
      chains[f'train{short}'] = [ops.Decode(), ops.RandomFlip(prob=1.0),
                                 ops.RandomResize(target_size=[[short, 1333]], keep_ratio=True, interp=1)]
    for name, chain in chains.items():
      sample = run(chain, sample_of(root, image, boxes))
      pixels = sample['image']
      assert np.array_equal(pixels, np.round(pixels)), 'Resize gives whole levels as float32'
      out[f'{key}/{name}/image'] = pixels.astype(np.uint8)
      out[f'{key}/{name}/scale_factor'] = sample['scale_factor']
      out[f'{key}/{name}/gt_bbox'] = sample['gt_bbox']
  np.savez(os.path.join(work, 'reader_paddle.npz'), **out)
  print(f'{len(dataset["images"])} images, {len(chains)} reader chains each -> {work}/reader_paddle.npz')


if __name__ == '__main__':
  main(sys.argv[1])
