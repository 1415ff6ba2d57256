"""A small COCO-format dataset of real JPEGs with coloured shapes, for demos and tests.

Writes `out/annotations/instances_{train,val}.json` and `out/{train,val}/*.jpg`: images of varied size and orientation
(sides ~200-640 px) on noisy, textured backgrounds, with filled shapes of five classes in distinct colours at scales
from 8 px to most of the image, some overlapping, a few images without objects and a few `iscrowd=1` groups. Category
ids are non-contiguous so that the id <-> label mapping is exercised. The output is byte-identical for a seed.

    python -m fcos_jax.data.synthetic --out /tmp/shapes --num-train 400 --num-val 50
"""

import argparse
import os

import numpy as np

from fcos_jax import atomic
from fcos_jax.data import annotations

# (category id, name, RGB colour): ids deliberately non-contiguous.
CATEGORIES = (
    (1, 'rectangle', (220, 40, 40)),
    (3, 'ellipse', (40, 190, 60)),
    (7, 'triangle', (40, 80, 230)),
    (8, 'cross', (235, 215, 30)),
    (12, 'diamond', (210, 50, 210)),
)
SPLITS = {'train': (0, 1), 'val': (1_000_000, 2)}  # split -> (image id offset, seed stream)
MIN_OBJECT = 8  # Smallest object side in pixels.
EMPTY_EVERY, EMPTY_AT = 16, 5  # Image i has no objects when i % EMPTY_EVERY == EMPTY_AT.
CROWD_EVERY, CROWD_AT = 10, 3  # Image i has a crowd group when i % CROWD_EVERY == CROWD_AT.


def shape_mask(kind, h, w):
  """Boolean mask [h, w] of shape `kind` (a category name) filling an h x w box."""
  v = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
  u = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
  if kind == 'rectangle':
    return np.ones((h, w), bool)
  if kind == 'ellipse':
    return (2 * u - 1) ** 2 + (2 * v - 1) ** 2 <= 1
  if kind == 'triangle':
    return np.abs(u - 0.5) <= v / 2
  if kind == 'cross':
    return (np.abs(u - 0.5) <= 1 / 6) | (np.abs(v - 0.5) <= 1 / 6)
  if kind == 'diamond':
    return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
  raise ValueError(f'Unknown shape {kind!r}.')


