"""Per-image transforms in TensorFlow ops: resize keeping the aspect ratio, flip, fit a canvas, pad the GT.

Images stay uint8 (normalisation happens on the device); boxes are float32 xyxy in pixels and move with the image.
"""

import numpy as np
import tensorflow as tf


def resized_size(size, short, max_size, mode):
  """Size and scale of an image of `size` [2] (h, w) resized so the short side is `short` and the long side <=
  `max_size`: s = min(short / min(h, w), max_size / max(h, w)) in float64.

  `mode` (data.resize_mode) 'paddle', PaddleDetection's Resize (cv2.resize with fx = fy = s): new = round(s * dim),
  halves to even as OpenCV rounds, and scale = (s, s); 'torchvision', its GeneralizedRCNNTransform (interpolate with
  recompute_scale_factor): new = floor(s * dim) and scale = new / old per axis. At least 1 pixel.
  Returns (new int32 [2], scale float32 [2] (sy, sx), extent float32 [2]: s * (h, w) in 'paddle', new in
  'torchvision', where the image's far edges land). Pixels are sampled at (o + 0.5) / scale - 0.5, boxes scale by it.
  """
  new, scale, extent = _resize_rule(size, short, max_size, mode)
  return new, tf.cast(scale, tf.float32), extent


def _resize_rule(size, short, max_size, mode):
  """`resized_size` with the scale in float64, as OpenCV receives it (its sampling grid is computed from it)."""
  hw = tf.cast(size, tf.float64)
  s = tf.minimum(tf.cast(short, tf.float64) / tf.reduce_min(hw), float(max_size) / tf.reduce_max(hw))
  if mode == 'paddle':
    new = tf.maximum(tf.cast(tf.round(s * hw), tf.int32), 1)
    return new, tf.stack([s, s]), tf.cast(s * hw, tf.float32)
  if mode == 'torchvision':
    new = tf.maximum(tf.cast(tf.floor(s * hw), tf.int32), 1)
    return new, tf.cast(new, tf.float64) / hw, tf.cast(new, tf.float32)
  raise ValueError(f"resize mode {mode!r} must be 'paddle' or 'torchvision'")


def scale_boxes(boxes, scale, extent):
  """`boxes` [N, 4] times `scale` [2] (sy, sx) in float32, as PaddleDetection scales them, clipped to `extent` [2]
  (h, w) of the resized image."""
  sy, sx = tf.unstack(scale)
  boxes = boxes * tf.stack([sx, sy, sx, sy])
  return tf.clip_by_value(boxes, 0.0, tf.stack([extent[1], extent[0], extent[1], extent[0]]))


COEF_BITS = 11  # OpenCV's INTER_LINEAR weights for uint8: 11-bit fixed point.


def _taps(out_len, in_len, scale, clamp_weights):
  """Source taps of one axis as OpenCV's INTER_LINEAR computes them for uint8: (lower [n] int32, upper [n] int32,
  weight of lower [n] int32, weight of upper [n] int32), weights in 1/2048ths, n = `out_len`.

  Output pixel o samples the input at f = float32((o + 0.5) * (1 / scale) - 0.5), 1 / scale in float64; the taps
  are floor(f) and floor(f) + 1, clamped into the image, weighted 1 - frac and frac, each rounded to 11 bits. Along
  the columns (`clamp_weights`) a tap before the first or at or after the last pixel samples that edge pixel alone;
  along the rows OpenCV keeps the weights there, both taps clamped onto the same row.
  """
  source = tf.cast((tf.range(out_len, dtype=tf.float64) + 0.5) * (1 / scale) - 0.5, tf.float32)
  floor = tf.floor(source)
  frac = source - floor
  floor = tf.cast(floor, tf.int32)
  if clamp_weights:
    frac = tf.where((floor < 0) | (floor >= in_len - 1), 0.0, frac)
  one = float(1 << COEF_BITS)
  return (tf.clip_by_value(floor, 0, in_len - 1), tf.clip_by_value(floor + 1, 0, in_len - 1),
          tf.cast(tf.round((1 - frac) * one), tf.int32), tf.cast(tf.round(frac * one), tf.int32))


