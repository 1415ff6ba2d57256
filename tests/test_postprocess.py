"""Decoding, greedy NMS and both candidate rules against loop-by-loop NumPy re-derivations of the rules
in docs/algorithm.md."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax.config import get_config
from fcos_jax import boxes, locations, postprocess

pytestmark = pytest.mark.fast

CANVAS = (64, 96)  # P = 8*12 + 4*6 + 2*3 + 1*2 + 1*1 = 129 points.
STRIDES = (8, 16, 32, 64, 128)
BOUNDS = (64.0, 128.0, 256.0, 512.0)
POINTS = locations.make_points(CANVAS, STRIDES, BOUNDS)


def np_iou(a, b):
  """IoU of one xyxy box `a` [4] with each of `b` [M, 4] in float32, the formula of boxes.pairwise_iou."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32).reshape(-1, 4)
  iw = np.maximum(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), np.float32(0))
  ih = np.maximum(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), np.float32(0))
  inter = iw * ih
  area_a = max(a[2] - a[0], np.float32(0)) * max(a[3] - a[1], np.float32(0))
  area_b = np.maximum(b[:, 2] - b[:, 0], np.float32(0)) * np.maximum(b[:, 3] - b[:, 1], np.float32(0))
  union = area_a + area_b - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), np.float32(0))


def np_greedy(boxes_, scores, valid, classes, thr, max_out):
  """Classic greedy NMS: visit by descending score (stable: lower index first), keep unless a kept box overlaps."""
  kept = []
  for i in np.argsort(-scores, kind='stable'):
    if not valid[i]:
      continue
    same = [j for j in kept if classes[j] == classes[i]]
    if not same or np.all(np_iou(boxes_[i], boxes_[same]) <= thr):
      kept.append(i)
    if len(kept) == max_out:
      break
  return kept


def random_outputs(rng, batch, num_classes, cls_mean=-2.0):
  p = len(POINTS.xy)
  return {'cls_logits': rng.normal(cls_mean, 1.5, (batch, p, num_classes)).astype(np.float32),
          'reg': rng.uniform(0.2, 3.0, (batch, p, 4)).astype(np.float32),
          'ctr_logits': rng.normal(0.0, 1.0, (batch, p)).astype(np.float32)}


def np_scores_boxes(outputs, i):
  sig = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))
  scores = (sig(outputs['cls_logits'][i]) * sig(outputs['ctr_logits'][i])[:, None]).astype(np.float32)
  s = POINTS.stride[:, None]
  reg = outputs['reg'][i]
  decoded = np.concatenate([POINTS.xy - reg[:, :2] * s, POINTS.xy + reg[:, 2:] * s], axis=1)
  return scores, decoded


def np_paddle(scores, decoded, cfg):
  """Paddle's NMS: per class score > thr, top k, greedy NMS in the class; then the top K over all classes."""
  found = []
  for c in range(scores.shape[1]):
    idx = np.nonzero(scores[:, c] > cfg.score_threshold)[0]
    idx = idx[np.argsort(-scores[idx, c], kind='stable')][:cfg.pre_nms_top_k]
    keep = np_greedy(decoded[idx], scores[idx, c], np.ones(len(idx), bool), np.zeros(len(idx)), cfg.nms_iou,
                     len(idx))
    found += [(scores[idx[k], c], c, decoded[idx[k]]) for k in keep]
  found.sort(key=lambda f: -f[0])
  return found[:cfg.max_detections]


