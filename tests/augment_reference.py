"""NumPy re-derivation of the augmentation ops: PaddleDetection's RandomDistort, RandomExpand and RandomCrop (their
formulas and control flow, drawing one number at a time from an `rng` with np.random's interface), the vertical
flip and the 90-degree rotation; and the np.random stand-ins that serve fcos_jax's draws (`augment.<Op>.draws`) in
the order these ops consume them, which also makes ppdet's own ops draw the same numbers (parity/augment_compare.py).
NumPy only: it runs in the PaddlePaddle environment too.
"""

import numpy as np

GRAY = np.array([0.299, 0.587, 0.114], np.float32)
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
YIQ_TO_RGB = np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.107, 1.705]])


class SequenceRandom:
  """np.random stand-in: `uniform` and `randint` take the next of `values` (uniform [0, 1) numbers),
  U(low, high) = low + (high - low) u and randint(low, high) = low + floor((high - low) u); `permutation` and
  `shuffle` put the items in `order`."""

  def __init__(self, values, order=()):
    self.values, self.order, self.used = [float(v) for v in values], [int(i) for i in order], 0

  def next(self):
    self.used += 1
    return np.float64(self.values[self.used - 1])

  def uniform(self, low=0.0, high=1.0):
    return low + (high - low) * self.next()

  def randint(self, low, high):
    return low + int(np.floor((high - low) * self.next()))

  def permutation(self, items):
    items = list(range(items)) if isinstance(items, int) else list(items)
    out = np.empty(len(items), object)
    out[:] = [items[i] for i in self.order]
    return out

  def shuffle(self, items):
    items[:] = [items[i] for i in self.order]


class AttemptRandom(SequenceRandom):
  """np.random stand-in for RandomCrop's draws `u` [T, A, 5]: attempt g (counted over the thresholds tried, A per
  threshold) takes u[g // A, g % A]: its `uniform`s columns 0, 1 (and 2 without aspect_ratio: `uniforms` = 3),
  its two `randint`s columns 3 and 4. A `uniform` after a `randint`, or after `uniforms` of them (an attempt
  rejected for its shape), starts the next attempt. `shuffle` puts the thresholds in `order`."""

  def __init__(self, order, u, uniforms=2):
    super().__init__((), order)
    self.u, self.uniforms, self.attempt, self.column = np.asarray(u, np.float64), uniforms, -1, None

  def _take(self, column):
    row, attempt = divmod(self.attempt, self.u.shape[1])
    self.column = column
    return self.u[row, attempt, column]

  def uniform(self, low=0.0, high=1.0):
    if self.column is None or self.column >= self.uniforms - 1:
      self.attempt, self.column = self.attempt + 1, -1
    return low + (high - low) * self._take(self.column + 1)

  def randint(self, low, high):
    return low + int(np.floor((high - low) * self._take(max(self.column + 1, 3))))


def distort_random(draws, params):
  """The stand-in that serves RandomDistort's `draws` {'skip', 'delta', 'order', 'mode'} in ppdet's order."""
  probs = [params[name][2] for name in ('brightness', 'contrast', 'saturation', 'hue')]
  skip, delta = draws['skip'], draws['delta']

  def calls(f):
    return [skip[f]] + ([] if skip[f] < probs[f] else [delta[f]])

  if params['random_apply']:
    values = [v for f in draws['order'][:params['count']] for v in calls(f)]
  else:
    contrast_first = int(np.floor(2 * draws['mode'])) > 0
    values = calls(0) + [draws['mode']] + (calls(1) if contrast_first else []) + calls(2) + calls(3) + (
        [] if contrast_first else calls(1))
  return SequenceRandom(values, draws['order'])


def distort(image, params, rng):
  """RandomDistort of uint8 `image`: float32 (hue float64), not rounded nor clipped, as PaddleDetection leaves it."""
  def brightness(img):
    low, high, prob = params['brightness']
    return img if rng.uniform(0., 1.) < prob else img + np.float32(rng.uniform(low, high))

  def contrast(img):
    low, high, prob = params['contrast']
    return img if rng.uniform(0., 1.) < prob else img * np.float32(rng.uniform(low, high))

  def saturation(img):
    low, high, prob = params['saturation']
    if rng.uniform(0., 1.) < prob:
      return img
    d = np.float32(rng.uniform(low, high))
    gray = (img * GRAY).sum(axis=2, keepdims=True)
    return img * d + gray * (np.float32(1) - d)

  def hue(img):
    low, high, prob = params['hue']
    if rng.uniform(0., 1.) < prob:
      return img
    angle = rng.uniform(low, high) * np.pi
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    return img @ (YIQ_TO_RGB @ rotation @ RGB_TO_YIQ).T

  functions = [brightness, contrast, saturation, hue]
  img = image.astype(np.float32)
  if params['random_apply']:
    for f in rng.permutation(4)[:params['count']]:
      img = functions[f](img)
    return img
  img = brightness(img)
  contrast_first = rng.randint(0, 2)
  img = contrast(img) if contrast_first else img
  img = hue(saturation(img))
  return img if contrast_first else contrast(img)


