"""Post-processing: per-point outputs -> scores and boxes -> candidates -> greedy NMS -> K detections per image.

Two candidate rules (`config.postprocess.method`):
  'fast'    per FPN level, the top `pre_nms_top_k` (point, class) pairs (original FCOS, mmdet, torchvision);
  'paddle'  per class, the top `pre_nms_top_k` points (PaddleDetection's MultiClassNMS, exact).
Both keep candidates with score > `score_threshold`, then run one class-aware greedy NMS and return its first K
survivors. For 'paddle' this equals NMS within each class followed by the top K over all classes: suppression never
crosses classes, so each class keeps the same boxes, and greedy NMS emits survivors in descending score order.

Greedy NMS needs only the first K survivors, so instead of an [N, N] IoU matrix it loops at most K times: keep the
best remaining candidate, drop the remaining ones it overlaps. The best remaining candidate can never be suppressed
by a later one, so this is exactly classic greedy NMS, in O(K N) time and O(N) memory, on the device.

Score ties go to the lower candidate index, which is (point, class) order for 'fast' and (class, point) order for
'paddle' (Paddle's stable sorts do the same). Shapes are static; everything jits and vmaps over the batch.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from fcos_jax import boxes as box_ops


def decode_boxes(reg, points):
  """Stride-normalised (l, t, r, b) `reg` [..., P, 4] -> xyxy boxes [..., P, 4] in canvas pixels around the points."""
  return box_ops.ltrb_to_xyxy(points.xy, reg.astype(jnp.float32) * points.stride[:, None])


def point_scores(cls_logits, ctr_logits, sqrt=False):
  """Detection scores [..., P, C] = sigmoid(cls) * sigmoid(ctr), or its square root (original FCOS, torchvision)."""
  scores = jax.nn.sigmoid(cls_logits.astype(jnp.float32)) * jax.nn.sigmoid(ctr_logits.astype(jnp.float32))[..., None]
  return jnp.sqrt(scores) if sqrt else scores


def suppresses(box, boxes, iou_threshold, empty_overlap_suppresses=False):
  """Whether `box` [4] suppresses each of `boxes` [N, 4]: IoU > threshold.

  `empty_overlap_suppresses`: Paddle's rule for a pair with an empty union that is not disjoint (two touching
  zero-area boxes, which ReLU'd regression produces): its overlap is 0 / 0 = NaN, and Paddle keeps a box only if
  overlap <= threshold, so it is suppressed. Disjoint means strictly apart, as Paddle tests it.
  """
  iou = box_ops.pairwise_iou(box[None], boxes)[0]
  out = iou > iou_threshold
  if empty_overlap_suppresses:
    disjoint = ((boxes[:, 0] > box[2]) | (boxes[:, 2] < box[0]) | (boxes[:, 1] > box[3]) | (boxes[:, 3] < box[1]))
    empty_union = (box_ops.area(box) <= 0) & (box_ops.area(boxes) <= 0)  # Areas are >= 0.
    out = out | (~disjoint & empty_union)
  return out


def greedy_nms(boxes, scores, valid, classes, iou_threshold, max_output, empty_overlap_suppresses=False):
  """Class-aware greedy NMS over candidates `boxes` [N, 4], `scores` [N] (finite), `valid` [N], `classes` [N].

  A candidate is kept unless a kept candidate of the same class suppresses it (`suppresses`); candidates are
  visited by descending score, ties by lower index. Returns the first `max_output` survivors as indices
  `keep` [max_output] int32 in that order and `kept` [max_output] bool (False past the last survivor, index 0).
  """
  n = scores.shape[0]

  def cond(state):
    count, alive, _ = state
    return (count < max_output) & jnp.any(alive)

  def body(state):
    count, alive, keep = state
    best = jnp.argmax(jnp.where(alive, scores, -jnp.inf))
    overlap = suppresses(boxes[best], boxes, iou_threshold, empty_overlap_suppresses)
    alive = alive & ~(overlap & (classes == classes[best])) & (jnp.arange(n) != best)
    return count + 1, alive, keep.at[count].set(best.astype(jnp.int32))

  init = (jnp.int32(0), valid, jnp.zeros(max_output, jnp.int32))
  count, _, keep = lax.while_loop(cond, body, init)
  return keep, jnp.arange(max_output) < count


def fast_candidates(scores, points, top_k):
  """Per level, the top `top_k` (point, class) pairs of `scores` [P, C] -> scores, point and class indices [N]."""
  num_classes = scores.shape[1]
  cand_scores, cand_flat, start = [], [], 0
  for h, w in points.shapes:
    size = h * w
    level_scores, index = lax.top_k(scores[start:start + size].reshape(-1), min(top_k, size * num_classes))
    cand_scores.append(level_scores)
    cand_flat.append(index + start * num_classes)
    start += size
  flat = jnp.concatenate(cand_flat)
  return jnp.concatenate(cand_scores), flat // num_classes, flat % num_classes


def paddle_candidates(scores, top_k):
  """Per class, the top `top_k` points of `scores` [P, C] -> scores, point and class indices [N], class-major."""
  num_points, num_classes = scores.shape
  cand_scores, point = lax.top_k(scores.T, min(top_k, num_points))
  classes = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32)[:, None], point.shape)
  return cand_scores.reshape(-1), point.reshape(-1), classes.reshape(-1)


def detect_one(scores, boxes, image_hw, points, cfg):
  """Detections of one image from `scores` [P, C] and decoded `boxes` [P, 4], clipped to `image_hw` (h, w) unless None.

  Returns `boxes` [K, 4], `scores` [K], `classes` [K] int32, `valid` [K]; empty slots hold zeros and class -1.
  """
  if image_hw is not None:
    boxes = box_ops.clip(boxes, image_hw)
  if cfg.method == 'fast':
    cand_scores, point, classes = fast_candidates(scores, points, cfg.pre_nms_top_k)
  else:  # 'paddle'
    cand_scores, point, classes = paddle_candidates(scores, cfg.pre_nms_top_k)
  cand_boxes = boxes[point]
  k = cfg.max_detections
  keep, kept = greedy_nms(cand_boxes, cand_scores, cand_scores > cfg.score_threshold, classes, cfg.nms_iou,
                          min(k, cand_scores.shape[0]), empty_overlap_suppresses=cfg.method == 'paddle')
  pad = k - keep.shape[0]
  keep, kept = jnp.pad(keep, (0, pad)), jnp.pad(kept, (0, pad))
  return {'boxes': jnp.where(kept[:, None], cand_boxes[keep], 0.0),
          'scores': jnp.where(kept, cand_scores[keep], 0.0),
          'classes': jnp.where(kept, classes[keep], -1).astype(jnp.int32),
          'valid': kept}


def detect(outputs, points, cfg, image_size=None, inside=None):
  """Decode + NMS for a batch: `outputs` of FCOS.apply, `points` of `locations.make_points` for its canvas.

  `cfg` is `config.postprocess` (static); `image_size` [B, 2] (h, w) of the resized images: with cfg.clip_boxes,
  boxes are clipped to it before NMS (as torchvision does). `inside` [B, P] bool (`locations.inside_extent`): the
  points that exist on each image's extent; the others score 0, never a candidate (score_threshold >= 0). Points
  keep their relative order on any canvas, so ties break as on a canvas of exactly the extent.
  Returns `boxes` [B, K, 4] float32 xyxy canvas pixels, `scores` [B, K], `classes` [B, K] int32 (labels 0..C-1),
  `valid` [B, K], sorted by score, K = cfg.max_detections. Jit with `points` and `cfg` bound, e.g.
  `jax.jit(functools.partial(detect, points=points, cfg=cfg))`: they are constants, not arguments.
  """
  scores = point_scores(outputs['cls_logits'], outputs['ctr_logits'], cfg.score_sqrt)
  if inside is not None:
    scores = jnp.where(inside[..., None], scores, 0.0)
  boxes = decode_boxes(outputs['reg'], points)
  if cfg.clip_boxes and image_size is None:
    raise ValueError('postprocess.clip_boxes needs image_size')
  image_hw = jnp.asarray(image_size, jnp.float32) if cfg.clip_boxes else None
  return jax.vmap(functools.partial(detect_one, points=points, cfg=cfg))(scores, boxes, image_hw)
