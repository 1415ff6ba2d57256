"""Sliced prediction (PaddleDetection's slice_infer): SAHI's tile grid, the per-class IoS/IoU merge, the Predictor's
tiles (one tile = the unsliced prediction, edge tiles, a seam, one compile per canvas), and the two commands."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fcos_jax import checkpoints, errors, postprocess, predict, slicing
from fcos_jax.data import sources
from fcos_jax.model import fcos
from tests.test_commands import assert_user_error, coco_folder, run
from tests.test_predict import picture, tiny_config


def sahi_grid(height, width, slice_h, slice_w, ratio_h, ratio_w):
  """SAHI's get_slice_bboxes, re-derived as its loops walk: rows from the top, tiles from the left; a tile that
  passes the image's end is pulled back to end there (not before 0); the next starts `overlap` pixels before the
  previous (unpulled) end; a row or tile starts only while the previous one ended inside the image."""
  overlap_y, overlap_x = int(ratio_h * slice_h), int(ratio_w * slice_w)
  tiles, top, bottom = [], 0, 0
  while bottom < height:
    bottom = top + slice_h
    left = right = 0
    while right < width:
      right = left + slice_w
      x1, y1 = min(right, width), min(bottom, height)
      tiles.append([max(0, x1 - slice_w), max(0, y1 - slice_h), x1, y1])
      left = right - overlap_x
    top = bottom - overlap_y
  return np.array(tiles).reshape(-1, 4)


def test_tile_grid_is_sahis():
  assert slicing.tile_grid(1200, 1600, (640, 640), (0.25, 0.25)).tolist() == [
      [0, 0, 640, 640], [480, 0, 1120, 640], [960, 0, 1600, 640],
      [0, 480, 640, 1120], [480, 480, 1120, 1120], [960, 480, 1600, 1120],
      [0, 560, 640, 1200], [480, 560, 1120, 1200], [960, 560, 1600, 1200]]  # The last row pulled back to end at 1200.
  # A side shorter than a tile: one tile of the side's own length (SAHI does not pad).
  assert slicing.tile_grid(300, 500, (640, 640), (0.25, 0.25)).tolist() == [[0, 0, 500, 300]]
  assert slicing.tile_grid(100, 1000, (640, 640), (0.25, 0.25)).tolist() == [[0, 0, 640, 100], [360, 0, 1000, 100]]
  rng = np.random.default_rng(0)
  for _ in range(1000):
    h, w, sh, sw = (int(v) for v in rng.integers(1, 1200, 4))
    rh, rw = rng.choice([0.0, 0.1, 0.2, 0.25, 0.29, 0.5, 0.9, 0.99, rng.uniform(0, 1)], 2)
    np.testing.assert_array_equal(slicing.tile_grid(h, w, (sh, sw), (rh, rw)), sahi_grid(h, w, sh, sw, rh, rw),
                                  err_msg=f'{h}x{w} in {sh}x{sw} tiles overlapping {rh}, {rw}')


def paddle_merge(boxes, scores, classes, threshold, metric):
  """PaddleDetection's multiclass_nms of sliced prediction, re-derived with scalar loops: per class, by descending
  score (argsort reversed), each box not yet suppressed suppresses every later one of its class whose overlap
  (+1 pixel sides) is >= threshold. Returns the kept indices."""
  kept = []
  for c in np.unique(classes):
    index = np.flatnonzero(classes == c)
    order = index[np.argsort(scores[index], kind='stable')[::-1]]
    suppressed = set()
    for i_pos, i in enumerate(order):
      if i in suppressed:
        continue
      kept.append(i)
      for j in order[i_pos + 1:]:
        a, b = boxes[i], boxes[j]
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
        area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        inter = iw * ih
        value = inter / min(area_a, area_b) if metric == 'ios' else inter / (area_a + area_b - inter)
        if value >= threshold:
          suppressed.add(j)
  return np.array(sorted(kept), int)


@pytest.mark.parametrize('metric', ['ios', 'iou'])
@pytest.mark.parametrize('threshold', [0.0, 0.3, 0.6, 0.9, 1.0])
def test_merge_is_paddles_per_class_nms(metric, threshold):
  rng = np.random.default_rng(1)
  centres = rng.uniform(0, 300, (12, 2))  # Clusters of overlapping boxes, as neighbouring tiles give.
  xy = centres[rng.integers(0, 12, 400)] + rng.normal(0, 6, (400, 2))
  wh = rng.uniform(4, 40, (400, 2))
  boxes = np.concatenate([xy, xy + wh], axis=1)
  boxes[:20] = boxes[20:40]  # Identical boxes (IoU and IoS 1) ...
  boxes[40:60, 2:] = boxes[40:60, :2] + (boxes[60:80, 2:] - boxes[60:80, :2]) / 2  # ... and nested ones.
  boxes[40:60, :2] = boxes[60:80, :2]
  scores = rng.uniform(0, 1, 400).astype(np.float32)
  classes = rng.integers(0, 3, 400)
  keep = slicing.merge(boxes, scores, classes, slicing.Slicing((64, 64), match_threshold=threshold,
                                                               match_metric=metric))
  np.testing.assert_array_equal(np.sort(keep), paddle_merge(boxes, scores, classes, threshold, metric))
  assert np.all(np.diff(scores[keep]) <= 0)  # Best first.
  if 0 < threshold < 1:
    assert 12 < len(keep) < 400
  capped = slicing.merge(boxes, scores, classes, slicing.Slicing((64, 64), match_threshold=threshold,
                                                                 match_metric=metric, max_detections=10))
  np.testing.assert_array_equal(capped, keep[:10])
  everything = slicing.merge(boxes, scores, classes, slicing.Slicing((64, 64), combine='concat'))
  np.testing.assert_array_equal(everything, np.argsort(-scores, kind='stable'))


def test_merge_keeps_classes_apart_and_ties_go_to_the_later_detection():
  box = np.array([[10., 10., 50., 50.]] * 3)
  kept = slicing.merge(box, np.float32([0.5, 0.5, 0.5]), np.array([0, 1, 0]), slicing.Slicing((64, 64)))
  assert sorted(kept.tolist()) == [1, 2]  # The later of the two class-0 twins, and the class-1 one.
  assert slicing.merge(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), slicing.Slicing((64, 64))).shape == (0,)


def test_bad_slicing_options_are_named():
  with pytest.raises(errors.ConfigError, match=r'slice size \(0, 64\) must be two positive integers H W '
                     r'\(--slice-size\); overlap ratio \(1.0, 0.2\) must be two numbers RH RW in \[0, 1\)'):
    slicing.Slicing((0, 64), overlap=(1.0, 0.2))
  with pytest.raises(errors.ConfigError, match=r"combine method 'max' must be one of nms, concat .*match metric "
                     r"'giou' must be one of ios, iou .*match threshold 1.5 must be in \[0, 1\] .*max detections 0"):
    slicing.Slicing((64, 64), combine='max', match_metric='giou', match_threshold=1.5, max_detections=0)
  parser = argparse.ArgumentParser()
  slicing.add_arguments(parser)
  assert slicing.from_arguments(parser.parse_args([])) is None
  assert slicing.from_arguments(parser.parse_args('--slice-size 64 96 --overlap-ratio 0.1 0.2'.split())) == \
      slicing.Slicing((64, 96), (0.1, 0.2), 'nms', 0.6, 'ios', None)
  with pytest.raises(errors.ConfigError, match='--match-metric applies to sliced prediction: add --slice-size H W'):
    slicing.from_arguments(parser.parse_args(['--match-metric', 'iou']))


@pytest.fixture(scope='module')
def predictor():
  config = tiny_config()
  variables = fcos.init_variables(fcos.build_model(config.model), 0)
  return predict.Predictor(config, variables, batch_size=4)


def assert_same(a, b):
  np.testing.assert_array_equal(a.boxes, b.boxes)
  np.testing.assert_array_equal(a.scores, b.scores)
  np.testing.assert_array_equal(a.classes, b.classes)
  assert a.class_names == b.class_names and a.image_size == b.image_size


def test_one_tile_covering_the_image_is_the_unsliced_prediction(predictor):
  image = picture(120, 150, 3)
  (whole,) = predictor.predict([image])
  (concat,) = predictor.predict([image], slicing=slicing.Slicing((128, 160), combine='concat'))
  assert len(whole.scores) > 0
  assert_same(concat, whole)
  (merged,) = predictor.predict([image], slicing=slicing.Slicing((640, 640)))  # Larger than the image: one tile.
  keep = slicing.merge(whole.boxes, whole.scores, whole.classes, slicing.Slicing((640, 640)))
  assert 0 < len(keep) <= len(whole.scores)
  assert_same(merged, predict.Prediction(whole.boxes[keep], whole.scores[keep], whole.classes[keep],
                                         [whole.class_names[i] for i in keep], whole.image_size))


def test_tiles_are_images_of_their_own_shifted_back(predictor):
  """100 x 300 in 128 x 128 tiles: the tiles are 100 high (the image's height, as SAHI cuts them; each then resized
  to the evaluation scale like any image), the last one pulled back to end at x = 300; the sliced prediction with
  'concat' is each crop's own prediction shifted by its origin, and exceeds postprocess.max_detections."""
  image = picture(100, 300, 4)
  grid = slicing.tile_grid(100, 300, (128, 128), (0.25, 0.25))
  assert grid.tolist() == [[0, 0, 128, 100], [96, 0, 224, 100], [172, 0, 300, 100]]
  crops = predictor.predict([image[y0:y1, x0:x1] for x0, y0, x1, y1 in grid])
  (sliced,) = predictor.predict([image], slicing=slicing.Slicing((128, 128), combine='concat'))
  boxes = np.concatenate([c.boxes + [x0, y0, x0, y0] for c, (x0, y0, _, _) in zip(crops, grid)])
  scores = np.concatenate([c.scores for c in crops])
  order = np.argsort(-scores, kind='stable')
  np.testing.assert_array_equal(sliced.boxes, boxes[order])
  np.testing.assert_array_equal(sliced.scores, scores[order])
  assert len(sliced.scores) > predictor.config.postprocess.max_detections and sliced.image_size == (100, 300)


