"""Predictor: inputs of every kind, evaluation's resize, one trace per canvas, original-pixel boxes, same detections
as the evaluation path."""

import io
import json

import jax
import numpy as np
import pytest
from PIL import Image

from fcos_jax import eval_lib, inference, postprocess, predict, runtime
from fcos_jax.data import synthetic
from fcos_jax.recipes import shapes
import opencv_linear


def tiny_config():
  """A small FCOS whose random init scores ~0.25 everywhere (prior 0.5), so every image has detections."""
  c = shapes.get_config()
  c.model.update(dict(stem_width=8, fpn_channels=16, gn_groups=4, num_classes=3, prior_prob=0.5))
  c.data.update(dict(short_sizes=(128,), eval_short_size=128, max_size=192, canvases=((128, 256), (256, 128))))
  c.postprocess.max_detections = 20
  c.eval.batch_size = 8
  return c


@pytest.fixture(scope='module')
def predictor():
  config = tiny_config()
  from fcos_jax.model import fcos  # pylint: disable=g-import-not-at-top
  variables = fcos.init_variables(fcos.build_model(config.model), 0)
  return predict.Predictor(config, variables, class_names=['a', 'b', 'c'], category_ids=[3, 5, 9], batch_size=2)


def picture(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(array, fmt, mode=None):
  buf = io.BytesIO()
  image = Image.fromarray(array)
  (image.convert(mode) if mode else image).save(buf, format=fmt, quality=95)
  return buf.getvalue()


@pytest.mark.parametrize('h,w', [(300, 500), (500, 300), (7, 5), (128, 128), (1000, 40), (211, 157)])
def test_resize_is_evaluations_and_boxes_come_back_in_original_pixels(predictor, h, w):
  """Non-square, portrait, tiny, rounding: the canvas holds OpenCV's INTER_LINEAR pixels (re-derived in NumPy,
  bit for bit) at cv2.resize's size for s = min(short / short side, max / long side), PaddleDetection's Resize,
  and the predictor's boxes are the detect function's canvas boxes divided by s."""
  image = picture(h, w)
  resized, scale = predictor.resize(image)
  s = min(128 / min(h, w), 192 / max(h, w))
  new_h, new_w = opencv_linear.output_size(h, w, s)
  assert resized.shape == (new_h, new_w, 3)
  np.testing.assert_array_equal(scale, np.float32([s, s]))
  np.testing.assert_array_equal(resized, opencv_linear.resize(image, (new_h, new_w), (s, s)))

  canvas = predictor.canvas_of((h, w))
  assert canvas == ((128, 256) if w >= h else (256, 128))
  pixels = np.zeros((1, *canvas, 3), np.uint8)
  pixels[0, :new_h, :new_w] = resized
  detect = jax.jit(inference.make_detect_fn(predictor.model, predictor.config))
  det = jax.device_get(detect(predictor.variables, pixels, np.array([[new_h, new_w]], np.int32)))
  (pred,) = predictor.predict([image])
  keep = det['valid'][0]
  assert len(pred.scores) == keep.sum() > 0
  np.testing.assert_allclose(pred.boxes * s, det['boxes'][0][keep], rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(pred.scores, det['scores'][0][keep], rtol=1e-5)  # Batch 2 vs 1: rounding differs.
  assert pred.class_names == [['a', 'b', 'c'][c] for c in det['classes'][0][keep]]
  assert pred.image_size == (h, w)


def test_inputs_of_every_kind_give_the_same_detections(predictor, tmp_path):
  rgb = picture(90, 120, seed=1)
  png = encode(rgb, 'PNG')
  (tmp_path / 'x.png').write_bytes(png)
  rgba = np.concatenate([rgb, np.full((90, 120, 1), 7, np.uint8)], axis=-1)
  gray = rgb[..., 0]
  want = predictor.predict([rgb])[0]
  got = predictor.predict([str(tmp_path / 'x.png'), tmp_path / 'x.png', png, rgba, encode(rgba, 'PNG')])
  for pred in got:
    np.testing.assert_array_equal(pred.boxes, want.boxes)
    np.testing.assert_array_equal(pred.scores, want.scores)
  gray_want = predictor.predict([np.repeat(gray[..., None], 3, axis=-1)])[0]
  for pred in predictor.predict([gray, gray[..., None], encode(gray, 'PNG')]):
    np.testing.assert_array_equal(pred.scores, gray_want.scores)
  # A CMYK JPEG decodes to RGB close to the original (JPEG is lossy): same pixels as Pillow's own conversion.
  cmyk = encode(np.full((40, 60, 3), (200, 40, 90), np.uint8), 'JPEG', 'CMYK')
  decoded = predict.decode(cmyk, 'cmyk.jpg')
  assert decoded.shape == (40, 60, 3)
  np.testing.assert_allclose(decoded.mean((0, 1)), (200, 40, 90), atol=6)


def test_unreadable_inputs_are_named(predictor, tmp_path):
  (tmp_path / 'empty.jpg').write_bytes(b'')
  (tmp_path / 'cut.png').write_bytes(encode(picture(20, 20), 'PNG')[:60])
  for item, text in ((str(tmp_path / 'empty.jpg'), 'empty.jpg: empty file'),
                     (str(tmp_path / 'cut.png'), 'cut.png: truncated PNG'),
                     (str(tmp_path / 'missing.jpg'), 'missing.jpg: No such file'),
                     (b'not an image', 'image bytes: not a JPEG')):
    with pytest.raises(predict.UnreadableImageError, match=text):
      predictor.predict([picture(10, 10), item])
  with pytest.raises(ValueError, match='image array: expected a uint8'):
    predictor.predict([np.zeros((4, 4, 3), np.float32)])
  with pytest.raises(ValueError, match=r'got \(4, 4, 2\)'):
    predictor.predict([np.zeros((4, 4, 2), np.uint8)])


def test_one_trace_per_canvas_over_many_calls(monkeypatch):
  """Batches are padded to batch_size, so each canvas compiles once, whatever the number of images per call."""
  traces = []
  real = postprocess.detect
  monkeypatch.setattr(postprocess, 'detect', lambda outputs, points, *a, **kw: traces.append(points.shapes) or
                      real(outputs, points, *a, **kw))
  config = tiny_config()
  from fcos_jax.model import fcos  # pylint: disable=g-import-not-at-top
  p = predict.Predictor(config, fcos.init_variables(fcos.build_model(config.model), 0), batch_size=2)
  sizes = [(100, 150), (150, 100), (60, 61), (90, 40), (30, 70)]
  first = p.predict([picture(h, w, i) for i, (h, w) in enumerate(sizes)])
  assert len(traces) == 2
  again = p.predict([picture(*sizes[4], 4), picture(*sizes[0], 0)])
  assert len(traces) == 2  # Nothing retraced.
  np.testing.assert_array_equal(again[0].boxes, first[4].boxes)  # Results do not depend on the batch mates.
  np.testing.assert_array_equal(again[1].scores, first[0].scores)
  assert p.class_names == ['class_0', 'class_1', 'class_2'] and p.category_ids == [0, 1, 2]
  assert p.predict([]) == []


@pytest.mark.slow  # ~2 min on 2 busy cores: evaluation compiles for 8 devices.
def test_predictor_equals_the_evaluation_path(tmp_path):
  """eval_lib.Evaluator's results.json (its own tf.data pipeline, 8-way sharded batches) and the predictor on the same
  files give the same detections."""
  root = tmp_path / 'shapes'
  synthetic.generate(str(root), num_train=1, num_val=6, seed=0)
  config = tiny_config()
  config.data.root = str(root)
  config.model.num_classes = len(synthetic.CATEGORIES)
  config.data.update(dict(train_split='train', val_split='val'))
  from fcos_jax.model import fcos  # pylint: disable=g-import-not-at-top
  model = fcos.build_model(config.model)
  variables = fcos.init_variables(model, 0)
  eval_lib.Evaluator(config, model, runtime.create_mesh()).run(variables, str(tmp_path))
  evaluated = json.loads((tmp_path / 'results.json').read_text())
  gt = json.loads((root / 'annotations' / 'instances_val.json').read_text())
  p = predict.Predictor(config, variables, category_ids=[c['id'] for c in gt['categories']], batch_size=1)
  files = [str(root / 'val' / im['file_name']) for im in gt['images']]
  predicted = []
  for im, pred in zip(gt['images'], p.predict(files)):
    assert pred.image_size == (im['height'], im['width'])
    for box, score, label in zip(pred.boxes, pred.scores, pred.classes):
      xywh = np.concatenate([box[:2], box[2:] - box[:2]]).round(2).tolist()
      predicted.append({'image_id': im['id'], 'category_id': p.category_ids[label], 'bbox': xywh,
                        'score': float(score)})
  order = lambda rs: sorted(rs, key=lambda r: (r['image_id'], -r['score'], r['bbox']))  # noqa: E731
  assert len(predicted) == len(evaluated) == 6 * config.postprocess.max_detections
  for a, b in zip(order(predicted), order(evaluated)):
    assert (a['image_id'], a['category_id']) == (b['image_id'], b['category_id'])
    np.testing.assert_allclose(a['bbox'], b['bbox'], atol=0.011)
    assert a['score'] == pytest.approx(b['score'], rel=1e-5)
