"""Box algebra: xyxy <-> ltrb distances, areas, IoU and GIoU.

Boxes are float xyxy in pixels; `ltrb` are the distances (left, top, right, bottom) from a point to the box sides.
"""

import jax.numpy as jnp


def ltrb_to_xyxy(points, ltrb):
  """Boxes around `points` [..., 2] (x, y) at distances `ltrb` [..., 4] -> xyxy [..., 4]."""
  x, y = points[..., 0], points[..., 1]
  return jnp.stack([x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2], y + ltrb[..., 3]], axis=-1)


def xyxy_to_ltrb(points, boxes):
  """Distances from `points` [..., 2] to the sides of `boxes` [..., 4]; negative when the point is outside."""
  x, y = points[..., 0], points[..., 1]
  return jnp.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], axis=-1)


def area(boxes):
  """Area w * h of xyxy `boxes` [..., 4] (no +1); zero for degenerate boxes."""
  return jnp.maximum(boxes[..., 2] - boxes[..., 0], 0) * jnp.maximum(boxes[..., 3] - boxes[..., 1], 0)


def clip(boxes, hw):
  """Clip xyxy `boxes` [..., 4] into [0, w] x [0, h]; `hw` [..., 2] (h, w) broadcasts against their leading dims."""
  h, w = hw[..., 0:1], hw[..., 1:2]
  upper = jnp.concatenate([w, h, w, h], axis=-1)
  return jnp.clip(boxes, 0, upper)


def pairwise_iou(a, b):
  """IoU of every box in `a` [N, 4] with every box in `b` [M, 4] -> [N, M]; 0 where the union is empty."""
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0)
  inter = wh[..., 0] * wh[..., 1]
  union = area(a)[:, None] + area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def ltrb_iou_giou(pred, target, smooth=1.0, eps=1e-7):
  """IoU and GIoU of two boxes around the same point, given as ltrb distances [..., 4].

  The IoU is smoothed as (inter + smooth) / (union + smooth) and the enclosing area gets + eps, as in
  PaddleDetection's FCOS loss; smooth=0 gives the plain IoU. Returns (iou, giou), each [...].
  """
  area_pred = (pred[..., 0] + pred[..., 2]) * (pred[..., 1] + pred[..., 3])
  area_target = (target[..., 0] + target[..., 2]) * (target[..., 1] + target[..., 3])
  inner = jnp.minimum(pred, target)
  outer = jnp.maximum(pred, target)
  inter = (inner[..., 0] + inner[..., 2]) * (inner[..., 1] + inner[..., 3])
  union = area_pred + area_target - inter
  iou = (inter + smooth) / (union + smooth)
  enclosing = (outer[..., 0] + outer[..., 2]) * (outer[..., 1] + outer[..., 3]) + eps
  giou = iou - (enclosing - union) / enclosing
  return iou, giou