def bright_box_detector(variables, images, sizes):
  """A stand-in for the network: one detection per image, class 1, around its pixels brighter than 200 in every
  channel, scored by how many there are (a whole object scores higher than a cut one)."""
  del variables, sizes
  bright = jnp.all(images > 200, axis=-1)
  rows, cols = jnp.any(bright, axis=2), jnp.any(bright, axis=1)
  h, w = images.shape[1:3]
  box = jnp.stack([jnp.argmax(cols, 1), jnp.argmax(rows, 1), w - jnp.argmax(cols[:, ::-1], 1),
                   h - jnp.argmax(rows[:, ::-1], 1)], axis=-1).astype(jnp.float32)
  return {'boxes': box[:, None], 'scores': (bright.sum((1, 2)) / 1e4)[:, None], 'classes': jnp.ones_like(box[:, :1],
                                                                                                        jnp.int32),
          'valid': jnp.any(bright, axis=(1, 2))[:, None]}


def test_an_object_on_a_seam_comes_out_once(predictor, monkeypatch):
  """A 224 x 224 image in 2 x 2 tiles of 128 (overlap 32): an object at [100, 100, 140, 140) lies in all four tiles,
  whole only in the last; the IoS merge keeps that one, in image pixels; 'concat' keeps all four cut copies."""
  monkeypatch.setattr(predictor, '_detect', jax.jit(bright_box_detector))
  image = np.full((224, 224, 3), 90, np.uint8)
  image[100:140, 100:140] = 255
  (merged,) = predictor.predict([image], slicing=slicing.Slicing((128, 128)))
  np.testing.assert_array_equal(merged.boxes, [[100, 100, 140, 140]])
  assert merged.class_names == ['class_1']
  (concat,) = predictor.predict([image], slicing=slicing.Slicing((128, 128), combine='concat'))
  assert sorted(concat.boxes.tolist()) == [[100, 100, 128, 128], [100, 100, 128, 140], [100, 100, 140, 128],
                                           [100, 100, 140, 140]]
  (by_iou,) = predictor.predict([image], slicing=slicing.Slicing((128, 128), match_metric='iou'))
  assert len(by_iou.scores) == 2  # The 28 x 28 corner's IoU with the whole object is 841 / 1681 < 0.6.


