"""Target assignment against a loop-by-loop NumPy re-derivation of the rule (docs/algorithm.md), edge cases and
properties."""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax import locations, targets

pytestmark = pytest.mark.fast

CANVAS = (256, 384)
STRIDES = (8, 16, 32, 64, 128)
BOUNDS = (64.0, 128.0, 256.0, 512.0)


def reference_assign(points, boxes, labels, valid, radius=1.5, inclusive=False):
  """The target assignment, one point and one box at a time, in float32 scalars like Paddle."""
  f = np.float32
  n = len(points.xy)
  out_labels = np.full(n, -1, np.int64)
  out_reg = np.zeros((n, 4), np.float32)
  out_ctr = np.zeros(n, np.float32)
  out_idx = np.full(n, -1, np.int64)
  for p in range(n):
    x, y = f(points.xy[p, 0]), f(points.xy[p, 1])
    s = f(points.stride[p])
    lower, upper = points.size_range[p]
    best, best_area = -1, math.inf
    for g in range(len(boxes)):
      if not valid[g]:
        continue
      x1, y1, x2, y2 = (f(v) for v in boxes[g])
      l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
      if radius > 0:
        cx, cy = (x1 + x2) / f(2), (y1 + y2) / f(2)
        rs = f(radius) * s
        cl, ct = max(x1, cx - rs), max(y1, cy - rs)
        cr, cb = min(x2, cx + rs), min(y2, cy + rs)
        inside = min(x - cl, y - ct, cr - x, cb - y) > 0
      else:
        inside = min(l, t, r, b) > 0
      m = max(l, t, r, b)
      in_range = lower <= m <= upper if inclusive else lower < m < upper
      if inside and in_range:
        area = (x2 - x1) * (y2 - y1)
        if area < best_area:  # Strict: the first slot wins ties.
          best, best_area = g, area
    if best >= 0:
      x1, y1, x2, y2 = (f(v) for v in boxes[best])
      l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
      out_labels[p], out_idx[p] = labels[best], best
      out_reg[p] = np.array([l, t, r, b]) / s
      out_ctr[p] = math.sqrt((min(l, r) / max(l, r)) * (min(t, b) / max(t, b)))
  return out_labels, out_reg, out_ctr, out_idx


def run_assign(points, boxes, labels, valid, radius=1.5, inclusive=False):
  fn = jax.jit(targets.assign, static_argnums=(6, 7))
  return fn(points.xy, points.stride, points.size_range, jnp.asarray(boxes, jnp.float32),
            jnp.asarray(labels, jnp.int32), jnp.asarray(valid), radius, inclusive)


def assert_matches_reference(points, boxes, labels, valid, radius=1.5, inclusive=False):
  got = run_assign(points, boxes, labels, valid, radius, inclusive)
  ref_labels, ref_reg, ref_ctr, ref_idx = reference_assign(points, boxes, labels, valid, radius, inclusive)
  np.testing.assert_array_equal(np.asarray(got.labels), ref_labels)
  np.testing.assert_array_equal(np.asarray(got.gt_index), ref_idx)
  np.testing.assert_array_equal(np.asarray(got.positive), ref_idx >= 0)
  np.testing.assert_allclose(np.asarray(got.reg), ref_reg, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got.centerness), ref_ctr, rtol=1e-5, atol=1e-6)
  return got


def random_boxes(rng, n, canvas=CANVAS, max_side=300):
  h, w = canvas
  wh = np.exp(rng.uniform(np.log(2), np.log(max_side), (n, 2)))
  x1 = rng.uniform(-20, w, n)
  y1 = rng.uniform(-20, h, n)
  boxes = np.stack([x1, y1, np.minimum(x1 + wh[:, 0], w), np.minimum(y1 + wh[:, 1], h)], 1)
  boxes[:, :2] = np.maximum(boxes[:, :2], 0)
  return boxes.astype(np.float32)


@pytest.fixture(scope='module')
def points():
  return locations.make_points(CANVAS, STRIDES, BOUNDS)


@pytest.mark.parametrize('seed,num_boxes', [(0, 0), (1, 1), (2, 7), (3, 30), (4, 100)])
@pytest.mark.parametrize('inclusive', [False, True])
def test_random_images_match_reference(points, seed, num_boxes, inclusive):
  rng = np.random.default_rng(seed)
  g = 100
  boxes = np.zeros((g, 4), np.float32)
  boxes[:num_boxes] = random_boxes(rng, num_boxes)
  labels = np.full(g, -1)
  labels[:num_boxes] = rng.integers(0, 80, num_boxes)
  valid = np.arange(g) < num_boxes
  got = assert_matches_reference(points, boxes, labels, valid, inclusive=inclusive)
  if num_boxes >= 7:
    assert int(got.positive.sum()) > 0


def test_no_center_sampling_and_other_radius(points):
  rng = np.random.default_rng(5)
  boxes = random_boxes(rng, 12)
  labels, valid = rng.integers(0, 5, 12), np.ones(12, bool)
  assert_matches_reference(points, boxes, labels, valid, radius=0.0)
  assert_matches_reference(points, boxes, labels, valid, radius=2.5)


def test_torchvision_point_offset_matches_reference():
  pts = locations.make_points(CANVAS, STRIDES, BOUNDS, offset=0.0)
  assert pts.xy[0].tolist() == [0.0, 0.0]
  rng = np.random.default_rng(6)
  boxes = random_boxes(rng, 20)
  assert_matches_reference(pts, boxes, rng.integers(0, 5, 20), np.ones(20, bool))


def level_point(points, level, x, y):
  return int(np.flatnonzero((points.level == level) & (points.xy[:, 0] == x) & (points.xy[:, 1] == y))[0])


