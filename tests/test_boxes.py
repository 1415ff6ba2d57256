"""Box algebra against NumPy and its own identities (hypothesis)."""

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax import boxes

pytestmark = pytest.mark.fast


def test_ltrb_round_trip_and_decoding():
  rng = np.random.default_rng(0)
  pts = rng.uniform(0, 500, (50, 2)).astype(np.float32)
  ltrb = rng.uniform(0, 100, (50, 4)).astype(np.float32)
  xyxy = np.asarray(boxes.ltrb_to_xyxy(pts, ltrb))
  expected = np.concatenate([pts - ltrb[:, :2], pts + ltrb[:, 2:]], 1)
  np.testing.assert_allclose(xyxy, expected, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(boxes.xyxy_to_ltrb(pts, xyxy)), ltrb, rtol=1e-4, atol=1e-4)


def np_iou(a, b):
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      inter = iw * ih
      union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
      out[i, j] = inter / union if union > 0 else 0.0
  return out


def test_pairwise_iou_matches_numpy():
  rng = np.random.default_rng(1)
  xy = rng.uniform(0, 100, (40, 2))
  a = np.concatenate([xy, xy + rng.uniform(1, 60, (40, 2))], 1).astype(np.float32)
  b = np.concatenate([a[:10], a[:5] + 3, np.zeros((1, 4), np.float32)])
  np.testing.assert_allclose(np.asarray(boxes.pairwise_iou(a, b)), np_iou(a, b), rtol=1e-5, atol=1e-6)


side = st.floats(0.5, 200.0)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.tuples(side, side, side, side), st.tuples(side, side, side, side))
def test_ltrb_iou_giou_bounds_and_symmetry(p, t):
  p, t = np.array(p, np.float32), np.array(t, np.float32)
  iou, giou = (float(v) for v in boxes.ltrb_iou_giou(jnp.asarray(p), jnp.asarray(t), smooth=0.0, eps=1e-7))
  iou2, giou2 = (float(v) for v in boxes.ltrb_iou_giou(jnp.asarray(t), jnp.asarray(p), smooth=0.0, eps=1e-7))
  assert abs(iou - iou2) < 1e-5 and abs(giou - giou2) < 1e-5
  assert -1 - 1e-5 <= giou <= iou + 1e-6
  xyxy_p = np.array([-p[0], -p[1], p[2], p[3]])
  xyxy_t = np.array([-t[0], -t[1], t[2], t[3]])
  assert abs(iou - np_iou([xyxy_p], [xyxy_t])[0, 0]) < 1e-4


def test_smoothed_iou_of_empty_boxes_is_one():
  empty = jnp.zeros(4)
  iou, giou = boxes.ltrb_iou_giou(empty, empty)  # (0 + 1) / (0 + 1), where the plain IoU is 0 / 0.
  assert float(iou) == 1.0 and float(giou) == 0.0  # Enclosing area is eps, penalty (eps - 0) / eps = 1.