def test_tiles_compile_once_per_canvas(monkeypatch):
  """Tiles of every image, full or cut at an edge, landscape or portrait, share the canvases' programs: one trace
  per canvas, none for later images of other sizes."""
  traces = []
  real = postprocess.detect
  monkeypatch.setattr(postprocess, 'detect', lambda outputs, points, *a, **kw: traces.append(points.shapes) or
                      real(outputs, points, *a, **kw))
  config = tiny_config()
  p = predict.Predictor(config, fcos.init_variables(fcos.build_model(config.model), 0), batch_size=4)
  tiles = slicing.Slicing((128, 128))
  p.predict([picture(300, 500, 0), picture(100, 300, 1), picture(400, 100, 2)], slicing=tiles)
  assert len(traces) == 2  # (128, 256) and (256, 128), for 15 + 3 + 4 tiles.
  again = p.predict([picture(700, 90, 3), picture(129, 1000, 4)], slicing=tiles)
  assert len(traces) == 2
  assert [a.image_size for a in again] == [(700, 90), (129, 1000)]


def test_a_split_in_tiles_names_unreadable_images(predictor, tmp_path):
  coco_folder(tmp_path)  # Two 96 x 128 images, ids 1 and 2.
  (tmp_path / 'val2017' / '1.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  source, tiles = sources.FolderSource(str(tmp_path)), slicing.Slicing((64, 64))
  with pytest.raises(errors.DataError, match=r'1.jpg: truncated JPEG \(no end-of-image marker\) '
                     r'\(data.skip_bad_images=true scores unreadable images as missed\)'):
    list(predict.predict_split(predictor, source, 'val2017', 2, tiles))
  (first, bad), (second, pred) = predict.predict_split(predictor, source, 'val2017', 2, tiles, skip_bad_images=True)
  assert (first, second) == (1, 2) and isinstance(bad, predict.UnreadableImageError)
  assert pred.image_size == (96, 128) and len(pred.scores) > 0


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  config = tiny_config()
  variables = fcos.init_variables(fcos.build_model(config.model), 0)
  path = tmp_path_factory.mktemp('ckpt') / 'tiny'
  checkpoints.save_variables(str(path), variables, checkpoints.make_metadata(config, ['a', 'b', 'c'], [4, 5, 6]))
  return path


def test_predict_command_slices_a_large_jpeg(checkpoint, tmp_path):
  Image.fromarray(picture(480, 640, 5)).save(tmp_path / 'raster.jpg', quality=95)
  proc = run('fcos-predict', 'raster.jpg', '--checkpoint', checkpoint, '--out', 'out', '--threshold', '0',
             '--slice-size', '128', '160', '--overlap-ratio', '0.2', '0.3', '--match-metric', 'iou',
             '--match-threshold', '0.5', '--max-detections', '150', cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / 'out' / 'results.json').read_text())
  tiles = slicing.Slicing((128, 160), (0.2, 0.3), 'nms', 0.5, 'iou', 150)
  (want,) = predict.Predictor.from_checkpoint(str(checkpoint)).predict([str(tmp_path / 'raster.jpg')], slicing=tiles)
  assert len(results) == len(want.scores) == 150  # Beyond postprocess.max_detections (20): the image's best 150.
  np.testing.assert_allclose([r['score'] for r in results], want.scores, rtol=1e-6)
  np.testing.assert_allclose([r['bbox'][:2] for r in results], want.boxes[:, :2], atol=0.006)
  assert [r['category_id'] for r in results] == [[4, 5, 6][c] for c in want.classes]
  assert_user_error(tmp_path, 'fcos-predict', 'raster.jpg', '--checkpoint', checkpoint, '--out', 'out2',
                    '--slice-size', '128', '128', '--overlap-ratio', '1', '0.5',
                    message='Invalid slicing: overlap ratio (1.0, 0.5) must be two numbers RH RW in [0, 1)')


