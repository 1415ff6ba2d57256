"""Small objects in large images: whole-image vs sliced evaluation of a trained checkpoint (COCO AP, AP50, AR100).

Generates --images rasters of --size H W pixels holding --objects shapes each, --min to --max pixels across (the
shapes dataset's colours and backgrounds), as a COCO folder, and evaluates the checkpoint on it with
`eval_lib.evaluate_checkpoint` as fcos-evaluate does: once on whole images (resized to the evaluation scale, which
shrinks the objects) and once per --slices tile size (tiles predicted at the evaluation scale, merged by IoS NMS).
Needs a checkpoint trained on the shapes dataset, e.g. `make demo`'s:

    python -m benchmarks.sliced --checkpoint workdirs/shapes/checkpoints [--images 4] [--slices 256 384]

Not in the suite (it needs a trained model). --objects stays under COCO's 100 detections per image so that AP is
not capped by pycocotools' maxDets.
"""

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

import numpy as np

from benchmarks import timing
from fcos_jax import checkpoints, eval_lib, slicing
from fcos_jax.data import synthetic


def write_rasters(root, num_images, size, num_objects, smallest, largest, seed):
  """A COCO folder (val2017) of `num_images` rasters, each with `num_objects` non-overlapping shapes (one per cell
  of a jittered grid) of log-uniform size in [smallest, largest] pixels and aspect ratio in [2/3, 3/2]."""
  h, w = size
  cell = 2 * largest
  cells = [(y, x) for y in range(0, h - cell + 1, cell) for x in range(0, w - cell + 1, cell)]
  if len(cells) < num_objects:
    raise SystemExit(f'{num_objects} objects of up to {largest} px do not fit in {h}x{w} ({len(cells)} cells)')
  os.makedirs(os.path.join(root, 'val2017'))
  os.makedirs(os.path.join(root, 'annotations'))
  images, annotations = [], []
  for i in range(num_images):
    rng = np.random.default_rng([seed, i])
    image = synthetic._background(rng, h, w)  # pylint: disable=protected-access  (the dataset's own look)
    for k in rng.choice(len(cells), num_objects, replace=False):
      side = np.exp(rng.uniform(np.log(smallest), np.log(largest)))
      ratio = np.exp(rng.uniform(np.log(2 / 3), np.log(3 / 2)))
      bw, bh = (int(np.clip(round(side * r), smallest, largest)) for r in (np.sqrt(ratio), 1 / np.sqrt(ratio)))
      y, x = cells[k][0] + int(rng.integers(0, cell - bh + 1)), cells[k][1] + int(rng.integers(0, cell - bw + 1))
      label = int(rng.integers(len(synthetic.CATEGORIES)))
      box = synthetic._paint(image, label, x, y, bw, bh)  # pylint: disable=protected-access
      annotations.append({'id': len(annotations) + 1, 'image_id': i + 1, 'category_id': synthetic.CATEGORIES[label][0],
                          'bbox': [float(v) for v in box], 'area': float(box[2] * box[3]), 'iscrowd': 0})
    with open(os.path.join(root, 'val2017', f'{i + 1}.jpg'), 'wb') as f:
      f.write(synthetic._encode_jpeg(np.clip(image + 0.5, 0, 255).astype(np.uint8)))  # pylint: disable=protected-access
    images.append({'id': i + 1, 'file_name': f'{i + 1}.jpg', 'height': h, 'width': w})
  categories = [{'id': cid, 'name': name} for cid, name, _ in synthetic.CATEGORIES]
  with open(os.path.join(root, 'annotations', 'instances_val2017.json'), 'w') as f:
    json.dump({'images': images, 'annotations': annotations, 'categories': categories}, f)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', required=True, help='a checkpoint trained on the shapes dataset')
  parser.add_argument('--images', type=int, default=4)
  parser.add_argument('--size', type=int, nargs=2, default=(1200, 1600), metavar=('H', 'W'))
  parser.add_argument('--objects', type=int, default=90, help='shapes per image')
  parser.add_argument('--min', type=int, default=20, help='smallest object side, pixels')
  parser.add_argument('--max', type=int, default=40, help='largest object side, pixels')
  parser.add_argument('--slices', type=int, nargs='+', default=(256, 384), help='square tile sizes to try')
  parser.add_argument('--overlap', type=float, default=0.25)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  config = checkpoints.config_from_checkpoint(args.checkpoint)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = os.path.join(tmp, 'rasters')
    write_rasters(root, args.images, args.size, args.objects, args.min, args.max, args.seed)
    config.data.update(dict(root=root, val_split='val2017', generate_synthetic=False,
                            max_boxes=max(config.data.max_boxes, args.objects)))
    runs = [('whole image', None)] + [(f'{s}x{s} tiles', slicing.Slicing((s, s), (args.overlap, args.overlap)))
                                      for s in args.slices]
    for name, sliced in runs:
      timing.progress(f'evaluating: {name}')
      start = time.perf_counter()
      with contextlib.redirect_stdout(io.StringIO()):
        metrics = eval_lib.evaluate_checkpoint(config.copy_and_resolve_references(), os.path.join(tmp, 'run'),
                                               args.checkpoint, sliced)
      seconds = time.perf_counter() - start
      with open(os.path.join(tmp, 'run', 'results.json')) as f:
        detections = len(json.load(f))
      rows.append({'prediction': name, 'AP': metrics['AP'], 'AP50': metrics['AP50'], 'APs': metrics['APs'],
                   'AR100': metrics['AR100'], 'detections/image': detections / args.images,
                   'seconds (incl. compile)': seconds})
  timing.report('sliced', rows, list(rows[0]),
                note=f'{args.images} generated {args.size[0]}x{args.size[1]} images, {args.objects} shapes of '
                     f'{args.min}-{args.max} px each; model eval scale {config.data.eval_short_size}/'
                     f'{config.data.max_size}; overlap {args.overlap}, IoS NMS 0.6; load average '
                     f'{os.getloadavg()[0]:.1f}.')


if __name__ == '__main__':
  main()
