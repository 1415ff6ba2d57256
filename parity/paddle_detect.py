"""PaddleDetection end to end on image files: its EvalReader and its FCOS R50-FPN, one image per batch.

For every image of WORK/reader/annotations/instances_val.json (`reader_compare.py make`): `Decode`,
`Resize(target_size=[800, 1333], keep_ratio=True, interp=1)`, `NormalizeImage` (ImageNet mean/std, is_scale),
`Permute`, `PadBatch(pad_to_stride=128)` (fcos_reader.yml's EvalReader, batch_size 1), then the model of
`paddle_reference.py` with WORK/paddle_fcos_r50.pdparams in eval mode: MultiClassNMS detections in the file's own
pixels. Writes WORK/detect_paddle.npz: FILE_NAME -> [n, 6] rows (class index, score, x1, y1, x2, y2).

Usage (in .venv-paddle): python parity/paddle_detect.py WORK
"""

import zlib  # noqa: F401  pylint: disable=unused-import  (before paddle, which bundles another zlib)
import json
import os
import sys

import numpy as np
import paddle
from ppdet.data.transform import operators as ops
from ppdet.data.transform.batch_operators import PadBatch

from paddle_reference import build

EVAL_READER = [ops.Decode(), ops.Resize(target_size=[800, 1333], keep_ratio=True, interp=1),
               ops.NormalizeImage(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], is_scale=True),
               ops.Permute()]


def read(path):
  """The EvalReader's sample for one file: image [1, 3, H, W] padded to a multiple of 128, im_shape, scale_factor."""
  sample = {'im_file': path}
  for op in EVAL_READER:
    sample = op(sample)
  sample = PadBatch(pad_to_stride=128)([sample])[0]
  return {'image': paddle.to_tensor(sample['image'][None]),
          'im_shape': paddle.to_tensor(np.asarray(sample['im_shape'], np.float32)[None]),
          'scale_factor': paddle.to_tensor(np.asarray(sample['scale_factor'], np.float32)[None])}


def main(work):
  paddle.set_device('cpu')
  paddle.framework.core.set_num_threads(2)
  model = build(dcn=False)
  model.set_state_dict(paddle.load(f'{work}/paddle_fcos_r50.pdparams'))
  model.eval()
  root = os.path.join(work, 'reader')
  with open(os.path.join(root, 'annotations', 'instances_val.json')) as f:
    names = [image['file_name'] for image in json.load(f)['images']]
  out = {}
  with paddle.no_grad():
    for name in names:
      result = model(read(os.path.join(root, 'val', name)))
      out[name] = result['bbox'].numpy()[:int(result['bbox_num'].numpy()[0])]
      print(f'paddle: {name}: {len(out[name])} detections', flush=True)
  np.savez(os.path.join(work, 'detect_paddle.npz'), **out)


if __name__ == '__main__':
  main(sys.argv[1])