def np_fast(scores, decoded, cfg):
  """Per level the top k (point, class) pairs with score > thr, class-aware greedy NMS over all, first K."""
  c = scores.shape[1]
  cand, start = [], 0
  for h, w in POINTS.shapes:
    flat = scores[start:start + h * w].reshape(-1)
    for i in np.argsort(-flat, kind='stable')[:cfg.pre_nms_top_k]:
      if flat[i] > cfg.score_threshold:
        cand.append((flat[i], i % c, start + i // c))
    start += h * w
  s = np.array([f[0] for f in cand], np.float32)
  cls = np.array([f[1] for f in cand])
  b = decoded[[f[2] for f in cand]]
  keep = np_greedy(b, s, np.ones(len(s), bool), cls, cfg.nms_iou, cfg.max_detections)
  return [(s[k], cls[k], b[k]) for k in keep]


def postprocess_config(**overrides):
  cfg = get_config().postprocess
  cfg.update(overrides)
  return cfg


def check_against(result, i, expected, k):
  """Image i of `result` holds `expected` (score, class, box) in order, then empty slots."""
  n = len(expected)
  valid = np.asarray(result['valid'][i])
  assert valid.tolist() == [True] * n + [False] * (k - n)
  np.testing.assert_allclose(np.asarray(result['scores'][i, :n]), [f[0] for f in expected], rtol=1e-5)
  assert np.asarray(result['classes'][i, :n]).tolist() == [int(f[1]) for f in expected]
  np.testing.assert_allclose(np.asarray(result['boxes'][i, :n]), np.array([f[2] for f in expected]).reshape(n, 4),
                             rtol=1e-5, atol=1e-4)
  assert np.all(np.diff(np.asarray(result['scores'][i, :n])) <= 0)
  assert np.all(np.asarray(result['scores'][i, n:]) == 0) and np.all(np.asarray(result['boxes'][i, n:]) == 0)
  assert np.all(np.asarray(result['classes'][i, n:]) == -1)


def run_detect(outputs, cfg, image_size=None):
  fn = jax.jit(functools.partial(postprocess.detect, points=POINTS, cfg=cfg))
  return fn({k: jnp.asarray(v) for k, v in outputs.items()}, image_size=image_size)


def clustered_boxes(rng, n, num_clusters=12):
  centres = rng.uniform(20, 200, (num_clusters, 2))[rng.integers(0, num_clusters, n)]
  xy = centres + rng.normal(0, 6, (n, 2))
  wh = rng.uniform(10, 40, (n, 2))
  return np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)


@pytest.mark.parametrize('seed', range(4))
def test_greedy_nms_matches_numpy_with_ties_and_duplicates(seed):
  rng = np.random.default_rng(seed)
  n, max_out = 300, 40
  b = clustered_boxes(rng, n)
  b[100:120] = b[0:20]  # Identical boxes...
  scores = (rng.integers(0, 25, n) / 25).astype(np.float32)  # ...and many exact score ties.
  scores[100:110] = scores[0:10]
  classes = rng.integers(0, 3, n).astype(np.int32)
  valid = scores > 0.2
  nms = jax.jit(functools.partial(postprocess.greedy_nms, iou_threshold=0.5, max_output=max_out))
  keep, kept = nms(b, scores, valid, classes)
  expected = np_greedy(b, scores, valid, classes, 0.5, max_out)
  assert len(expected) == max_out  # More survivors than slots: the first max_out are returned.
  assert np.asarray(kept).all() and np.asarray(keep).tolist() == expected


def test_greedy_nms_fewer_survivors_than_slots_and_none_valid():
  rng = np.random.default_rng(5)
  b = clustered_boxes(rng, 60, num_clusters=3)
  scores = rng.uniform(0, 1, 60).astype(np.float32)
  classes = np.zeros(60, np.int32)
  nms = jax.jit(functools.partial(postprocess.greedy_nms, iou_threshold=0.3, max_output=50))
  keep, kept = nms(b, scores, np.ones(60, bool), classes)
  expected = np_greedy(b, scores, np.ones(60, bool), classes, 0.3, 50)
  assert len(expected) < 50
  assert np.asarray(kept).tolist() == [True] * len(expected) + [False] * (50 - len(expected))
  assert np.asarray(keep)[:len(expected)].tolist() == expected
  _, kept = nms(b, scores, np.zeros(60, bool), classes)
  assert not np.asarray(kept).any()


def test_decode_boxes_scales_ltrb_by_stride_around_points():
  rng = np.random.default_rng(0)
  reg = rng.uniform(0, 5, (2, len(POINTS.xy), 4)).astype(np.float32)
  got = np.asarray(postprocess.decode_boxes(jnp.asarray(reg), POINTS))
  x, y, s = POINTS.xy[:, 0], POINTS.xy[:, 1], POINTS.stride
  expected = np.stack([x - reg[..., 0] * s, y - reg[..., 1] * s, x + reg[..., 2] * s, y + reg[..., 3] * s], -1)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize('method', ['fast', 'paddle'])
def test_single_hot_point_gives_its_box(method):
  p, c = len(POINTS.xy), 7
  outputs = {'cls_logits': np.full((1, p, c), -20.0, np.float32), 'reg': np.ones((1, p, 4), np.float32),
             'ctr_logits': np.zeros((1, p), np.float32)}
  point = 100  # A P4 point: stride 16.
  outputs['cls_logits'][0, point, 3] = 5.0
  outputs['reg'][0, point] = [0.5, 1.0, 1.5, 2.0]
  result = run_detect(outputs, postprocess_config(method=method))
  x, y = POINTS.xy[point]
  assert POINTS.stride[point] == 16
  check_against(result, 0, [(0.5 / (1 + np.exp(-5.0)), 3, [x - 8, y - 16, x + 24, y + 32])], 100)


@pytest.mark.parametrize('overrides', [dict(pre_nms_top_k=10, max_detections=80, score_threshold=0.05, nms_iou=0.5),
                                       dict(max_detections=50)])
def test_paddle_matches_per_class_numpy(overrides):
  rng = np.random.default_rng(1)
  cfg = postprocess_config(method='paddle', **overrides)
  outputs = random_outputs(rng, 2, 6)
  result = run_detect(outputs, cfg)
  for i in range(2):
    expected = np_paddle(*np_scores_boxes(outputs, i), cfg)
    untruncated = np_paddle(*np_scores_boxes(outputs, i), postprocess_config(**{**cfg, 'pre_nms_top_k': 10**6}))
    assert len(expected) == cfg.max_detections or len(expected) < len(untruncated)  # Top K or top k/class bites.
    check_against(result, i, expected, cfg.max_detections)


@pytest.mark.parametrize('overrides', [dict(pre_nms_top_k=15, max_detections=40, score_threshold=0.05, nms_iou=0.5),
                                       dict(max_detections=300)])
def test_fast_matches_per_level_numpy(overrides):
  rng = np.random.default_rng(2)
  cfg = postprocess_config(method='fast', **overrides)
  outputs = random_outputs(rng, 2, 8)
  result = run_detect(outputs, cfg)
  for i in range(2):
    expected = np_fast(*np_scores_boxes(outputs, i), cfg)
    check_against(result, i, expected, cfg.max_detections)


@pytest.mark.parametrize('method', ['fast', 'paddle'])
def test_all_below_threshold_gives_no_detection(method):
  outputs = random_outputs(np.random.default_rng(3), 2, 5, cls_mean=-12.0)
  result = run_detect(outputs, postprocess_config(method=method))
  assert not np.asarray(result['valid']).any()
  assert np.all(np.asarray(result['classes']) == -1) and np.all(np.asarray(result['boxes']) == 0)


def test_score_sqrt_keeps_order_and_boxes():
  outputs = random_outputs(np.random.default_rng(4), 1, 5)
  plain = run_detect(outputs, postprocess_config(score_threshold=0.0))
  rooted = run_detect(outputs, postprocess_config(score_threshold=0.0, score_sqrt=True))
  np.testing.assert_allclose(np.asarray(rooted['scores']), np.sqrt(np.asarray(plain['scores'])), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(rooted['boxes']), np.asarray(plain['boxes']))


def test_clip_boxes_to_image_size():
  outputs = random_outputs(np.random.default_rng(5), 2, 5)
  outputs['reg'] *= 4  # Boxes well past the image borders.
  image_size = np.array([[50, 70], [64, 96]], np.float32)
  with pytest.raises(ValueError, match='image_size'):
    run_detect(outputs, postprocess_config(clip_boxes=True))
  result = run_detect(outputs, postprocess_config(clip_boxes=True), image_size=image_size)
  b = np.asarray(result['boxes'])
  assert np.asarray(result['valid']).sum() > 20 and b.min() >= 0
  assert np.all(b[..., [0, 2]] <= image_size[:, None, 1:2]) and np.all(b[..., [1, 3]] <= image_size[:, None, 0:1])
  np.testing.assert_array_equal(np.asarray(boxes.clip(jnp.array([-5., 2., 90., 40.]), jnp.array([30., 80.]))),
                                [0, 2, 80, 30])


@pytest.mark.parametrize('method', ['fast', 'paddle'])
def test_one_trace_per_input_shape(method):
  cfg = postprocess_config(method=method)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=2)
  def run(outputs):
    return postprocess.detect(outputs, POINTS, cfg)

  rng = np.random.default_rng(6)
  for batch in (2, 2, 3, 3, 2):
    result = run(random_outputs(rng, batch, 4))
    assert result['boxes'].shape == (batch, cfg.max_detections, 4) and result['boxes'].dtype == jnp.float32
    assert result['classes'].dtype == jnp.int32 and result['valid'].dtype == jnp.bool_


def test_paddle_rule_suppresses_touching_zero_area_boxes():
  # Paddle: overlap 0 / 0 = NaN is not <= threshold, so a touching zero-area box is suppressed; disjoint ones stay.
  kept = jnp.array([69.5, 28.0, 99.2, 28.0])
  others = jnp.array([[92.38, 28.0, 120.55, 28.0], [99.2, 28.0, 130.0, 28.0], [99.3, 28.0, 130.0, 28.0],
                      [80.0, 10.0, 90.0, 50.0]])
  paddle = postprocess.suppresses(kept, others, 0.6, empty_overlap_suppresses=True)
  plain = postprocess.suppresses(kept, others, 0.6)
  assert paddle.tolist() == [True, True, False, False]
  assert plain.tolist() == [False, False, False, False]
