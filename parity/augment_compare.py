"""data.augment's ops against PaddleDetection's own, on the same image and the same random draw.

    python parity/augment_compare.py WORK                  # fcos_jax's ops on generated cases -> WORK/augment_cases.npz
    .venv-paddle/bin/python parity/paddle_augment.py WORK   # ppdet's ops on them, same draws; compares, exits 1 on failure

For each op setting (PaddleDetection's defaults and variants) and 40 seeds, a photo-like image (smooth colour fields
and noise; landscape, portrait and odd sizes) with boxes, some at or across the edges and a few tiny ones, and once
an image without boxes. fcos_jax draws its numbers (`augment.<Op>.draws`), plans and applies the op; ppdet's op is
then run with np.random replaced by a stand-in that serves those numbers in the order ppdet asks for them
(tests/augment_reference.py). Limits: boxes and labels identical, pixels within 1 level of ppdet's float image
rounded and clipped to uint8 (fcos_jax keeps uint8 images).
"""

import os
import sys

import numpy as np
import tensorflow as tf

from fcos_jax.data import augment

SPECS = ('RandomDistort', 'RandomDistort(random_apply=False)', 'RandomDistort(count=2)',
         'RandomDistort(hue=[-0.5, 0.5, 0.3], brightness=[-32, 32, 0.3])', 'RandomExpand',
         'RandomExpand(ratio=1.5, prob=0.2, fill_value=[0, 100, 255])', 'RandomCrop', 'RandomCrop(aspect_ratio=None)',
         'RandomCrop(cover_all_box=True)', 'RandomCrop(allow_no_crop=False, thresholds=[0.5, 0.7], num_attempts=5)',
         'RandomCrop(scaling=[0.1, 0.3])')
SEEDS = 40
SIZES = ((120, 160), (160, 120), (97, 211), (128, 128))


def photo(rng, h, w):
  coarse = rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2, 3))
  image = np.kron(coarse, np.ones((16, 16, 1)))[:h, :w] + rng.normal(0, 10, (h, w, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def boxes_for(rng, h, w, n):
  x1, y1 = rng.uniform(-0.1, 0.9, n) * w, rng.uniform(-0.1, 0.9, n) * h
  boxes = np.stack([x1, y1, x1 + rng.uniform(2, 0.6 * w, n), y1 + rng.uniform(2, 0.6 * h, n)], 1)
  boxes = np.clip(np.round(boxes * 4) / 4, 0, [w, h, w, h]).astype(np.float32)
  return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def main(work):
  out = {}
  for s, spec in enumerate(SPECS):
    op = augment.make_ops(spec)[0]
    for seed in range(SEEDS + 1):
      rng = np.random.default_rng([s, seed])
      h, w = SIZES[seed % len(SIZES)]
      image = photo(rng, h, w)
      boxes = boxes_for(rng, h, w, rng.integers(1, 12)) if seed < SEEDS else np.zeros([0, 4], np.float32)
      labels = rng.integers(0, 80, len(boxes)).astype(np.int32)
      key = f'{s}/{seed}'
      tf_seed = tf.constant([s, seed], tf.int64)
      params, _, new_boxes, new_labels = op.plan(tf_seed, tf.constant([h, w]), tf.constant(boxes), tf.constant(labels))
      draws = op.draws(tf_seed)
      for name, value in (draws.items() if isinstance(draws, dict) else [('u', draws)]):
        out[f'{key}/draw/{name}'] = value.numpy()
      out.update({f'{key}/spec': np.array(spec), f'{key}/image': image, f'{key}/boxes': boxes,
                  f'{key}/labels': labels, f'{key}/ours/image': op.apply(tf.constant(image), params).numpy(),
                  f'{key}/ours/boxes': new_boxes.numpy(), f'{key}/ours/labels': new_labels.numpy()})
  np.savez(os.path.join(work, 'augment_cases.npz'), **out)
  print(f'{len(SPECS)} op settings x {SEEDS + 1} cases -> {work}/augment_cases.npz')


if __name__ == '__main__':
  os.makedirs(sys.argv[1], exist_ok=True)
  main(sys.argv[1])