def test_evaluate_command_slices_every_image(checkpoint, tmp_path):
  """fcos-evaluate --slice-size on a COCO folder: its results are the Predictor's sliced predictions, scored."""
  coco_folder(tmp_path / 'coco')  # Two 96 x 128 images with a 'person' box each.
  gt = json.loads((tmp_path / 'coco' / 'annotations' / 'instances_val2017.json').read_text())
  gt['categories'] = [{'id': 4, 'name': 'a'}, {'id': 5, 'name': 'b'}, {'id': 6, 'name': 'c'}]
  for a in gt['annotations']:
    a['category_id'] = 5
  (tmp_path / 'coco' / 'annotations' / 'instances_val2017.json').write_text(json.dumps(gt))
  proc = run('fcos-evaluate', '--workdir=w', f'--checkpoint={checkpoint}', '--config.data.root=coco',
             '--config.data.val_split=val2017', '--slice-size', '64', '64', '--combine', 'concat', cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'evaluating in tiles' in proc.stdout and 'COCO box AP' in proc.stdout
  metrics = json.loads((tmp_path / 'w' / 'metrics.json').read_text())
  assert metrics['num_images'] == 2 and np.isfinite(metrics['AP'])
  results = json.loads((tmp_path / 'w' / 'results.json').read_text())
  p = predict.Predictor.from_checkpoint(str(checkpoint))
  files = [str(tmp_path / 'coco' / 'val2017' / f'{i}.jpg') for i in (1, 2)]
  want = p.predict(files, slicing=slicing.Slicing((64, 64), combine='concat'))
  for image_id, pred in zip((1, 2), want):
    mine = [r for r in results if r['image_id'] == image_id]
    assert len(mine) == len(pred.scores) > 20  # 6 tiles of up to 20 detections each.
    np.testing.assert_allclose([r['score'] for r in mine], pred.scores, rtol=1e-6)
    np.testing.assert_allclose([r['bbox'][:2] for r in mine], pred.boxes[:, :2], atol=0.006)
  assert_user_error(tmp_path, 'fcos-evaluate', '--workdir=w2', f'--checkpoint={checkpoint}', '--combine', 'concat',
                    message='--combine applies to sliced prediction: add --slice-size H W')
