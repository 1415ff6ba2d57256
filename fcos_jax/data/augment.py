"""Augmentation for small datasets (`data.augment`, syntax in `augment_spec`): PaddleDetection's RandomDistort,
RandomExpand and RandomCrop, a vertical flip and 90-degree rotations, in TensorFlow ops before the flip and resize.

Each op is split in two. `plan` draws its random numbers from a stateless seed and moves the boxes, from the image
size alone (no pixels): the training pipeline plans every record before it picks the record's canvas bucket (a crop
or a rotation may turn a landscape image into a portrait one). `apply` then does the same to the pixels with the
drawn parameters. The draws are uniform [0, 1) float64 numbers, used as PaddleDetection uses NumPy's:
U(low, high) = low + (high - low) * u, randint(0, n) = floor(u * n), a permutation = the argsort of uniforms.
Images stay uint8: a colour change is rounded and clipped to [0, 255] (PaddleDetection keeps floats).
"""

import math

import numpy as np
import tensorflow as tf

from fcos_jax.data import augment_spec

_GRAY = (0.299, 0.587, 0.114)  # PaddleDetection's luma weights (saturation and the YIQ transform).
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.321), (0.211, -0.523, 0.311))
_YIQ_TO_RGB = ((1.0, 0.956, 0.621), (1.0, -0.272, -0.647), (1.0, -1.107, 1.705))


def uniforms(seed, shape):
  """Uniform [0, 1) float64 draws of `shape` from the stateless `seed` [2]."""
  return tf.random.stateless_uniform(shape, seed, dtype=tf.float64)


def _affine(matrix, offset):
  """4x4 float64 homogeneous map of row vectors: [r, g, b, 1] @ M = [[r, g, b] @ matrix + offset, 1]."""
  top = tf.concat([tf.cast(matrix, tf.float64), tf.zeros([3, 1], tf.float64)], 1)
  bottom = tf.concat([tf.reshape(tf.cast(offset, tf.float64), [1, 3]), tf.ones([1, 1], tf.float64)], 1)
  return tf.concat([top, bottom], 0)


def distort_matrices(delta):
  """[4, 4, 4] affine colour maps (`_affine`) of brightness, contrast, saturation and hue, PaddleDetection's order,
  for their `delta` [4] float64: x + d; x * d; d * x + (1 - d) * gray(x); x @ T(d), T the rotation of I and Q by
  d * pi (radians, as PaddleDetection computes it) in YIQ."""
  eye = tf.eye(3, dtype=tf.float64)
  gray = tf.constant(_GRAY, tf.float64)[:, None] * tf.ones([1, 3], tf.float64)
  u, w = tf.cos(delta[3] * math.pi), tf.sin(delta[3] * math.pi)
  zero, one = tf.zeros([], tf.float64), tf.ones([], tf.float64)
  rotation = tf.stack([tf.stack([one, zero, zero]), tf.stack([zero, u, -w]), tf.stack([zero, w, u])])
  hue = tf.transpose(tf.constant(_YIQ_TO_RGB, tf.float64) @ rotation @ tf.constant(_RGB_TO_YIQ, tf.float64))
  return tf.stack([_affine(eye, tf.fill([3], delta[0])), _affine(delta[1] * eye, tf.zeros([3])),
                   _affine(delta[2] * eye + (1 - delta[2]) * gray, tf.zeros([3])), _affine(hue, tf.zeros([3]))])


