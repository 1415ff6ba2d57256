"""FCOS target assignment: which ground-truth box each point learns from, on the device, with static shapes.

`assign` handles one image with its ground truth padded to G slots (`valid` masks the real ones) and is meant to
be vmapped over the batch (`assign_batch`). Semantics follow PaddleDetection's Gt2FCOSTarget (docs/algorithm.md):
a point is a candidate for a box if it lies inside the box clipped to `center_radius` strides around the box
centre and max(l, t, r, b) falls in the point's level range; among candidates the smallest area wins (the lowest
slot index on ties). Nothing here is a Python loop over points or boxes.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fcos_jax import boxes as box_ops


class Targets(NamedTuple):
  """Per-point targets: `labels` [..., P] (-1 background), `reg` [..., P, 4] (l, t, r, b) / stride,
  `centerness` [..., P] (0 for background), `positive` [..., P] bool, `gt_index` [..., P] (-1 background)."""
  labels: jax.Array
  reg: jax.Array
  centerness: jax.Array
  positive: jax.Array
  gt_index: jax.Array


def candidates(points, strides, size_ranges, boxes, valid, center_radius=1.5, inclusive_bounds=False):
  """Which (point, box) pairs may match, and their unclipped distances.

  points [P, 2], strides [P], size_ranges [P, 2], boxes [G, 4], valid [G] ->
  (inside [P, G] centre-sampling test, in_range [P, G] level-range test, ltrb [P, G, 4]).
  """
  ltrb = box_ops.xyxy_to_ltrb(points[:, None, :], boxes[None, :, :])
  if center_radius > 0:
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    r = center_radius * strides[:, None, None]
    clipped = jnp.concatenate([jnp.maximum(boxes[None, :, :2], centre - r),
                               jnp.minimum(boxes[None, :, 2:], centre + r)], axis=-1)
    inside = jnp.min(box_ops.xyxy_to_ltrb(points[:, None, :], clipped), axis=-1) > 0
  else:
    inside = jnp.min(ltrb, axis=-1) > 0
  extent = jnp.max(ltrb, axis=-1)
  lower, upper = size_ranges[:, 0:1], size_ranges[:, 1:2]
  if inclusive_bounds:
    in_range = (extent >= lower) & (extent <= upper)
  else:
    in_range = (extent > lower) & (extent < upper)
  return inside & valid[None, :], in_range & valid[None, :], ltrb


def centerness_target(ltrb):
  """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for positive distances [..., 4] -> [...]."""
  lr, tb = ltrb[..., 0::2], ltrb[..., 1::2]
  ratio = (jnp.min(lr, -1) / jnp.max(lr, -1)) * (jnp.min(tb, -1) / jnp.max(tb, -1))
  return jnp.sqrt(ratio)


def assign(points, strides, size_ranges, boxes, labels, valid, center_radius=1.5, inclusive_bounds=False):
  """Targets of one image. points [P, 2], strides [P], size_ranges [P, 2], boxes [G, 4] xyxy, labels [G],
  valid [G] -> `Targets` with leading shape [P]. An image without valid boxes is all background."""
  inside, in_range, ltrb = candidates(points, strides, size_ranges, boxes, valid, center_radius, inclusive_bounds)
  match = inside & in_range
  cost = jnp.where(match, box_ops.area(boxes)[None, :], jnp.inf)
  best = jnp.argmin(cost, axis=1)
  positive = jnp.any(match, axis=1)
  matched = jnp.take_along_axis(ltrb, best[:, None, None], axis=1)[:, 0]
  matched = jnp.where(positive[:, None], matched, 1.0)  # Background: harmless values, masked below.
  return Targets(
      labels=jnp.where(positive, labels[best], -1).astype(jnp.int32),
      reg=jnp.where(positive[:, None], matched / strides[:, None], 0.0),
      centerness=jnp.where(positive, centerness_target(matched), 0.0),
      positive=positive,
      gt_index=jnp.where(positive, best, -1).astype(jnp.int32))


def assign_batch(points, boxes, labels, valid, assign_config, inside=None):
  """`assign` vmapped over a batch: `points` a `locations.Points`, boxes [B, G, 4], labels [B, G], valid [B, G].

  `inside` [B, P] bool (`locations.inside_extent`): points beyond each image's extent are background, as on a
  canvas of exactly the extent, where they do not exist (only a box reaching beyond the image could match them).
  """
  def one(b, l, v):
    return assign(jnp.asarray(points.xy), jnp.asarray(points.stride), jnp.asarray(points.size_range), b, l, v,
                  assign_config.center_radius, assign_config.inclusive_bounds)
  tg = jax.vmap(one)(boxes, labels, valid)
  if inside is None:
    return tg
  positive = tg.positive & inside
  return Targets(labels=jnp.where(positive, tg.labels, -1), reg=jnp.where(positive[..., None], tg.reg, 0.0),
                 centerness=jnp.where(positive, tg.centerness, 0.0), positive=positive,
                 gt_index=jnp.where(positive, tg.gt_index, -1))