@pytest.mark.parametrize('bound', [64, 128])
def test_extent_exactly_on_a_level_bound(points, bound):
  # A box centred on a point of the level below `bound`, extending exactly `bound` left and right.
  level = BOUNDS.index(bound)
  stride = STRIDES[level]
  x = y = (4 + 0.5) * stride if bound == 64 else (2 + 0.5) * stride
  box = np.array([[x - bound, y - 10, x + bound, y + 10]], np.float32)
  p = level_point(points, level, x, y)
  strict = assert_matches_reference(points, box, [3], [True], inclusive=False)
  inclusive = assert_matches_reference(points, box, [3], [True], inclusive=True)
  assert not strict.positive[p]  # 64 < 64 fails: Paddle's strict bound.
  assert inclusive.positive[p] and int(inclusive.labels[p]) == 3


def test_equal_areas_lowest_slot_wins(points):
  # Two different boxes of the same area covering the same centre: slot 0 wins wherever both match.
  boxes = np.array([[100, 80, 160, 120], [110, 70, 150, 130]], np.float32)  # 60x40 and 40x60.
  got = assert_matches_reference(points, boxes, [1, 2], [True, True])
  both = np.asarray(got.positive)
  assert both.any() and set(np.asarray(got.gt_index)[both].tolist()) == {0}


def test_smaller_box_wins_overlap(points):
  boxes = np.array([[40, 40, 240, 200], [100, 100, 140, 140]], np.float32)
  got = assert_matches_reference(points, boxes, [0, 1], [True, True])
  centre = level_point(points, 0, 116.0, 116.0)
  assert int(got.gt_index[centre]) == 1


def test_box_smaller_than_stride_and_degenerate_boxes(points):
  boxes = np.array([[9, 9, 11, 11], [50, 50, 50, 80], [60, 60, 55, 70], [130, 130, 133, 131]], np.float32)
  got = assert_matches_reference(points, boxes, [0, 1, 2, 3], [True] * 4)
  assert not np.asarray(got.positive)[np.asarray(got.gt_index) == 1].any()  # Zero width: never positive.
  assert not np.isin(np.asarray(got.gt_index), [1, 2]).any()


def test_boxes_touching_the_canvas_border(points):
  h, w = CANVAS
  boxes = np.array([[0, 0, 40, 30], [w - 50, h - 60, w, h], [0, 100, w, 180]], np.float32)
  got = assert_matches_reference(points, boxes, [0, 1, 2], [True] * 3)
  assert set(np.unique(np.asarray(got.gt_index))) == {-1, 0, 1, 2}


def test_padded_garbage_slots_are_ignored(points):
  rng = np.random.default_rng(7)
  real = random_boxes(rng, 5)
  garbage = np.array([[1e6, -1e6, np.nan, 3], [0, 0, 500, 500], [np.inf, 0, -np.inf, 1]], np.float32)
  boxes = np.concatenate([real, garbage])
  labels = np.array([0, 1, 2, 3, 4, 77, 78, 79])
  valid = np.arange(8) < 5
  padded = run_assign(points, boxes, labels, valid)
  clean = run_assign(points, real, labels[:5], np.ones(5, bool))
  for a, b in zip(padded, clean):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_boxes_is_all_background_and_finite(points):
  got = run_assign(points, np.zeros((4, 4), np.float32), [-1] * 4, [False] * 4)
  assert not np.asarray(got.positive).any()
  assert (np.asarray(got.labels) == -1).all() and (np.asarray(got.gt_index) == -1).all()
  assert np.isfinite(np.asarray(got.reg)).all() and np.isfinite(np.asarray(got.centerness)).all()


def test_assign_batch_is_vmapped_assign(points):
  from fcos_jax.config import get_config
  cfg = get_config().assign
  rng = np.random.default_rng(8)
  boxes = np.stack([random_boxes(rng, 6), random_boxes(rng, 6)])
  labels = rng.integers(0, 9, (2, 6))
  valid = np.array([[True] * 6, [True] * 3 + [False] * 3])
  batch = jax.jit(lambda b, l, v: targets.assign_batch(points, b, l, v, cfg))(boxes, labels, valid)
  for i in range(2):
    single = run_assign(points, boxes[i], labels[i], valid[i])
    for a, b in zip(batch, single):
      np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b))


box_strategy = st.tuples(st.floats(0, 380), st.floats(0, 250), st.floats(1, 300), st.floats(1, 250))


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.lists(box_strategy, min_size=1, max_size=12), st.booleans())
def test_positives_lie_in_their_box_region_and_level_range(raw, inclusive):
  pts = locations.make_points(CANVAS, STRIDES, BOUNDS)
  boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in raw], np.float32)
  got = run_assign(pts, boxes, np.arange(len(boxes)), np.ones(len(boxes), bool), 1.5, inclusive)
  pos = np.asarray(got.positive)
  idx = np.asarray(got.gt_index)[pos]
  xy, stride, rng_ = pts.xy[pos], pts.stride[pos], pts.size_range[pos]
  b = boxes[idx]
  centre = (b[:, :2] + b[:, 2:]) / 2
  r = 1.5 * stride[:, None]
  assert (np.abs(xy - centre) < r + 1e-3).all()
  assert ((xy > b[:, :2]) & (xy < b[:, 2:])).all()
  reg = np.asarray(got.reg)[pos]
  assert (reg > 0).all()
  extent = reg.max(1) * stride
  assert ((extent >= rng_[:, 0] - 1e-3) & (extent <= rng_[:, 1] + 1e-3)).all()
  ctr = np.asarray(got.centerness)[pos]
  assert ((ctr > 0) & (ctr <= 1)).all()
  np.testing.assert_array_equal(np.asarray(got.labels)[pos], idx)