class RandomDistort:
  """PaddleDetection's RandomDistort (random_channel off): colour only, the boxes do not move."""

  def __init__(self, brightness, contrast, saturation, hue, random_apply, count):
    self.settings = np.array([brightness, contrast, saturation, hue], np.float64)  # [low, high, prob] each.
    self.random_apply, self.count = random_apply, count

  def draws(self, seed):
    """{'skip' [4], 'delta' [4] (per function, PaddleDetection's order), 'order' [4] (a permutation), 'mode' []}:
    function f is skipped when skip[f] < its prob, else its delta is U(low, high) by delta[f]; random_apply applies
    the functions order[:count] in that order, otherwise brightness, contrast (if floor(2 * mode)), saturation,
    hue, contrast (if not)."""
    u = uniforms(seed, [4, 2])
    order = tf.argsort(uniforms(tf.random.experimental.stateless_fold_in(seed, 1), [4]), stable=True)
    mode = uniforms(tf.random.experimental.stateless_fold_in(seed, 2), [])
    return {'skip': u[:, 0], 'delta': u[:, 1], 'order': tf.cast(order, tf.int32), 'mode': mode}

  def plan(self, seed, size, boxes, labels):
    draw = self.draws(seed)
    low, high, prob = (tf.constant(self.settings[:, i]) for i in range(3))
    maps = distort_matrices(low + (high - low) * draw['delta'])
    maps = tf.where((draw['skip'] < prob)[:, None, None], tf.eye(4, dtype=tf.float64)[None], maps)
    if self.random_apply:
      steps = [(draw['order'][i], True) for i in range(self.count)]
    else:
      contrast_first = tf.floor(2 * draw['mode']) > 0
      steps = [(0, True), (1, contrast_first), (2, True), (3, True), (1, ~contrast_first)]
    total = tf.eye(4, dtype=tf.float64)
    for function, applies in steps:
      total = tf.where(applies, total @ tf.gather(maps, function), total)
    return {'colour': total}, size, boxes, labels

  def apply(self, image, params):
    total = tf.cast(params['colour'], tf.float32)
    pixels = tf.tensordot(tf.cast(image, tf.float32), total[:3, :3], 1) + total[3, :3]
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)


class RandomExpand:
  """PaddleDetection's RandomExpand: the image at offset (y, x) on an (H, W) canvas of `fill_value`."""

  def __init__(self, ratio, prob, fill_value):
    self.ratio, self.prob = float(ratio), float(prob)
    fill = fill_value if isinstance(fill_value, (tuple, list)) else (fill_value,) * 3
    self.fill = tuple(int(np.round(v)) for v in fill)  # uint8 canvas: 127.5 -> 128.

  @staticmethod
  def draws(seed):
    """u [4]: skip (expand when >= prob), ratio, y, x."""
    return uniforms(seed, [4])

  def plan(self, seed, size, boxes, labels):
    u = self.draws(seed)
    hw = tf.cast(size, tf.float64)
    ratio = 1 + (self.ratio - 1) * u[1]
    canvas = tf.cast(tf.floor(hw * ratio), tf.int32)
    expand = (u[0] >= self.prob) & tf.reduce_all(canvas > size)
    offset = tf.where(expand, tf.cast(tf.floor(u[2:] * tf.cast(canvas - size, tf.float64)), tf.int32), 0)
    canvas = tf.where(expand, canvas, size)
    y, x = tf.unstack(tf.cast(offset, tf.float32))
    return {'offset': offset, 'canvas': canvas}, canvas, boxes + tf.stack([x, y, x, y]), labels

  def apply(self, image, params):
    (y, x), size = tf.unstack(params['offset']), tf.shape(image)[:2]
    pad = [[y, params['canvas'][0] - size[0] - y], [x, params['canvas'][1] - size[1] - x]]
    return tf.stack([tf.pad(image[..., c], pad, constant_values=v) for c, v in enumerate(self.fill)], -1)


def iou_matrix(boxes, crops):
  """IoU float32 [..., N] of `boxes` [N, 4] with `crops` [..., 4], as PaddleDetection's RandomCrop computes it."""
  crops = crops[..., None, :]
  low, high = tf.maximum(boxes[:, :2], crops[..., :2]), tf.minimum(boxes[:, 2:], crops[..., 2:])
  inter = (high - low)[..., 0] * (high - low)[..., 1] * tf.cast(tf.reduce_all(low < high, -1), tf.float32)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  crop_area = (crops[..., 2] - crops[..., 0]) * (crops[..., 3] - crops[..., 1])
  return inter / (area + crop_area - inter + 1e-10)


