"""The inference seam: pixels to boxes, shared by the `Predictor`, evaluation and every export format.

`make_detect_fn` is the pure function (variables, uint8 canvases [B, H, W, 3], resized sizes [B, 2]) -> detections
in canvas pixels; `to_original_pixels` maps them back through the resize scale; `load_detector` reads a checkpoint
(a trained or converted one) into the model its config builds.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fcos_jax import boxes as box_ops
from fcos_jax import checkpoints, locations, postprocess
from fcos_jax.model import fcos


def load_detector(path: str, config: ml_collections.ConfigDict) -> tuple[nn.Module, dict]:
  """(model, variables) of the checkpoint directory `path`: the model of `config.model`, the variables read into the
  shapes it defines (a checkpoint of another architecture is a CheckpointError naming what differs)."""
  model = fcos.build_model(config.model)
  return model, checkpoints.load_variables(path, jax.eval_shape(lambda: fcos.init_variables(model, 0)))


def make_detect_fn(model: nn.Module, config: ml_collections.ConfigDict, outputs: str = 'detections'):
  """The pure inference function (variables, images, sizes) -> dict of arrays, for any canvas and batch size.

  `images` uint8 [B, H, W, 3] RGB, each resized image at the top-left of its zero-padded canvas (H, W multiples of
  the largest stride); `sizes` int32 [B, 2] (h, w) of the resized images (0, 0 for padding images).
  outputs='detections': `boxes` [B, K, 4] float32 xyxy canvas pixels, `scores` [B, K], `classes` [B, K] int32,
  `valid` [B, K] bool (`postprocess.detect`). outputs='points': per point, before any selection, `boxes` [B, P, 4]
  (decoded canvas pixels, clipped to `sizes` if postprocess.clip_boxes) and `scores` [B, P, C].
  The points depend only on the canvas shape: they are constants of each compiled program.

  Padding invariant: each image is computed on its reference extent, its size rounded up to data.pad_stride
  (`fcos.reference_extent`), so its outputs depend on its pixels and size only, not on the canvas or the batch;
  points beyond the extent score 0.
  """
  if outputs not in ('detections', 'points'):
    raise ValueError(f"outputs={outputs!r} must be 'detections' or 'points'")
  m, cfg = config.model, config.postprocess

  def detect(variables, images, sizes):
    points = locations.points_from_config(images.shape[1:3], config)
    normalized = fcos.normalize_images(images, sizes, m.pixel_mean, m.pixel_std)
    extent = fcos.reference_extent(sizes, config.data.pad_stride)
    raw = model.apply(variables, normalized, extent=extent)
    inside = locations.inside_extent(points, extent)
    if outputs == 'detections':
      return postprocess.detect(raw, points, cfg, sizes, inside)
    boxes = postprocess.decode_boxes(raw['reg'], points)
    if cfg.clip_boxes:
      boxes = jax.vmap(box_ops.clip)(boxes, sizes.astype(boxes.dtype))
    scores = postprocess.point_scores(raw['cls_logits'], raw['ctr_logits'], cfg.score_sqrt)
    return {'boxes': boxes, 'scores': jnp.where(inside[..., None], scores, 0.0)}

  return detect


def to_original_pixels(boxes: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """xyxy canvas-pixel `boxes` [..., 4] / the resize `scale` [..., 2] (sy, sx) -> float64 original pixels."""
  sy, sx = np.moveaxis(np.asarray(scale, np.float64), -1, 0)
  return np.asarray(boxes, np.float64) / np.stack([sx, sy, sx, sy], axis=-1)
