"""Export a detector for serving: StableHLO (jax.export), a TensorFlow SavedModel (jax2tf) or ONNX.

Every format computes `inference.make_detect_fn` (`serving.serving_function`) with the weights baked in, on one
fixed canvas (H, W) and ANY batch size (a symbolic batch dimension):
  inputs   images uint8 [B, H, W, 3] RGB: each image resized as `Predictor.resize` does and placed at the top-left
           of a zero canvas; sizes int32 [B, 2]: (h, w) of each resized image.
  outputs  'detections': boxes float32 [B, K, 4] xyxy canvas pixels, scores [B, K], classes int32 [B, K],
           valid bool [B, K] (K = postprocess.max_detections, sorted by score);
           'points' (--outputs points): per point, boxes [B, P, 4] canvas pixels and scores [B, P, C], for a
           post-processing of your own.
Beside the model, `contract.json` records the canvas, class names, category ids and the pre/post-processing rules,
padding invariance included: each image is computed on its size rounded up to data.pad_stride (from `sizes`), so
its outputs do not depend on the canvas or on the other images of the batch.

One module per format: `stablehlo`, `savedmodel` (TensorFlow imported only there) and `onnx_model` (opset 18, for
onnxruntime; the optional onnx package), written by our own jaxpr translator (`jaxpr_to_onnx`: the network and
decode traced from the same function); its detections come from ONNX's NonMaxSuppression plus a top-K
(`onnx_model.detections_head`), the same detections as `postprocess.detect` for 'fast' (see there for 'paddle').

  fcos-export --checkpoint CKPT --out DIR --format stablehlo|savedmodel|onnx [--canvas H W]   (fcos_jax.commands.export)
"""

import os
from typing import Sequence

import ml_collections

from fcos_jax import atomic, errors, locations
from fcos_jax.data import categories
from fcos_jax.export import savedmodel, stablehlo
from fcos_jax.export.serving import PLATFORMS, serving_function

FORMATS = {'stablehlo': 'model.stablehlo', 'savedmodel': 'saved_model', 'onnx': 'model.onnx'}
# Per data.resize_mode (`fcos_jax.data.transforms.resized_size`): how to resize an image, how to map boxes back.
RESIZE_RULES = {
    'paddle': ('s = min(short_side / min(h, w), max_size / max(h, w)); new = round(s * (h, w)), halves to even; '
               'cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR) (bilinear sampled at '
               '(o + 0.5) / s - 0.5, edge pixels repeated, OpenCV\'s 11-bit fixed point)',
               'x / s, y / s'),
    'torchvision': ('s = min(short_side / min(h, w), max_size / max(h, w)); new = floor(s * (h, w)); bilinear, '
                    'half-pixel centres (sampled at (o + 0.5) * old / new - 0.5), no antialiasing, rounded to uint8',
                    'x / (new_w / w), y / (new_h / h)'),
}