def _background(rng, h, w):
  """Low-saturation noisy background [h, w, 3] float32: base grey, gradient, blocky texture and pixel noise."""
  base = rng.uniform(70, 180) + rng.uniform(-15, 15, size=3)
  gy, gx = rng.uniform(-40, 40, size=2)
  ramp = gy * np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None] + gx * np.linspace(-0.5, 0.5, w, dtype=np.float32)
  cell = int(rng.integers(8, 48))
  coarse = rng.standard_normal((h // cell + 1, w // cell + 1), dtype=np.float32) * rng.uniform(5, 20)
  texture = np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:h, :w]
  image = rng.integers(-12, 13, size=(h, w, 3), dtype=np.int8).astype(np.float32)
  image += (ramp + texture)[..., None]
  image += base.astype(np.float32)
  return image


def _paint(image, label, x, y, w, h):
  """Draws shape `label` into the box (x, y, w, h); returns its tight bbox [x, y, w, h] from the drawn mask."""
  _, kind, colour = CATEGORIES[label]
  mask = shape_mask(kind, h, w)
  image[y:y + h, x:x + w][mask] = colour
  rows, cols = np.nonzero(mask)
  return [x + int(cols.min()), y + int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]


def _random_box(rng, img_h, img_w, lo, hi):
  """A box (x, y, w, h) inside the image with a log-uniform size in [lo, hi] and aspect ratio in [1/2, 2]."""
  size = np.exp(rng.uniform(np.log(lo), np.log(hi)))
  ratio = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
  w = int(np.clip(round(size * np.sqrt(ratio)), lo, img_w))
  h = int(np.clip(round(size / np.sqrt(ratio)), lo, img_h))
  return int(rng.integers(0, img_w - w + 1)), int(rng.integers(0, img_h - h + 1)), w, h


def _crowd(image, rng):
  """A group of 4-8 small shapes of one class, annotated together as one crowd box [x, y, w, h]."""
  img_h, img_w = image.shape[:2]
  label = int(rng.integers(len(CATEGORIES)))
  gw, gh = int(rng.integers(60, img_w // 2)), int(rng.integers(60, img_h // 2))
  gx, gy = int(rng.integers(0, img_w - gw)), int(rng.integers(0, img_h - gh))
  boxes = []
  for _ in range(int(rng.integers(4, 9))):
    s = int(rng.integers(MIN_OBJECT, 17))
    boxes.append(_paint(image, label, gx + int(rng.integers(0, gw - s)), gy + int(rng.integers(0, gh - s)), s, s))
  x1, y1 = min(b[0] for b in boxes), min(b[1] for b in boxes)
  x2, y2 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
  return label, [x1, y1, x2 - x1, y2 - y1]


def render(rng, index):
  """Image `index` of a split: uint8 [H, W, 3] and a list of (label, [x, y, w, h], iscrowd)."""
  long_side = int(rng.integers(336, 641))
  short_side = int(round(long_side * rng.uniform(0.6, 1.0)))
  h, w = (short_side, long_side) if rng.uniform() < 0.6 else (long_side, short_side)
  image = _background(rng, h, w)
  objects = []
  if index % EMPTY_EVERY != EMPTY_AT:
    # Largest first, so that overlaps never hide a smaller object completely.
    boxes = [_random_box(rng, h, w, MIN_OBJECT, 0.9 * min(h, w)) for _ in range(int(rng.integers(1, 9)))]
    for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
      label = int(rng.integers(len(CATEGORIES)))
      objects.append((label, _paint(image, label, *box), 0))
    if index % CROWD_EVERY == CROWD_AT:
      label, box = _crowd(image, rng)
      objects.append((label, box, 1))
  return np.clip(image + 0.5, 0, 255).astype(np.uint8), objects


def _encode_jpeg(image):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only to write the JPEGs)
  return tf.io.encode_jpeg(image, quality=92).numpy()


def write_split(out_dir, split, num_images, seed):
  """Writes the images of `split` and then its annotation json (last, so a present json means a complete split)."""
  id_offset, stream = SPLITS[split]
  os.makedirs(os.path.join(out_dir, split), exist_ok=True)
  images, annotations = [], []
  for i in range(num_images):
    rng = np.random.default_rng([seed, stream, i])
    image, objects = render(rng, i)
    image_id = id_offset + i + 1
    file_name = f'{image_id:012d}.jpg'
    with open(os.path.join(out_dir, split, file_name), 'wb') as f:
      f.write(_encode_jpeg(image))
    images.append({'id': image_id, 'file_name': file_name, 'height': image.shape[0], 'width': image.shape[1]})
    for label, (x, y, w, h), iscrowd in objects:
      annotations.append({
          'id': len(annotations) + 1, 'image_id': image_id, 'category_id': CATEGORIES[label][0],
          'bbox': [float(x), float(y), float(w), float(h)], 'area': float(w * h), 'iscrowd': iscrowd,
          'segmentation': [[x, y, x + w, y, x + w, y + h, x, y + h]]})
  categories = [{'id': cid, 'name': name, 'supercategory': 'shape'} for cid, name, _ in CATEGORIES]
  dataset = {'info': {'description': f'fcos_jax synthetic shapes, seed {seed}'}, 'licenses': [],
             'images': images, 'annotations': annotations, 'categories': categories}
  os.makedirs(os.path.join(out_dir, 'annotations'), exist_ok=True)
  path = os.path.join(out_dir, 'annotations', f'instances_{split}.json')
  atomic.write_json(path, dataset)
  return path


def generate(out_dir: str, num_train: int = 400, num_val: int = 50, seed: int = 0) -> str:
  """Writes the synthetic dataset (splits 'train' and 'val') under `out_dir`, whole or not at all; returns
  `out_dir`."""
  with atomic.directory(out_dir) as staging:
    write_split(staging, 'train', num_train, seed)
    write_split(staging, 'val', num_val, seed)
  return out_dir


def ensure(config) -> None:
  """Generates the dataset into data.root (seed: config.seed) when data.generate_synthetic is set and the
  annotation file of the train or val split is missing (the demo's first run); otherwise does nothing."""
  d = config.data
  if not d.generate_synthetic or d.source != 'folder':
    return
  layout = annotations.split_layout(d).items()
  if not all(os.path.exists(annotations.split_paths(d.root, split, *paths)[1]) for split, paths in layout):
    print(f'Generating the synthetic shapes dataset in {d.root} ...', flush=True)
    generate(d.root, seed=config.seed)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='Output folder.')
  parser.add_argument('--num-train', type=int, default=400)
  parser.add_argument('--num-val', type=int, default=50)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  generate(args.out, args.num_train, args.num_val, args.seed)
  print(f'Wrote {args.num_train} train and {args.num_val} val images to {args.out}')


if __name__ == '__main__':
  main()
