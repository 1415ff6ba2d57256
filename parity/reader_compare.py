"""Decode and resize against PaddleDetection's reader ops, from the image files.

    python parity/reader_compare.py make WORK       # photo files of several kinds + a COCO-format json (WORK/reader)
    .venv-paddle/bin/python parity/paddle_reader.py WORK    # Decode, Resize, RandomFlip + RandomResize
    python parity/reader_compare.py compare WORK    # fcos_jax's pipeline on the same files; exits 1 on a failure

`make` writes photo-like pictures (smooth colour fields, shapes with sharp edges, sensor noise) as a 4:2:0 baseline
JPEG, a progressive JPEG, a 4:4:4 JPEG, grayscale JPEG and PNG, RGB PNGs, at sizes whose resized sides round (one
exactly at .5), up- and down-scaled, one whose long side caps the scale; boxes include ones touching the right and
bottom edges. `compare` runs fcos_jax's evaluation pipeline (`make_eval_dataset`, host and device resize) and its
training transforms (`transforms.prepare` with a flip, each multiscale short side, host and device) and checks:
decoded pixels identical to OpenCV's, resized pixels identical to cv2.resize's on the host path (within 1 level on
the device path, whose sampling grid is float32), the same image size, the same
float32 scale_factor [s, s] and the same boxes, bit for bit. It also reports Pillow's decode against OpenCV's (the
default test suite uses Pillow as the reference).
"""

import io
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

# file name: (h, w, Pillow mode, save options). 850 x 640 to short side 800: s = 1.25, 850 * 1.25 = 1062.5 -> 1062.
FILES = {
    'baseline.jpg': (480, 640, 'RGB', {'quality': 90}),
    'progressive.jpg': (427, 640, 'RGB', {'quality': 85, 'progressive': True}),
    'q444.jpg': (600, 512, 'RGB', {'quality': 95, 'subsampling': 0}),
    'gray.jpg': (375, 500, 'L', {'quality': 90}),
    'tie.jpg': (850, 640, 'RGB', {'quality': 90}),
    'wide.jpg': (500, 1100, 'RGB', {'quality': 90}),
    'rgb.png': (333, 500, 'RGB', {}),
    'small.png': (211, 157, 'RGB', {}),
    'gray.png': (301, 397, 'L', {}),
}
SHORT_SIDES = (640, 672, 704, 736, 768, 800)


