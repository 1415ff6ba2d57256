"""The synthetic shapes dataset: deterministic bytes, valid for pycocotools, annotations matching the pixels."""

import contextlib
import filecmp
import io
import json
import os

import numpy as np
from pycocotools.coco import COCO
import pytest
import tensorflow as tf

from fcos_jax.data import synthetic

pytestmark = pytest.mark.fast

tf.config.set_visible_devices([], 'GPU')


@pytest.fixture(scope='module')
def generated(shapes_dataset):
  return shapes_dataset(20, 6)


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_byte_identical_for_a_seed(generated, tmp_path):
  again = synthetic.generate(str(tmp_path / 'again'), num_train=20, num_val=6, seed=0)
  assert _files(generated) == _files(again)
  _, mismatch, errors = filecmp.cmpfiles(generated, again, _files(generated), shallow=False)
  assert not mismatch and not errors
  other = synthetic.generate(str(tmp_path / 'other'), num_train=2, num_val=0, seed=1)
  assert not filecmp.cmp(os.path.join(generated, 'train', '000000000001.jpg'),
                         os.path.join(other, 'train', '000000000001.jpg'), shallow=False)


def test_readable_by_pycocotools(generated):
  for split, count in (('train', 20), ('val', 6)):
    with contextlib.redirect_stdout(io.StringIO()):
      gt = COCO(os.path.join(generated, 'annotations', f'instances_{split}.json'))
    assert len(gt.imgs) == count
    assert sorted(gt.cats) == [cid for cid, _, _ in synthetic.CATEGORIES] == [1, 3, 7, 8, 12]
    for ann in gt.anns.values():
      img = gt.imgs[ann['image_id']]
      x, y, w, h = ann['bbox']
      assert w >= synthetic.MIN_OBJECT or ann['iscrowd'] and w > 0
      assert 0 <= x and x + w <= img['width'] and 0 <= y and y + h <= img['height']
      assert ann['area'] == w * h
      assert gt.annToMask(ann).sum() == w * h  # The polygon is the box.
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(os.path.join(generated, 'annotations', 'instances_train.json'))
  assert sum(a['iscrowd'] for a in gt.anns.values()) == 2  # Images 3 and 13.
  assert [i for i in gt.imgs if not gt.imgToAnns[i]] == [synthetic.EMPTY_AT + 1]
  assert len({gt.anns[a]['category_id'] for a in gt.anns}) == len(synthetic.CATEGORIES)


def test_images_are_varied_jpegs(generated):
  with open(os.path.join(generated, 'annotations', 'instances_train.json')) as f:
    images = json.load(f)['images']
  shapes = set()
  for img in images:
    data = tf.io.read_file(os.path.join(generated, 'train', img['file_name']))
    assert tf.io.is_jpeg(data)
    decoded = tf.io.decode_jpeg(data).numpy()
    assert decoded.shape == (img['height'], img['width'], 3)
    assert 200 <= min(decoded.shape[:2]) and max(decoded.shape[:2]) <= 640
    shapes.add(decoded.shape[0] > decoded.shape[1])
  assert shapes == {True, False}  # Portrait and landscape.


def test_boxes_are_tight_around_the_drawn_shapes(generated):
  """Isolated objects: the pixels of their class colour span their box."""
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(os.path.join(generated, 'annotations', 'instances_train.json'))
  colours = {cid: np.array(colour) for cid, _, colour in synthetic.CATEGORIES}
  checked = 0
  for image_id, anns in gt.imgToAnns.items():
    image = tf.io.decode_jpeg(tf.io.read_file(os.path.join(generated, 'train', gt.imgs[image_id]['file_name'])))
    image = image.numpy().astype(np.float32)
    for ann in anns:
      x, y, w, h = (int(v) for v in ann['bbox'])
      others = [o['bbox'] for o in anns if o is not ann]
      if ann['iscrowd'] or w < 12 or h < 12 or any(
          ox < x + w + 3 and x - 3 < ox + ow and oy < y + h + 3 and y - 3 < oy + oh for ox, oy, ow, oh in others):
        continue
      y0, x0 = max(y - 4, 0), max(x - 4, 0)
      near = np.linalg.norm(image[y0:y + h + 4, x0:x + w + 4] - colours[ann['category_id']], axis=-1) < 60
      ys, xs = np.nonzero(near)
      found = np.array([xs.min() + x0, ys.min() + y0, xs.max() + 1 + x0, ys.max() + 1 + y0])
      if ann['category_id'] == 1:  # Rectangles: exact up to the JPEG blur.
        np.testing.assert_allclose(found, [x, y, x + w, y + h], atol=1)
        checked += 1
      else:  # Thin tips (triangles, diamonds) fade in the JPEG: inside the box, spanning most of it.
        assert (found[:2] >= [x - 1, y - 1]).all() and (found[2:] <= [x + w + 1, y + h + 1]).all()
        assert found[2] - found[0] >= 0.7 * w and found[3] - found[1] >= 0.7 * h
  assert checked >= 3


def test_shape_masks_fill_their_box():
  for _, kind, _ in synthetic.CATEGORIES:
    mask = synthetic.shape_mask(kind, 30, 50)
    ys, xs = np.nonzero(mask)
    assert xs.min() <= 1 and xs.max() >= 48 and ys.min() <= 1 and ys.max() >= 28, kind


def test_cli(tmp_path, capsys):
  synthetic.main(['--out', str(tmp_path), '--num-train', '2', '--num-val', '1', '--seed', '3'])
  assert 'Wrote 2 train and 1 val images' in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path / 'annotations')) == ['instances_train.json', 'instances_val.json']
  assert len(os.listdir(tmp_path / 'train')) == 2 and len(os.listdir(tmp_path / 'val')) == 1
