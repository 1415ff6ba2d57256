"""OpenCV's INTER_LINEAR resize of uint8 images (`cv2.resize(image, None, fx=sx, fy=sy)`), re-derived in NumPy for
the tests: the reference that PaddleDetection's Resize runs, without needing OpenCV.

Per axis, output pixel o samples the input at f = float32((o + 0.5) / scale - 0.5); taps floor(f) and floor(f) + 1
with weights 1 - frac and frac, each rounded to 11 bits (x 2048); below 0 or at/after the last pixel, the edge pixel
alone. Rows then columns in integers, the sum rounded off 22 bits. OpenCV's vectorised rows drop some low bits
before that rounding, so cv2 itself lies within 1 level of this (parity/reader_compare.py measures it).
"""

import numpy as np


def taps(out_len, in_len, scale):
  """(lower [n], upper [n], weight of lower [n], weight of upper [n]): int64 indices and 11-bit weights."""
  source = ((np.arange(out_len) + 0.5) * (1.0 / scale) - 0.5).astype(np.float32)
  lower = np.floor(source).astype(np.int64)
  frac = source - lower.astype(np.float32)
  edge = (lower < 0) | (lower >= in_len - 1)
  frac[edge] = 0
  lower = np.clip(lower, 0, in_len - 1)
  w_upper = np.rint(frac * 2048).astype(np.int64)
  w_lower = np.rint((np.float32(1) - frac) * 2048).astype(np.int64)
  return lower, np.minimum(lower + 1, in_len - 1), w_lower, w_upper


def resize(image, out_hw, scale):
  """uint8 `image` [h, w, C] -> uint8 [out_h, out_w, C] sampled with `scale` (sy, sx)."""
  y0, y1, b0, b1 = taps(out_hw[0], image.shape[0], scale[0])
  x0, x1, a0, a1 = taps(out_hw[1], image.shape[1], scale[1])
  pixels = image.astype(np.int64)
  rows = pixels[:, x0] * a0[None, :, None] + pixels[:, x1] * a1[None, :, None]
  value = rows[y0] * b0[:, None, None] + rows[y1] * b1[:, None, None]
  return ((value + (1 << 21)) >> 22).astype(np.uint8)


def output_size(h, w, scale):
  """cv2.resize's output size for fx = fy = `scale`: each side times the scale, rounded half to even (cvRound)."""
  return round(h * scale), round(w * scale)