def expand(image, boxes, params, rng):
  """RandomExpand: (float32 image, boxes)."""
  if rng.uniform(0., 1.) < params['prob']:
    return image.astype(np.float32), boxes
  h, w = image.shape[:2]
  ratio = rng.uniform(1., params['ratio'])
  big_h, big_w = int(h * ratio), int(w * ratio)
  if big_h <= h or big_w <= w:
    return image.astype(np.float32), boxes
  y, x = rng.randint(0, big_h - h), rng.randint(0, big_w - w)
  canvas = np.empty((big_h, big_w, 3), np.float32)
  canvas[:] = np.broadcast_to(np.float32(params['fill_value']), (3,))
  canvas[y:y + h, x:x + w] = image
  return canvas, boxes + np.float32([x, y, x, y])


def iou_with(boxes, crop):
  """IoU float32 [N] of `boxes` [N, 4] with one `crop` [4], float32 throughout."""
  wh = np.clip(np.minimum(boxes[:, 2:], crop[2:]) - np.maximum(boxes[:, :2], crop[:2]), 0, None)
  inter = wh[:, 0] * wh[:, 1]
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  union = area + (crop[2] - crop[0]) * (crop[3] - crop[1]) - inter
  return inter / (union + np.float32(1e-10))


def crop(image, boxes, labels, params, rng):
  """RandomCrop: (image, boxes, labels); boxes whose centre leaves the crop go with their labels."""
  if not len(boxes):
    return image, boxes, labels
  h, w = image.shape[:2]
  thresholds = list(params['thresholds']) + (['no_crop'] if params['allow_no_crop'] else [])
  rng.shuffle(thresholds)
  for threshold in thresholds:
    if threshold == 'no_crop':
      return image, boxes, labels
    for _ in range(params['num_attempts']):
      scale = rng.uniform(*params['scaling'])  # Drawn (and unused) without aspect_ratio too, as ppdet does.
      if params['aspect_ratio'] is None:
        h_scale, w_scale = rng.uniform(*params['scaling']), rng.uniform(*params['scaling'])
        if not 0.5 <= (h * h_scale) / (w * w_scale) <= 2.0:
          continue
      else:
        low, high = params['aspect_ratio']
        aspect = rng.uniform(max(low, scale**2), min(high, scale**-2))
        h_scale, w_scale = scale / np.sqrt(aspect), scale * np.sqrt(aspect)
      crop_h, crop_w = int(h * h_scale), int(w * w_scale)
      y, x = rng.randint(0, h - crop_h), rng.randint(0, w - crop_w)
      window = np.float32([x, y, x + crop_w, y + crop_h])
      iou = iou_with(boxes, window)
      if iou.max() < threshold or (params['cover_all_box'] and iou.min() < threshold):
        continue
      centre = (boxes[:, :2] + boxes[:, 2:]) / np.float32(2)
      clipped = np.concatenate([np.maximum(boxes[:, :2], window[:2]), np.minimum(boxes[:, 2:], window[2:])], 1)
      clipped -= np.tile(window[:2], 2)
      keep = ((window[:2] <= centre) & (centre < window[2:])).all(1) & (clipped[:, :2] < clipped[:, 2:]).all(1)
      if keep.any():
        return image[y:y + crop_h, x:x + crop_w], clipped[keep], labels[keep]
  return image, boxes, labels


def vertical_flip(image, boxes, params, rng):
  if rng.uniform(0., 1.) >= params['prob']:
    return image, boxes
  h = np.float32(image.shape[0])
  return image[::-1], np.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], 1)


def rotate90(image, boxes, rng):
  """np.rot90 k = randint(0, 4) times; a point (x, y) of an image w wide goes to (y, w - x) each time."""
  for _ in range(rng.randint(0, 4)):
    w = np.float32(image.shape[1])
    image, boxes = np.rot90(image), np.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], 1)
  return image, boxes