def crop_boxes(boxes, crop):
  """`boxes` [N, 4] clipped to `crop` [..., 4] (float32 xyxy) in its coordinates, and whether each is kept
  [..., N]: its centre in the crop (left/top edge included) and a positive size left."""
  crop = crop[..., None, :]
  clipped = tf.concat([tf.maximum(boxes[:, :2], crop[..., :2]), tf.minimum(boxes[:, 2:], crop[..., 2:])], -1)
  clipped -= tf.concat([crop[..., :2], crop[..., :2]], -1)
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  keep = tf.reduce_all((crop[..., :2] <= centre) & (centre < crop[..., 2:]), -1)
  return clipped, keep & tf.reduce_all(clipped[..., :2] < clipped[..., 2:], -1)


class RandomCrop:
  """PaddleDetection's RandomCrop (boxes, no masks), every attempt drawn at once: row p of the draws is the p-th
  threshold tried (its order a random permutation of `thresholds` and 'no crop'), column a its a-th attempt."""

  def __init__(self, aspect_ratio, thresholds, scaling, num_attempts, allow_no_crop, cover_all_box):
    self.aspect_ratio = aspect_ratio
    self.thresholds = tuple(float(t) for t in thresholds) + ((math.inf,) if allow_no_crop else ())  # inf: no crop.
    self.scaling, self.attempts, self.cover_all_box = scaling, num_attempts, cover_all_box

  def draws(self, seed):
    """{'order' [T] (the thresholds' permutation; 'no crop' is the last threshold), 'u' [T, attempts, 5]: (scale,
    aspect, -, y, x), or without aspect_ratio (scale, h scale, w scale, y, x): PaddleDetection draws the scale
    there too, unused}."""
    order = tf.argsort(uniforms(tf.random.experimental.stateless_fold_in(seed, 1), [len(self.thresholds)]),
                       stable=True)
    return {'order': tf.cast(order, tf.int32), 'u': uniforms(seed, [len(self.thresholds), self.attempts, 5])}

  def candidates(self, u, size):
    """Crops [T, A, 4] int32 xyxy of draws `u` [T, A, 5] in an image of `size` [2], and whether each passed the
    aspect check (only without aspect_ratio) [T, A]."""
    low, high = self.scaling
    if self.aspect_ratio is not None:
      scale = low + (high - low) * u[..., 0]
      ar_low = tf.maximum(tf.constant(self.aspect_ratio[0], tf.float64), scale**2)
      ar_high = tf.minimum(tf.constant(self.aspect_ratio[1], tf.float64), scale**-2)
      aspect = ar_low + (ar_high - ar_low) * u[..., 1]
      h_scale, w_scale = scale / tf.sqrt(aspect), scale * tf.sqrt(aspect)
      shaped = tf.ones_like(scale, bool)
    else:
      h_scale, w_scale = low + (high - low) * u[..., 1], low + (high - low) * u[..., 2]
    hw = tf.cast(size, tf.float64)
    crop_h, crop_w = hw[0] * h_scale, hw[1] * w_scale
    if self.aspect_ratio is None:
      shaped = (crop_h / crop_w >= 0.5) & (crop_h / crop_w <= 2.0)
    crop_h, crop_w = tf.floor(crop_h), tf.floor(crop_w)
    y, x = tf.floor(u[..., 3] * (hw[0] - crop_h)), tf.floor(u[..., 4] * (hw[1] - crop_w))
    return tf.cast(tf.stack([x, y, x + crop_w, y + crop_h], -1), tf.int32), shaped

  def plan(self, seed, size, boxes, labels):
    draw = self.draws(seed)
    crops, shaped = self.candidates(draw['u'], size)
    threshold = tf.gather(tf.constant(self.thresholds, tf.float64), draw['order'])[:, None]  # [T, 1]
    # Compared in float64 as NumPy compares a float32 IoU with a Python float; without boxes the max is -inf.
    iou = tf.cast(iou_matrix(boxes, tf.cast(crops, tf.float32)), tf.float64)
    ok = shaped & (tf.reduce_max(iou, -1) >= threshold)
    if self.cover_all_box:
      ok &= tf.reduce_min(iou, -1) >= threshold
    _, keep = crop_boxes(boxes, tf.cast(crops, tf.float32))
    ok &= tf.reduce_any(keep, -1)
    row_done = tf.reduce_any(ok, 1) | tf.math.is_inf(threshold[:, 0])  # Found a crop, or 'no crop' came up.
    row = tf.argmax(tf.cast(row_done, tf.int32), output_type=tf.int32)
    attempt = tf.argmax(tf.cast(ok[row], tf.int32), output_type=tf.int32)
    cropped = tf.reduce_any(row_done) & ok[row, attempt]
    crop = crops[row, attempt]
    clipped, keep = crop_boxes(boxes, tf.cast(crop, tf.float32))
    keep = keep | ~cropped
    boxes = tf.boolean_mask(tf.where(cropped, clipped, boxes), keep)
    window = tf.where(cropped, crop, tf.stack([0, 0, size[1], size[0]]))
    return ({'window': window}, tf.stack([window[3] - window[1], window[2] - window[0]]), boxes,
            tf.boolean_mask(labels, keep))

  def apply(self, image, params):
    x1, y1, x2, y2 = tf.unstack(params['window'])
    return image[y1:y2, x1:x2]


