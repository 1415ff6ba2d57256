"""The ONNX format: the network and decode translated from their jaxpr (`jaxpr_to_onnx`), then FCOS's detections
from ONNX's NonMaxSuppression (`detections_head`). Needs the optional onnx package."""

from typing import Callable, Sequence

import ml_collections
import numpy as np
import onnx

from fcos_jax import locations
from fcos_jax.export import jaxpr_to_onnx
from fcos_jax.export.serving import input_specs, serving_function


def export_onnx(config: ml_collections.ConfigDict, variables: dict, canvas: Sequence[int], path: str,
                outputs: str) -> None:
  """An ONNX model (symbolic dim 'batch') computing `make_detect_fn`'s 'points', then, for 'detections', the
  NonMaxSuppression head; run it with `onnxruntime.InferenceSession(path).run(None, {'images': .., 'sizes': ..})`."""
  head = None
  if outputs == 'detections':
    level_sizes = [h * w for h, w in locations.points_from_config(canvas, config).shapes]
    head = detections_head(config.postprocess, level_sizes, config.model.num_classes)
  model = jaxpr_to_onnx.to_onnx(serving_function(config, variables, 'points'), input_specs(canvas),
                                ['images', 'sizes'], head)
  with open(path, 'wb') as f:
    f.write(model.SerializeToString())


def detections_head(cfg: ml_collections.ConfigDict, level_sizes: Sequence[int], num_classes: int) -> Callable:
  """A `jaxpr_to_onnx.to_onnx` head: per-point `boxes` [B, P, 4] and `scores` [B, P, C] -> K detections per image
  with ONNX's NonMaxSuppression, as `postprocess.detect` computes them.

  Candidates as cfg.method says ('fast': per level top-k (point, class) pairs; 'paddle': per class top-k points),
  then sorted by score (TopK, like lax.top_k, puts ties at the lower index: our greedy NMS's visiting order). The
  NonMaxSuppression sees each candidate's rank (N - position, exact in float32) in its own class row only, or 0
  below the score threshold, so it visits in that same order whatever its own tie rule; per class it is our
  class-aware greedy NMS (IoU > nms_iou suppresses), keeping at most K, and the first K kept in rank order are the
  detections. One difference: onnxruntime never suppresses with a zero-area box, while 'paddle' lets two touching
  zero-area boxes suppress each other (Paddle's NaN overlap); 'fast' is exact.
  """
  k = cfg.max_detections
  if cfg.method == 'fast':
    n = sum(min(cfg.pre_nms_top_k, size * num_classes) for size in level_sizes)
  else:
    n = num_classes * min(cfg.pre_nms_top_k, sum(level_sizes))

  def head(g, points):
    boxes = points['boxes']
    cand_scores, point, classes = _candidates(g, points['scores'], cfg, level_sizes, num_classes, n)
    sorted_scores, order = g.op('TopK', [cand_scores, _int64(n)], 2, axis=1)  # [B, N] greedy visiting order
    classes = g.op('GatherElements', [classes, order], axis=1)
    point = g.op('GatherElements', [point, order], axis=1)
    cand_boxes = g.op('GatherND', [boxes, g.op('Unsqueeze', [point, _int64(2)])], batch_dims=1)  # [B, N, 4]
    rank = np.arange(n, 0, -1, dtype=np.float32)  # [N] distinct, descending
    ranks = g.op('Where', [g.op('Greater', [sorted_scores, np.float32(cfg.score_threshold)]), rank, np.float32(0)])
    all_classes = np.arange(num_classes, dtype=np.int64)[:, None]
    own_class = g.op('Equal', [g.op('Unsqueeze', [classes, _int64(1)]), all_classes])
    class_ranks = g.op('Where', [own_class, g.op('Unsqueeze', [ranks, _int64(1)]), np.float32(0)])  # [B, C, N]
    selected = g.op('NonMaxSuppression', [cand_boxes, class_ranks, _int64(k), np.asarray([cfg.nms_iou], np.float32),
                                          np.zeros(1, np.float32)])  # [M, 3] (image, class, candidate)
    ones = g.op('ConstantOfShape', [g.op('Shape', [selected], start=0, end=1)],
                value=onnx.numpy_helper.from_array(np.ones(1, np.float32)))
    kept = g.op('ScatterND', [g.op('Mul', [ranks, np.float32(0)]), g.op('Gather', [selected, _int64(0, 2)], axis=1),
                              ones])  # [B, N] 1 where kept
    kept_ranks = g.op('Mul', [kept, rank])
    if n < k:  # Fewer candidates than slots: the extra slots stay empty, as the ones NMS leaves.
      kept_ranks, classes, sorted_scores = (g.op('Pad', [x, _int64(0, 0, 0, k - n), zero]) for x, zero in (
          (kept_ranks, np.float32(0)), (classes, np.int64(0)), (sorted_scores, np.float32(0))))
      cand_boxes = g.op('Pad', [cand_boxes, _int64(0, 0, 0, 0, k - n, 0), np.float32(0)])
    top_ranks, top = g.op('TopK', [kept_ranks, _int64(k)], 2, axis=1)  # The first K kept, in rank order.
    valid = g.op('Greater', [top_ranks, np.float32(0)])
    out_boxes = g.op('GatherND', [cand_boxes, g.op('Unsqueeze', [top, _int64(2)])], batch_dims=1)
    out_classes = g.op('Cast', [g.op('GatherElements', [classes, top], axis=1)], to=onnx.TensorProto.INT32)
    out_scores = g.op('GatherElements', [sorted_scores, top], axis=1)
    return {
        'boxes': (g.op('Where', [g.op('Unsqueeze', [valid, _int64(2)]), out_boxes, np.float32(0)]), np.float32,
                  ('batch', k, 4)),
        'classes': (g.op('Where', [valid, out_classes, np.int32(-1)]), np.int32, ('batch', k)),
        'scores': (g.op('Where', [valid, out_scores, np.float32(0)]), np.float32, ('batch', k)),
        'valid': (valid, np.bool_, ('batch', k))}

  return head


def _int64(*values):
  return np.asarray(values, np.int64)


def _candidates(g, scores, cfg, level_sizes, num_classes, n):
  """The N = `n` candidates of `detections_head`: (scores [B, N], point [B, N], class [B, N]) as cfg.method says:
  'fast' the top-k (point, class) pairs of each level; 'paddle' the top-k points of each class, class-major."""
  if cfg.method == 'fast':
    cand, flat, start = [], [], 0
    for size in level_sizes:
      level = g.op('Reshape', [g.op('Slice', [scores, _int64(start), _int64(start + size), _int64(1)]),
                               _int64(0, size * num_classes)])
      values, index = g.op('TopK', [level, _int64(min(cfg.pre_nms_top_k, size * num_classes))], 2, axis=1)
      cand.append(values)
      flat.append(g.op('Add', [index, _int64(start * num_classes)]))
      start += size
    flat = g.op('Concat', flat, axis=1)
    return (g.op('Concat', cand, axis=1), g.op('Div', [flat, _int64(num_classes)]),
            g.op('Mod', [flat, _int64(num_classes)]))
  top = min(cfg.pre_nms_top_k, sum(level_sizes))
  values, point = g.op('TopK', [g.op('Transpose', [scores], perm=[0, 2, 1]), _int64(top)], 2, axis=2)
  cand_scores, point = (g.op('Reshape', [x, _int64(0, n)]) for x in (values, point))
  return cand_scores, point, g.op('Expand', [np.arange(n, dtype=np.int64) // top, g.op('Shape', [cand_scores])])
