"""PaddleDetection's RandomDistort, RandomExpand and RandomCrop on the cases of `augment_compare.py`, each fed the
draws fcos_jax made (np.random replaced by tests/augment_reference.py's stand-ins), compared with fcos_jax's output.

Usage (in .venv-paddle): python parity/paddle_augment.py WORK      (exits 1 on a failure)
"""

import zlib  # noqa: F401  pylint: disable=unused-import  (before paddle, which bundles another zlib)
import ast
import collections
import os
import sys

import numpy as np
from ppdet.data.transform import operators

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
import augment_reference as ref  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

class NumpyWith:
  """The numpy module, with `random` replaced."""

  def __init__(self, random):
    self.random = random

  def __getattr__(self, name):
    return getattr(np, name)


def parse(spec):
  """'Name(k=v, ...)' -> (name, kwargs), the ppdet op's keyword arguments."""
  node = ast.parse(spec, mode='eval').body
  if isinstance(node, ast.Name):
    return node.id, {}
  return node.func.id, {k.arg: ast.literal_eval(k.value) for k in node.keywords}


def settings(op):
  return {name: getattr(op, name) for name in ('brightness', 'contrast', 'saturation', 'hue', 'random_apply',
                                               'count')}


def main(work):
  cases = np.load(os.path.join(work, 'augment_cases.npz'))
  keys = sorted({k.rsplit('/', 1)[0] for k in cases if k.endswith('/spec')}, key=lambda k: tuple(map(int, k.split('/'))))
  report = collections.defaultdict(lambda: {'cases': 0, 'changed': 0, 'pixel': 0, 'box_equal': 0, 'shape_equal': 0,
                                            'values': 0, 'off': 0})
  failures = []
  for key in keys:
    spec = str(cases[f'{key}/spec'])
    name, kwargs = parse(spec)
    op = getattr(operators, name)(**kwargs)
    draws = {k.rsplit('/', 1)[1]: cases[k] for k in cases if k.startswith(f'{key}/draw/')}
    if name == 'RandomDistort':
      rng = ref.distort_random(draws, settings(op))
    elif name == 'RandomExpand':
      rng = ref.SequenceRandom(draws['u'])
    else:
      rng = ref.AttemptRandom(draws['order'], draws['u'], 3 if op.aspect_ratio is None else 2)
    image, boxes, labels = cases[f'{key}/image'], cases[f'{key}/boxes'], cases[f'{key}/labels']
    sample = {'image': image.copy(), 'gt_bbox': boxes.copy(), 'gt_class': labels[:, None].copy()}
    operators.np = NumpyWith(rng)
    try:
      sample = op(sample)
    finally:
      operators.np = np
    theirs = np.clip(np.round(sample['image']), 0, 255).astype(np.int64)
    ours = cases[f'{key}/ours/image'].astype(np.int64)
    row = report[spec]
    row['cases'] += 1
    row['changed'] += theirs.shape != image.shape or not np.array_equal(theirs, image)
    same_shape = theirs.shape == ours.shape
    row['shape_equal'] += same_shape
    diff = int(np.abs(theirs - ours).max()) if same_shape else 256
    row['values'] += ours.size
    row['off'] += int((theirs != ours).sum()) if same_shape else ours.size
    row['pixel'] = max(row['pixel'], diff)
    box_equal = (np.array_equal(sample['gt_bbox'], cases[f'{key}/ours/boxes'])
                 and np.array_equal(sample['gt_class'][:, 0], cases[f'{key}/ours/labels']))
    row['box_equal'] += box_equal
    if diff > 1 or not box_equal:
      failures.append(f'{spec} case {key}: pixel diff {diff}, boxes and labels equal: {box_equal}')
  print(f'{"op setting":<72} cases changed  same size  boxes+labels equal  max |pixel diff|  values off by 1')
  for spec, row in report.items():
    print(f'{spec:<72} {row["cases"]:>5} {row["changed"]:>7} {row["shape_equal"]:>10} {row["box_equal"]:>19} '
          f'{row["pixel"]:>17} {row["off"] / row["values"]:>16.2e}')
  for failure in failures:
    print('FAIL', failure)
  print('augment parity:', 'FAILED' if failures else 'all within limits (boxes and labels equal, pixels <= 1)')
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1]))