class VerticalFlip:
  """Upside down with probability `prob` (u < prob, as PaddleDetection's RandomFlip decides): y' = h - y."""

  def __init__(self, prob):
    self.prob = prob

  @staticmethod
  def draws(seed):
    """u []: flip when < prob."""
    return uniforms(seed, [])

  def plan(self, seed, size, boxes, labels):
    flip = self.draws(seed) < self.prob
    h = tf.cast(size[0], tf.float32)
    flipped = tf.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], -1)
    return {'flip': flip}, size, tf.where(flip, flipped, boxes), labels

  def apply(self, image, params):
    return tf.cond(params['flip'], lambda: tf.reverse(image, [0]), lambda: image)


class Rotate90:
  """Rotated counter-clockwise k times by 90 degrees (np.rot90's direction), k = floor(4 u): in an image w wide,
  (x, y) -> (y, w - x)."""

  @staticmethod
  def draws(seed):
    """u []: floor(4 u) turns."""
    return uniforms(seed, [])

  def plan(self, seed, size, boxes, labels):
    k = tf.cast(tf.floor(4 * self.draws(seed)), tf.int32)
    for turn in range(3):
      w = tf.cast(size[1], tf.float32)
      turned = tf.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], -1)
      boxes, size = tf.where(turn < k, turned, boxes), tf.where(turn < k, tf.stack([size[1], size[0]]), size)
    return {'turns': k}, size, boxes, labels

  @staticmethod
  def apply(image, params):
    return tf.image.rot90(image, params['turns'])


_OPS = {'RandomDistort': RandomDistort, 'RandomExpand': RandomExpand, 'RandomCrop': RandomCrop,
        'VerticalFlip': VerticalFlip, 'Rotate90': Rotate90}


def make_ops(spec):
  """The ops of a `data.augment` string, in order (() for '')."""
  return tuple(_OPS[name](**params) for name, params in augment_spec.parse(spec))


def plan(ops, seed, record):
  """`record` (see `sources`) with its boxes and labels as `ops` leave them and `augment`: the size of the image
  they make and each op's parameters; op i draws from fold_in(`seed` [2], i)."""
  size, boxes, labels, params = record['orig_size'], record['boxes'], record['labels'], []
  for i, op in enumerate(ops):
    drawn, size, boxes, labels = op.plan(tf.random.experimental.stateless_fold_in(seed, i), size, boxes, labels)
    params.append(drawn)
  return {**record, 'boxes': boxes, 'labels': labels, 'augment': {'size': size, 'ops': tuple(params)}}


def apply(ops, example, augment):
  """The decoded `example` (its boxes and labels already planned) with the pixels of the `plan`'s `augment`."""
  image = example['image']
  for op, params in zip(ops, augment['ops']):
    image = op.apply(image, params)
  return {**example, 'image': image, 'orig_size': augment['size']}
