"""Points of the FPN levels for a canvas shape: coordinates, strides and size ranges, one row per point.

Everything here but `inside_extent` depends only on static shapes and config, so it is computed once in NumPy and
enters jitted functions as constants. Points are ordered row-major within a level, levels P3..P7 concatenated.
"""

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax


class Points(NamedTuple):
  """The points of all levels. `xy` [P, 2] (x, y) pixels, `stride` [P], `level` [P], `size_range` [P, 2]."""
  xy: np.ndarray
  stride: np.ndarray
  level: np.ndarray
  size_range: np.ndarray
  shapes: tuple  # ((h, w), ...) per level.


def feature_shapes(canvas_hw, strides):
  """(h, w) of each level's feature map: the canvas halved log2(stride) times, rounding up like the convs do."""
  shapes = []
  for stride in strides:
    h, w = canvas_hw
    for _ in range(int(round(math.log2(stride)))):
      h, w = -(-h // 2), -(-w // 2)
    shapes.append((h, w))
  return tuple(shapes)


def size_ranges(size_bounds):
  """Per-level (lower, upper) bounds on max(l, t, r, b): (-1, b0), (b0, b1), ..., (b_last, inf)."""
  edges = [-1.0, *[float(b) for b in size_bounds], math.inf]
  return np.array(list(zip(edges[:-1], edges[1:])), np.float32)


def make_points(canvas_hw, strides, size_bounds, offset=0.5):
  """All points of a canvas `(H, W)`: column i, row j of a level sit at ((i + offset) s, (j + offset) s)."""
  if len(size_bounds) != len(strides) - 1:
    raise ValueError(f'size_bounds {tuple(size_bounds)} must have one entry fewer than strides {tuple(strides)}')
  ranges = size_ranges(size_bounds)
  shapes = feature_shapes(canvas_hw, strides)
  xy, stride, level = [], [], []
  for lvl, (s, (h, w)) in enumerate(zip(strides, shapes)):
    ys, xs = np.meshgrid((np.arange(h) + offset) * s, (np.arange(w) + offset) * s, indexing='ij')
    xy.append(np.stack([xs.ravel(), ys.ravel()], axis=-1))
    stride.append(np.full(h * w, s, np.float32))
    level.append(np.full(h * w, lvl, np.int32))
  level = np.concatenate(level)
  return Points(np.concatenate(xy).astype(np.float32), np.concatenate(stride), level, ranges[level], shapes)


def points_from_config(canvas_hw, config):
  """`make_points` with the model strides and the assignment options of a full config."""
  return make_points(canvas_hw, config.model.strides, config.assign.size_bounds, config.assign.point_offset)


def inside_extent(points, extent):
  """bool [N, P]: the points that exist on a canvas of exactly each image's `extent` [N, 2] (h, w) pixels.

  Row i, column j of a level of stride s exists there when i < ceil(h / s) and j < ceil(w / s), i.e. when its
  cell's corner (j s, i s) lies inside the extent; the network's outputs at the other points are not meaningful.
  """
  stride = points.stride[:, None]
  corner = np.floor(points.xy / stride) * stride  # [P, 2] (x, y); exact: 0 <= point_offset < 1.
  extent = jnp.asarray(extent, jnp.float32)
  h, w = lax.slice_in_dim(extent, 0, 1, axis=1), lax.slice_in_dim(extent, 1, 2, axis=1)  # [N, 1]; no gather.
  return (corner[None, :, 0] < w) & (corner[None, :, 1] < h)
