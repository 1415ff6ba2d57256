"""The random inputs every side-by-side benchmark feeds both implementations (NumPy only)."""

import numpy as np


def random_batch(batch, canvas, num_boxes, seed=0):
  """A training batch in fcos_jax's contract: uint8 images [B, H, W, 3] and `num_boxes` boxes per image, log-uniform
  sizes from 16 px to 60% of the short side (every FPN level gets positives)."""
  rng = np.random.default_rng(seed)
  h, w = canvas
  xy = rng.uniform(0, [w * 0.8, h * 0.8], (batch, num_boxes, 2))
  wh = np.exp(rng.uniform(np.log(16), np.log(min(h, w) * 0.6), (batch, num_boxes, 2)))
  boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(np.float32)
  return {'image': rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8), 'boxes': boxes,
          'labels': rng.integers(0, 80, (batch, num_boxes)).astype(np.int32),
          'valid': np.ones((batch, num_boxes), bool), 'size': np.tile(np.array([[h, w]], np.int32), (batch, 1))}
