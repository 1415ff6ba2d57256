"""Inputs shared by every side of the parity run, written once to WORK/inputs.npz (NumPy + Pillow only).

- `images` [N, H, W, 3]: real-content pictures (shapes on smooth noise, through JPEG), resized into a 256x384 canvas
  keeping the aspect ratio, normalised with the ImageNet mean/std and zero-padded, as fcos_jax feeds its model;
  `image_hw` [N, 2] their sizes on the canvas.
- `assign_*`: random ground truth for hundreds of images on a few canvases, with the awkward cases target
  assignment must get right: boxes on point coordinates and level bounds, equal areas, tiny and huge boxes.
- `loss_*`: a batch of ground truth plus random head outputs for comparing the losses.

Usage: python parity/make_inputs.py WORK
"""

import io
import sys

import numpy as np
from PIL import Image, ImageDraw

CANVAS = (256, 384)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
ASSIGN_CANVASES = ((256, 384), (384, 256), (512, 640))
ASSIGN_IMAGES = 300
MAX_BOXES = 40
LOSS_BATCH = 4
NUM_CLASSES = 80
STRIDES = (8, 16, 32, 64, 128)


def picture(rng, h, w):
  """A JPEG-decoded RGB uint8 picture [h, w, 3]: smooth colour noise with filled shapes on top."""
  noise = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
  image = Image.fromarray(noise).resize((w, h), Image.BICUBIC)
  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(4, 10)):
    x0, x1 = sorted(rng.integers(0, w, 2))
    y0, y1 = sorted(rng.integers(0, h, 2))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    [draw.rectangle, draw.ellipse][rng.integers(2)]([x0, y0, x1 + 8, y1 + 8], fill=colour)
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=90)
  return np.asarray(Image.open(buffer).convert('RGB'))


def canvas_images(rng, sizes):
  """Pictures of the given sizes resized to fit CANVAS, normalised, zero-padded: ([N, H, W, 3], [N, 2])."""
  images, hws = [], []
  for h, w in sizes:
    scale = min(CANVAS[0] / h, CANVAS[1] / w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.asarray(Image.fromarray(picture(rng, h, w)).resize((nw, nh), Image.BILINEAR), np.float32)
    out = np.zeros((*CANVAS, 3), np.float32)
    out[:nh, :nw] = (resized / 255.0 - MEAN) / STD
    images.append(out)
    hws.append((nh, nw))
  return np.stack(images), np.array(hws, np.int32)


def random_boxes(rng, canvas, count):
  """`count` xyxy float32 boxes inside `canvas` (H, W), a mix of generic and boundary-hitting ones."""
  h, w = canvas
  boxes = []
  while len(boxes) < count:
    kind = rng.integers(5)
    if kind == 0 and boxes:  # The same box again (equal areas: the lower slot must win).
      boxes.append(boxes[rng.integers(len(boxes))])
      continue
    if kind == 1:  # Corners on multiples of 4: distances that equal point offsets and level bounds exactly.
      x0, y0 = rng.integers(0, w // 4) * 4, rng.integers(0, h // 4) * 4
      bw, bh = rng.choice([16, 32, 64, 128, 256, 512], 2) * rng.choice([0.5, 1, 2], 2)
      box = [x0, y0, x0 + bw, y0 + bh]
    elif kind == 2:  # Centred on a point of some level.
      s = rng.choice(STRIDES)
      cx, cy = (rng.integers(0, max(w // s, 1)) + 0.5) * s, (rng.integers(0, max(h // s, 1)) + 0.5) * s
      bw, bh = rng.uniform(2, 16 * s, 2)
      box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
    else:  # Anywhere, sizes log-uniform from 4 px to beyond the canvas.
      bw, bh = np.exp(rng.uniform(np.log(4), np.log(1.2 * max(h, w)), 2))
      cx, cy = rng.uniform(0, w), rng.uniform(0, h)
      box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
    box = np.clip(np.array(box, np.float32), 0, [w, h, w, h])
    if box[2] - box[0] > 0.5 and box[3] - box[1] > 0.5:
      boxes.append(box)
  return np.array(boxes, np.float32)


def ground_truth(rng, canvases, min_boxes=1):
  """Padded ground truth for images on `canvases`: boxes [M, G, 4], labels [M, G], valid [M, G]."""
  m = len(canvases)
  boxes = np.zeros((m, MAX_BOXES, 4), np.float32)
  labels = np.full((m, MAX_BOXES), -1, np.int32)
  valid = np.zeros((m, MAX_BOXES), bool)
  for i, canvas in enumerate(canvases):
    n = int(rng.integers(min_boxes, MAX_BOXES + 1))
    boxes[i, :n] = random_boxes(rng, canvas, n)
    labels[i, :n] = rng.integers(0, NUM_CLASSES, n)
    valid[i, :n] = True
  return boxes, labels, valid


def num_points(canvas):
  total = 0
  for s in STRIDES:
    total += -(-canvas[0] // s) * -(-canvas[1] // s)
  return total


def main(work):
  rng = np.random.default_rng(0)
  images, image_hw = canvas_images(rng, [(480, 640), (500, 375)])
  assign_canvas = np.array([ASSIGN_CANVASES[i % len(ASSIGN_CANVASES)] for i in range(ASSIGN_IMAGES)], np.int32)
  assign_boxes, assign_labels, assign_valid = ground_truth(rng, assign_canvas)
  loss_boxes, loss_labels, loss_valid = ground_truth(rng, [CANVAS] * LOSS_BATCH)
  p = num_points(CANVAS)
  np.savez(
      f'{work}/inputs.npz', images=images, image_hw=image_hw,
      assign_canvas=assign_canvas, assign_boxes=assign_boxes, assign_labels=assign_labels, assign_valid=assign_valid,
      loss_boxes=loss_boxes, loss_labels=loss_labels, loss_valid=loss_valid,
      loss_cls=rng.normal(-2.0, 2.0, (LOSS_BATCH, p, NUM_CLASSES)).astype(np.float32),
      loss_reg=np.abs(rng.normal(1.0, 1.5, (LOSS_BATCH, p, 4))).astype(np.float32) + 0.01,
      loss_ctr=rng.normal(0.0, 1.5, (LOSS_BATCH, p)).astype(np.float32))
  print(f'inputs: {len(images)} images on a {CANVAS} canvas, {ASSIGN_IMAGES} assignment cases, loss batch '
        f'{LOSS_BATCH} x {p} points')


if __name__ == '__main__':
  main(sys.argv[1])