def _between_rows(top, bottom, w_top, w_bottom):
  """uint8 pixels from two rows of column-interpolated values (int32, x 2048) and the rows' 11-bit weights, as
  OpenCV's vectorised INTER_LINEAR rounds them: each row >> 4, times its weight >> 16, summed, then (+ 2) >> 2."""
  shift = tf.bitwise.right_shift
  value = shift(shift(top, 4) * w_top, 16) + shift(shift(bottom, 4) * w_bottom, 16)
  return tf.cast(tf.clip_by_value(shift(value + 2, 2), 0, 255), tf.uint8)


def resize(image, boxes, short, max_size, mode):
  """Bilinear resize of uint8 `image` [h, w, 3] per `resized_size`; `boxes` [N, 4] scaled and clipped with it.

  The pixels are cv2.resize(image, None, fx=sx, fy=sy, interpolation=INTER_LINEAR)'s, bit for bit: its sampling
  grid (`_taps`), its 11-bit integer weights along the columns, its rounding between the rows (`_between_rows`).
  (OpenCV alone switches to INTER_AREA for a scale of exactly 1/2; there the pixels are within 1 level.)
  tf.image.resize cannot do it (it samples with new / old). `fcos_jax.resize` (the device path) shares the
  arithmetic. Returns (image uint8 [h', w', 3], boxes [N, 4], scale float32 [2] (sy, sx)).
  """
  shape = tf.shape(image)
  new, scale, extent = _resize_rule(shape[:2], short, max_size, mode)
  y0, y1, b0, b1 = _taps(new[0], shape[0], scale[0], clamp_weights=False)
  x0, x1, a0, a1 = _taps(new[1], shape[1], scale[1], clamp_weights=True)
  pixels = tf.cast(image, tf.int32)
  rows = tf.gather(pixels, x0, axis=1) * a0[None, :, None] + tf.gather(pixels, x1, axis=1) * a1[None, :, None]
  resized = _between_rows(tf.gather(rows, y0), tf.gather(rows, y1), b0[:, None, None], b1[:, None, None])
  return resized, scale_boxes(boxes, tf.cast(scale, tf.float32), extent), tf.cast(scale, tf.float32)


def hflip_boxes(boxes, width):
  """`boxes` [N, 4] mirrored left-right in an image `width` wide: x1' = w - x2, x2' = w - x1."""
  w = tf.cast(width, tf.float32)
  x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
  return tf.stack([w - x2, y1, w - x1, y2], axis=-1)


def hflip(image, boxes):
  """Mirrors `image` [h, w, 3] left-right and `boxes` [N, 4] with it."""
  return tf.reverse(image, [1]), hflip_boxes(boxes, tf.shape(image)[1])  # A strided slice is 3x slower.


def random_short_side(short_sizes, seed):
  """One of `short_sizes` (Python ints) drawn uniformly with the stateless `seed` [2]."""
  i = tf.random.stateless_uniform([], seed, maxval=len(short_sizes), dtype=tf.int32)
  return tf.gather(tf.constant(short_sizes, tf.int32), i)


def canvas_choice(canvases):
  """(landscape, portrait): indices of the canvas for images with w >= h and with h > w.

  Each is the first canvas (H, W) of that orientation (W >= H landscape, H > W portrait), or canvas 0 if none is.
  """
  landscape = [i for i, (h, w) in enumerate(canvases) if w >= h]
  portrait = [i for i, (h, w) in enumerate(canvases) if h > w]
  return (landscape or [0])[0], (portrait or [0])[0]


def canvas_index(size, canvases):
  """Canvas index for original sizes `size` [..., 2] (h, w); works on NumPy arrays and tensors alike."""
  landscape, portrait = canvas_choice(canvases)
  where = tf.where if tf.is_tensor(size) else np.where
  return where(size[..., 1] >= size[..., 0], landscape, portrait)


