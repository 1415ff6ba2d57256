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
  hw = tf.cast(size, tf.float64)
  s = tf.minimum(tf.cast(short, tf.float64) / tf.reduce_min(hw), float(max_size) / tf.reduce_max(hw))
  if mode == 'paddle':
    new = tf.maximum(tf.cast(tf.round(s * hw), tf.int32), 1)
    return new, tf.cast(tf.stack([s, s]), tf.float32), tf.cast(s * hw, tf.float32)
  if mode == 'torchvision':
    new = tf.maximum(tf.cast(tf.floor(s * hw), tf.int32), 1)
    return new, tf.cast(tf.cast(new, tf.float64) / hw, tf.float32), tf.cast(new, tf.float32)
  raise ValueError(f"resize mode {mode!r} must be 'paddle' or 'torchvision'")


def scale_boxes(boxes, scale, extent):
  """`boxes` [N, 4] times `scale` [2] (sy, sx) in float32, as PaddleDetection scales them, clipped to `extent` [2]
  (h, w) of the resized image."""
  sy, sx = tf.unstack(scale)
  boxes = boxes * tf.stack([sx, sy, sx, sy])
  return tf.clip_by_value(boxes, 0.0, tf.stack([extent[1], extent[0], extent[1], extent[0]]))


def _taps(out_len, in_len, scale):
  """Source taps of one axis: (lower [n] int32, upper [n] int32, weight of upper [n] float32), n = `out_len`.

  Output pixel o samples the input at (o + 0.5) * (1 / scale) - 0.5, OpenCV's INTER_LINEAR grid; lower =
  max(floor, 0), upper = min(floor + 1, in_len - 1), so the edge pixels repeat (fcos_jax.resize has the same taps).
  """
  source = (tf.range(out_len, dtype=tf.float32) + 0.5) * (1 / scale) - 0.5
  floor = tf.floor(source)
  last = tf.cast(in_len - 1, tf.float32)
  lower = tf.cast(tf.clip_by_value(floor, 0.0, last), tf.int32)
  upper = tf.cast(tf.clip_by_value(floor + 1, 0.0, last), tf.int32)
  return lower, upper, source - floor


def resize(image, boxes, short, max_size, mode):
  """Bilinear resize of uint8 `image` [h, w, 3] per `resized_size`; `boxes` [N, 4] scaled and clipped with it.

  Output pixel o samples the input at (o + 0.5) / scale - 0.5 on each axis, edge pixels repeated: OpenCV's
  INTER_LINEAR grid (whose 11-bit weights keep it within 1 level of this float arithmetic), rounded to uint8.
  tf.image.resize cannot do it (it samples with new / old). The arithmetic is the device path's
  (`fcos_jax.resize`), so that both give the same pixels.
  Returns (image uint8 [h', w', 3], boxes [N, 4], scale float32 [2] (sy, sx)).
  """
  shape = tf.shape(image)
  new, scale, extent = resized_size(shape[:2], short, max_size, mode)
  y0, y1, wy = _taps(new[0], shape[0], scale[0])
  x0, x1, wx = _taps(new[1], shape[1], scale[1])
  # Along the rows first, on the input's h rows; then between the rows.
  left = tf.cast(tf.gather(image, x0, axis=1), tf.float32)
  right = tf.cast(tf.gather(image, x1, axis=1), tf.float32)
  rows = left + (right - left) * wx[None, :, None]
  top, bottom = tf.gather(rows, y0), tf.gather(rows, y1)
  value = top + (bottom - top) * wy[:, None, None] + 0.5  # In [0.5, 255.5]: truncation rounds.
  return tf.cast(value, tf.uint8), scale_boxes(boxes, scale, extent), scale


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
