"""Sliced prediction for images larger than the model's scale, with PaddleDetection's `slice_infer` semantics.

An image is cut into overlapping tiles (`tile_grid`, SAHI's `get_slice_bboxes`, which PaddleDetection calls); each
tile is predicted as an image of its own (the `Predictor` resizes it to the evaluation scale, as PaddleDetection
runs every slice through its eval transforms); the tiles' detections are shifted back to the image's pixels and
combined (`merge`): 'concat' keeps them all, 'nms' runs a greedy NMS within each class with the IoS or IoU metric
(PaddleDetection's `post_process.nms`, including its +1 pixel areas and `overlap >= threshold`).

A tile of h x w pixels is resized by s = min(data.eval_short_size / min(h, w), data.max_size / max(h, w)): square
tiles of data.eval_short_size pixels run at their own pixels (s = 1); PaddleDetection's usual 640 x 640 tiles under
an 800 / 1333 scale are enlarged 1.25 times, as there.

`predict.Predictor` predicts in tiles; `eval_lib.SlicedEvaluator` evaluates a split that way. The
command-line face of it (`add_arguments`, `from_arguments`) is shared by fcos-predict and fcos-evaluate.
"""

import argparse
import dataclasses

import numpy as np

from fcos_jax import errors

COMBINE_METHODS = ('nms', 'concat')
MATCH_METRICS = ('ios', 'iou')


@dataclasses.dataclass(frozen=True)
class Slicing:
  """How to slice: tiles of `size` (h, w) pixels overlapping by `overlap` (rh, rw) of a tile (each in [0, 1)),
  combined by `combine` ('nms' or 'concat'); 'nms' suppresses a box of the same class that overlaps a better one by
  `match_metric` ('ios': intersection over the smaller box, or 'iou') >= `match_threshold`. `max_detections` keeps
  the best that many of an image after the merge (None: all that its tiles give)."""
  size: tuple
  overlap: tuple = (0.25, 0.25)
  combine: str = 'nms'
  match_threshold: float = 0.6
  match_metric: str = 'ios'
  max_detections: int | None = None

  def __post_init__(self):
    problems = []
    if len(self.size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in self.size):
      problems.append(f'slice size {tuple(self.size)} must be two positive integers H W (--slice-size)')
    if len(self.overlap) != 2 or not all(0 <= v < 1 for v in self.overlap):
      problems.append(f'overlap ratio {tuple(self.overlap)} must be two numbers RH RW in [0, 1) (--overlap-ratio)')
    if self.combine not in COMBINE_METHODS:
      problems.append(f'combine method {self.combine!r} must be one of {", ".join(COMBINE_METHODS)} (--combine)')
    if self.match_metric not in MATCH_METRICS:
      problems.append(f'match metric {self.match_metric!r} must be one of {", ".join(MATCH_METRICS)} '
                      '(--match-metric)')
    if not 0 <= self.match_threshold <= 1:
      problems.append(f'match threshold {self.match_threshold} must be in [0, 1] (--match-threshold)')
    if self.max_detections is not None and not (isinstance(self.max_detections, (int, np.integer))
                                                and self.max_detections > 0):
      problems.append(f'max detections {self.max_detections} must be a positive integer (--max-detections)')
    if problems:
      raise errors.ConfigError('Invalid slicing: ' + '; '.join(problems))


def tile_starts(length: int, tile: int, overlap_ratio: float) -> tuple[np.ndarray, int]:
  """(start offsets [n], extent) of the tiles along one side of `length` pixels, as SAHI lays them out.

  Tiles of `tile` pixels start every `tile - int(overlap_ratio * tile)` pixels from 0 until one reaches the end;
  that last one is moved back to end at the side's end. A side shorter than a tile has one tile of its own length
  (`extent` is then `length`, else `tile`).
  """
  if length <= tile:
    return np.zeros(1, np.int64), length
  step = tile - int(overlap_ratio * tile)
  count = 1 + -(-(length - tile) // step)
  starts = np.arange(count, dtype=np.int64) * step
  starts[-1] = length - tile
  return starts, tile


def tile_grid(height: int, width: int, size: tuple, overlap: tuple) -> np.ndarray:
  """The tiles of an image of `height` x `width` pixels: int64 [T, 4] xyxy (x0, y0, x1, y1), row by row from the top,
  each row from the left (SAHI's order), tiles of `size` (h, w) overlapping by `overlap` (rh, rw); see
  `tile_starts`."""
  ys, tile_h = tile_starts(height, size[0], overlap[0])
  xs, tile_w = tile_starts(width, size[1], overlap[1])
  y0, x0 = (a.ravel() for a in np.meshgrid(ys, xs, indexing='ij'))
  return np.stack([x0, y0, x0 + tile_w, y0 + tile_h], axis=1)


def overlaps(box: np.ndarray, boxes: np.ndarray, metric: str) -> np.ndarray:
  """Overlap of `box` [4] with each of `boxes` [N, 4] (xyxy), PaddleDetection's way: sides and intersections counted
  in whole pixels (+1); 'ios' divides by the smaller of the two areas, 'iou' by their union."""
  def area(b):
    return (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
  wh = np.maximum(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]) + 1, 0)
  inter = wh[:, 0] * wh[:, 1]
  if metric == 'ios':
    return inter / np.minimum(area(box), area(boxes))
  return inter / (area(box) + area(boxes) - inter)