def fit_canvas(size, canvas, name):
  """`size` [2] (h, w) of a resized image itself, once checked to fit `canvas` (H, W); the error names the image
  (`name`, a string).

  The zero padding at the bottom/right happens when batching (`padded_batch`), which writes each image straight
  into the batch: a separate pad costs a third of the per-image time.
  """
  fits = (size[0] <= canvas[0]) & (size[1] <= canvas[1])
  message = tf.strings.join(['Image ', name, ' resized to ', tf.strings.as_string(size[0]), 'x',
                             tf.strings.as_string(size[1]),
                             f' does not fit its canvas {canvas[0]}x{canvas[1]}; enlarge data.canvases.'])
  with tf.control_dependencies([tf.debugging.Assert(fits, [message])]):
    return tf.identity(size)


def pad_boxes(boxes, labels, max_boxes):
  """Pads the GT to `max_boxes` slots; with more boxes the largest are kept (in their original order).

  Returns boxes [G, 4] (padded slots zero), labels [G] (padded -1), valid [G] bool, and the number dropped.
  """
  n = tf.shape(boxes)[0]
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  keep = tf.sort(tf.math.top_k(area, tf.minimum(n, max_boxes)).indices)
  boxes, labels = tf.gather(boxes, keep), tf.gather(labels, keep)
  pad = max_boxes - tf.shape(keep)[0]
  boxes = tf.pad(boxes, [[0, pad], [0, 0]])
  labels = tf.pad(labels, [[0, pad]], constant_values=-1)
  valid = tf.range(max_boxes) < tf.shape(keep)[0]
  boxes.set_shape([max_boxes, 4])
  labels.set_shape([max_boxes])
  return boxes, labels, valid, tf.maximum(n - max_boxes, 0)


def prepare(example, short, max_size, flip, canvas, max_boxes, mode, resize_image=True):
  """Canonical example -> one batch element for `canvas` (H, W) (the batch contract without the batch axis).

  `short` and `flip` may be tensors (drawn per image); `mode` is data.resize_mode (`resized_size`). Returns `image`
  uint8 [h', w', 3] (resized, fitting the canvas; zero padded to it when batched), `boxes` float32 [G, 4], `labels`
  int32 [G], `valid` bool [G], `image_id` int32, `scale` float32 [2] (sy, sx), `orig_size` int32 [2],
  `size` int32 [2] (resized h, w) and `dropped_boxes` int32 (GT boxes beyond `max_boxes`).
  Without `resize_image` (the device resizes, see fcos_jax.resize), `image` is the decoded image [h, w, 3] as it is,
  and `flip` bool says whether the device must mirror it; everything else is the same, the boxes bit for bit.
  """
  image, boxes, orig_size = example['image'], example['boxes'], example['orig_size']
  flip = tf.convert_to_tensor(flip)
  extra = {}
  if resize_image:
    # Flip first, as PaddleDetection does: with the grid of the scale itself, mirroring the resized image instead
    # would sample other points wherever new != s * old.
    image, boxes = tf.cond(flip, lambda: hflip(image, boxes), lambda: (image, boxes))
    image, boxes, scale = resize(image, boxes, short, max_size, mode)
    size = tf.shape(image)[:2]
  else:
    boxes = tf.cond(flip, lambda: hflip_boxes(boxes, orig_size[1]), lambda: boxes)
    size, scale, extent = resized_size(orig_size, short, max_size, mode)
    boxes = scale_boxes(boxes, scale, extent)
    extra['flip'] = flip
  size = fit_canvas(size, canvas, example['file'])
  boxes, labels, valid, dropped = pad_boxes(boxes, example['labels'], max_boxes)
  return {'image': image, 'boxes': boxes, 'labels': labels, 'valid': valid, 'image_id': example['image_id'],
          'scale': scale, 'orig_size': orig_size, 'size': size, 'dropped_boxes': dropped, **extra}