def contract(fmt: str, config: ml_collections.ConfigDict, canvas: tuple[int, int], class_names: Sequence[str] | None,
             category_ids: Sequence[int] | None, outputs: str) -> dict:
  """The json written beside an export: everything a server needs to feed it and read its outputs."""
  d, p = config.data, config.postprocess
  k, c = p.max_detections, config.model.num_classes
  num_points = len(locations.points_from_config(canvas, config).xy)
  tensors = {
      'detections': {'boxes': f'float32 [B, {k}, 4] xyxy canvas pixels, zeros where not valid',
                     'scores': f'float32 [B, {k}] descending, zeros where not valid',
                     'classes': f'int32 [B, {k}] index into class_names, -1 where not valid',
                     'valid': f'bool [B, {k}]'},
      'points': {'boxes': f'float32 [B, {num_points}, 4] xyxy canvas pixels, one box per point',
                 'scores': f'float32 [B, {num_points}, {c}] per point and class, before any threshold or NMS'}}
  if fmt == 'onnx' and outputs == 'detections':
    nms = ('ONNX NonMaxSuppression + TopK (onnx_model.detections_head): the same detections as fcos_jax for '
           "'fast'" + ("; for 'paddle', two touching zero-area boxes never suppress each other here"
                       if p.method == 'paddle' else ''))
  else:
    nms = 'inside the model (greedy, class-aware)' if outputs == 'detections' else 'none: yours to run on the points'
  return {
      'format': fmt, 'file': FORMATS[fmt], 'canvas': list(canvas), 'outputs': outputs,
      'output_tensors': tensors[outputs],
      'platforms': ['onnxruntime (opset 18)'] if fmt == 'onnx' else list(PLATFORMS),
      'class_names': list(class_names), 'category_ids': [int(i) for i in category_ids],
      'inputs': {'images': f'uint8 [B, {canvas[0]}, {canvas[1]}, 3] RGB, each resized image at the top-left of a '
                           'zero canvas', 'sizes': 'int32 [B, 2] (h, w) of each resized image'},
      'preprocessing': {
          'short_side': d.eval_short_size, 'max_size': d.max_size,
          'resize_mode': d.resize_mode, 'resize': RESIZE_RULES[d.resize_mode][0],
          'normalization': 'inside the model (ImageNet mean/std on [0, 1]); padding must be zero',
          'padding_invariance': f'each image is computed as if its canvas were its size rounded up to a multiple of '
                                f'{d.pad_stride} (the extent): its outputs depend on its pixels and size only, not on '
                                f'the canvas or the other images of the batch; points beyond the extent score 0'},
      'postprocessing': {
          'method': p.method, 'score_threshold': p.score_threshold, 'nms_iou': p.nms_iou,
          'max_detections': p.max_detections, 'score_sqrt': p.score_sqrt, 'nms': nms,
          'boxes': f'xyxy canvas pixels; original pixels: {RESIZE_RULES[d.resize_mode][1]}; keep rows where valid'}}


def check_canvas(config: ml_collections.ConfigDict, canvas: Sequence[int] | None = None) -> tuple[int, int]:
  """The export canvas (H, W): `canvas`, default the first of data.canvases; a ConfigError unless both are positive
  multiples of the largest stride."""
  canvas = tuple(int(v) for v in (canvas or config.data.canvases[0]))
  if any(v <= 0 or v % max(config.model.strides) for v in canvas):
    raise errors.ConfigError(f'canvas {canvas[0]} {canvas[1]} must be (H, W) multiples of {max(config.model.strides)}')
  return canvas


def export(config: ml_collections.ConfigDict, variables: dict, fmt: str, out: str, canvas: Sequence[int] | None = None,
           class_names: Sequence[str] | None = None, category_ids: Sequence[int] | None = None,
           outputs: str = 'detections') -> str:
  """Writes `fmt` (stablehlo, savedmodel or onnx) and contract.json into directory `out` (both whole, or nothing
  new on failure); returns the model path."""
  if fmt not in FORMATS:
    raise ValueError(f'format {fmt!r} must be one of {", ".join(FORMATS)}')
  canvas = check_canvas(config, canvas)
  num_classes = config.model.num_classes
  class_names, category_ids = categories.name_classes(num_classes, class_names, category_ids)
  with atomic.directory(out) as staging:
    path = os.path.join(staging, FORMATS[fmt])
    if fmt == 'onnx':
      try:
        from fcos_jax.export import onnx_model  # pylint: disable=g-import-not-at-top  (the optional onnx package)
      except ImportError as e:
        raise ImportError(f"the onnx format needs the onnx package: pip install 'fcos_jax[export]' ({e})") from None
      onnx_model.export_onnx(config, variables, canvas, path, outputs)
    else:
      fn = serving_function(config, variables, outputs)
      (stablehlo.export_stablehlo if fmt == 'stablehlo' else savedmodel.export_savedmodel)(fn, canvas, path)
    atomic.write_json(os.path.join(staging, 'contract.json'),
                      contract(fmt, config, canvas, class_names, category_ids, outputs), 1)
  return os.path.join(out, FORMATS[fmt])