def merge(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, slicing: Slicing) -> np.ndarray:
  """Indices of the detections of the tiles of one image (`boxes` [N, 4] xyxy image pixels, `scores` [N],
  `classes` [N], the tiles' detections one after the other) that the image keeps: best score first (ties in that
  order), at most `slicing.max_detections`.

  'nms': greedy, visiting by descending score (ties: the later detection first, as PaddleDetection's reversed
  argsort), each kept detection suppresses the remaining ones of its class whose `overlaps` with it is >=
  match_threshold. 'concat': all of them.
  """
  scores = np.asarray(scores)
  kept = np.arange(len(scores))
  if slicing.combine == 'nms':
    order = np.argsort(scores, kind='stable')[::-1]
    boxes, classes = np.asarray(boxes, np.float64).reshape(-1, 4)[order], np.asarray(classes)[order]
    alive = np.ones(len(order), bool)
    for i in range(len(order)):  # The greedy selection; each step is vectorised over the remaining boxes.
      if alive[i]:
        rest = slice(i + 1, None)
        alive[rest] &= ~((classes[rest] == classes[i])
                         & (overlaps(boxes[i], boxes[rest], slicing.match_metric) >= slicing.match_threshold))
    kept = np.sort(order[alive])
  return kept[np.argsort(-scores[kept], kind='stable')][:slicing.max_detections]


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The slicing options of fcos-predict and fcos-evaluate (PaddleDetection's --slice_infer options)."""
  group = parser.add_argument_group(
      'sliced prediction', 'for images larger than the model\'s scale (PaddleDetection\'s --slice_infer): each tile is '
      'predicted as an image of its own (resized to the evaluation scale), its detections shifted back and merged')
  group.add_argument('--slice-size', type=int, nargs=2, metavar=('H', 'W'),
                     help='slice images into tiles of H x W pixels (default: no slicing)')
  group.add_argument('--overlap-ratio', type=float, nargs=2, metavar=('RH', 'RW'),
                     help='overlap of neighbouring tiles, a fraction of the tile height and width (default 0.25 0.25)')
  group.add_argument('--combine', choices=COMBINE_METHODS,
                     help='merge the tiles\' detections by per-class NMS, or keep them all (default nms)')
  group.add_argument('--match-threshold', type=float, metavar='T',
                     help='the merge suppresses a box overlapping a better one of its class by >= this (default 0.6)')
  group.add_argument('--match-metric', choices=MATCH_METRICS,
                     help='overlap for the merge: intersection over the smaller box (ios) or over the union (iou); '
                     'default ios')
  group.add_argument('--max-detections', type=int, metavar='N',
                     help='keep the best N detections of an image after the merge (default: all its tiles give)')


def from_arguments(args: argparse.Namespace) -> Slicing | None:
  """The `Slicing` of the parsed `add_arguments` options, None without --slice-size (a ConfigError if other slicing
  options are given without it)."""
  given = {name: getattr(args, name) for name in ('overlap_ratio', 'combine', 'match_threshold', 'match_metric',
                                                  'max_detections') if getattr(args, name) is not None}
  if args.slice_size is None:
    if given:
      raise errors.ConfigError(f'--{next(iter(given)).replace("_", "-")} applies to sliced prediction: add '
                               '--slice-size H W')
    return None
  options = {('overlap' if k == 'overlap_ratio' else k): tuple(v) if isinstance(v, list) else v
             for k, v in given.items()}
  return Slicing(size=tuple(args.slice_size), **options)