def photo(rng, h, w):
  """Photo-like uint8 RGB [h, w, 3]: a smooth colour field, shapes with sharp edges, sensor noise."""
  field = rng.integers(0, 256, (h // 40 + 2, w // 40 + 2, 3), dtype=np.uint8)
  image = Image.fromarray(field).resize((w, h), Image.BICUBIC)
  draw = ImageDraw.Draw(image)
  for _ in range(8):
    x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
    y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
    [draw.rectangle, draw.ellipse][int(rng.integers(2))]([x0, y0, x1 + 4, y1 + 4], fill=tuple(
        int(c) for c in rng.integers(0, 256, 3)))
  pixels = np.asarray(image, np.float32) + rng.normal(0, 6, (h, w, 3))
  return np.clip(pixels, 0, 255).astype(np.uint8)


def make(work):
  root = os.path.join(work, 'reader')
  os.makedirs(os.path.join(root, 'val'), exist_ok=True)
  os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
  rng = np.random.default_rng(0)
  images, annotations = [], []
  for i, (name, (h, w, mode, options)) in enumerate(FILES.items()):
    Image.fromarray(photo(rng, h, w)).convert(mode).save(os.path.join(root, 'val', name), **options)
    images.append({'id': i + 1, 'file_name': name, 'height': h, 'width': w})
    # Whole-pixel boxes (exact in float32 both ways): one inside, one at the right and bottom edges.
    for x, y, bw, bh in ((w // 5, h // 4, w // 3, h // 3), (w // 2, h // 2, w - w // 2, h - h // 2)):
      annotations.append({'id': len(annotations) + 1, 'image_id': i + 1, 'category_id': 1, 'bbox': [x, y, bw, bh],
                          'area': bw * bh, 'iscrowd': 0})
  with open(os.path.join(root, 'annotations', 'instances_val.json'), 'w') as f:
    json.dump({'images': images, 'annotations': annotations, 'categories': [{'id': 1, 'name': 'thing'}]}, f)
  print(f'{len(images)} image files -> {root}')


def levels(got, want):
  """(max |got - want|, share of differing values) of two uint8 images of one shape; (inf, 1) if shapes differ."""
  if got.shape != want.shape:
    return float('inf'), 1.0
  diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
  return int(diff.max()), float((diff > 0).mean())


def compare(work):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from fcos_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from fcos_jax import resize  # pylint: disable=g-import-not-at-top
  from fcos_jax.data import decoding, pipeline, sources, transforms  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  root = os.path.join(work, 'reader')
  ref = np.load(os.path.join(work, 'reader_paddle.npz'))
  with open(os.path.join(root, 'annotations', 'instances_val.json')) as f:
    dataset = json.load(f)
  config = config_lib.get_config()
  config.data.update(dict(root=root, train_split='val', val_split='val', max_boxes=4))
  config.model.num_classes = 1
  config.eval.batch_size = 1
  rows, failures = [], []

  def check(name, what, pixels, scale, boxes, key):
    """One row: pixels [h, w, 3] uint8, scale [2], boxes [n, 4] against the reference's `key` chain."""
    worst, share = levels(pixels, ref[f'{key}/image'])
    want_scale, want_boxes = ref[f'{key}/scale_factor'], ref[f'{key}/gt_bbox']
    same_scale = np.array_equal(np.float32(scale), want_scale)
    box_diff = float(np.abs(boxes - want_boxes).max()) if boxes.shape == want_boxes.shape else float('inf')
    rows.append((name, what, f'{pixels.shape[0]}x{pixels.shape[1]}', worst, f'{share:.2e}',
                 f'{scale[0]:.6g}' + ('' if same_scale else f' (paddle {want_scale[0]:.6g}, {want_scale[1]:.6g})'),
                 f'{box_diff:g}'))
    if worst > (1 if 'device' in what else 0) or not same_scale or box_diff > 0:
      failures.append(f'{name} {what}')

  # Decoding: the pipeline's decoder and Pillow against OpenCV's.
  for image in dataset['images']:
    data = open(os.path.join(root, 'val', image['file_name']), 'rb').read()
    want = ref[f'{image["id"]}/decode']
    got = decoding.decode_pixels(tf.constant(data)).numpy()
    pil = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
    worst, _ = levels(got, want)
    rows.append((image['file_name'], 'decode (Pillow vs OpenCV: '
                 f'{levels(pil, want)[0]})', f'{want.shape[0]}x{want.shape[1]}', worst, '-', '-', '-'))
    if worst != 0:
      failures.append(f'{image["file_name"]} decode')

  # Evaluation: the pipeline's batches, host and device resize.
  names = {image['id']: image['file_name'] for image in dataset['images']}
  for side in ('host', 'device'):
    config.data.resize_on = side
    batches, _ = pipeline.make_eval_dataset(config)
    for batch in batches:
      batch, canvas = resize.split_canvas(batch)
      canvases = np.asarray(resize.canvas_images(batch, canvas, side))
      h, w = batch['size'][0]
      check(names[int(batch['image_id'][0])], f'eval, {side}', canvases[0, :h, :w], batch['scale'][0],
            batch['boxes'][0][batch['valid'][0]], f'{int(batch["image_id"][0])}/eval')

  # Training: flipped, every multiscale short side, host and device.
  source = sources.make_source(config)
  for record in source.records('val'):
    example, _ = decoding.decode(record, source.read(record))
    key = int(example['image_id'])
    for short in SHORT_SIDES:
      for side in ('host', 'device'):
        out = transforms.prepare(example, short, config.data.max_size, True, (1408, 1408), 4, 'paddle',
                                 resize_image=side == 'host')
        size = out['size'].numpy()
        pixels = out['image'].numpy()
        if side == 'device':
          pixels = np.asarray(resize.resize_to_canvas(pixels[None], out['orig_size'].numpy()[None], size[None],
                                                      out['scale'].numpy()[None], np.array([True]), tuple(size)))[0]
        check(names[key], f'train {short}, flip, {side}', pixels, out['scale'].numpy(),
              out['boxes'].numpy()[out['valid'].numpy()], f'{key}/train{short}')

  head = ('file', 'check', 'size', 'max |diff|', 'share differing', 'scale', 'max box diff')
  widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
  for row in [head] + rows:
    print('  '.join(str(c).ljust(wd) for c, wd in zip(row, widths)).rstrip())
  print(f'{len(rows)} checks; ' + (f'FAILED: {", ".join(failures)}' if failures else
                                  'all passed: decode identical, resize identical (device: within 1 level), scale and boxes identical'))
  return 1 if failures else 0


if __name__ == '__main__':
  command, work = sys.argv[1:3]
  sys.exit(make(work) if command == 'make' else compare(work))
