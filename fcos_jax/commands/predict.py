"""fcos-predict: detect objects in images with a checkpoint; draws them and writes COCO results."""

import glob
import os
import sys
import time

from fcos_jax import atomic, checkpoints, draw, errors, eval_lib, predict, progress, slicing
from fcos_jax.commands import harness

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


def expand_inputs(patterns: list[str]) -> tuple[list[str], list[str]]:
  """Files, folders (searched recursively for IMAGE_EXTENSIONS) and globs -> (files in order, unmatched args)."""
  files, unmatched = [], []
  for pattern in patterns:
    if os.path.isdir(pattern):
      found = sorted(os.path.join(d, f) for d, _, names in os.walk(pattern) for f in names
                     if f.lower().endswith(IMAGE_EXTENSIONS))
    elif os.path.exists(pattern):
      found = [pattern]
    else:
      found = sorted(f for f in glob.glob(pattern, recursive=True)
                     if os.path.isfile(f) and f.lower().endswith(IMAGE_EXTENSIONS))
    files += found
    if not found:
      unmatched.append(pattern)
  return list(dict.fromkeys(files)), unmatched


def _unique_name(file, taken):
  stem = os.path.splitext(os.path.basename(file))[0]
  name, n = stem, 1
  while name in taken:
    n += 1
    name = f'{stem}_{n}'
  taken.add(name)
  return name


def _predict(args, config, out, sliced):
  """Detects, draws and writes into directory `out`; returns the exit status."""
  files, unmatched = expand_inputs(args.inputs)
  skipped = [f'{p}: no such file, folder or matching image' for p in unmatched]
  for message in skipped:
    print(f'skipping {message}', file=sys.stderr)
  predictor = predict.Predictor.from_checkpoint(args.checkpoint, config, batch_size=args.batch_size)
  results, images, taken, start = [], [], set(), time.perf_counter()
  chunk = 4 * predictor.batch_size
  for first in range(0, len(files), chunk):
    loaded = []
    for file in files[first:first + chunk]:
      try:
        loaded.append((file, predict.load_image(file)[0]))
      except (predict.UnreadableImageError, ValueError) as e:
        skipped.append(str(e))
        print(f'\nskipping {e}', file=sys.stderr)
    predictions = predictor.predict_arrays([image for _, image in loaded], [file for file, _ in loaded], sliced)
    for (file, image), pred in zip(loaded, predictions):
      image_id, name = len(images), _unique_name(file, taken)
      images.append({'id': image_id, 'file_name': os.path.abspath(file), 'height': pred.image_size[0],
                     'width': pred.image_size[1]})
      categories = [predictor.category_ids[c] for c in pred.classes]
      results += eval_lib.coco_results([image_id] * len(categories), categories, pred.boxes, pred.scores)
      shown = pred.scores >= args.threshold
      picture = draw.draw(image, pred.boxes[shown], pred.scores[shown], pred.classes[shown],
                          [n for n, s in zip(pred.class_names, shown) if s])
      picture.save(os.path.join(out, f'{name}.jpg'), 'JPEG', quality=92)
      if args.per_image_json:
        atomic.write_json(os.path.join(out, f'{name}.json'), {
            'file': os.path.abspath(file), 'height': pred.image_size[0], 'width': pred.image_size[1],
            'threshold': args.threshold, 'detections': [
                {'box_xyxy': b, 'score': s, 'class_id': int(c), 'class_name': n, 'category_id': k}
                for b, s, c, n, k, keep in zip(pred.boxes.round(2).tolist(), pred.scores.astype(float).tolist(),
                                               pred.classes, pred.class_names, categories, shown) if keep]}, 1)
    rate = len(images) / max(time.perf_counter() - start, 1e-9)
    done = min(first + chunk, len(files))
    progress.show(sys.stderr, 'predicting', done, len(files), f'{done}/{len(files)} images, {rate:.1f} images/s')
  sys.stderr.write('\n')
  atomic.write_json(os.path.join(out, 'results.json'), results)
  atomic.write_json(os.path.join(out, 'images.json'), images, 1)
  print(f'{len(images)} images, {len(results)} detections written to {args.out}'
        + (f'; skipped {len(skipped)} unreadable input(s):\n  ' + '\n  '.join(skipped) if skipped else ''))
  return 0 if images else 1


def main(argv: list[str] | None = None) -> int:
  """The command; returns its exit status (1 if no input was readable)."""
  parser = harness.make_parser(
      'fcos-predict', 'Detect objects in images with an fcos_jax checkpoint; writes OUT/NAME.jpg with the '
      'detections drawn, OUT/results.json (COCO results, all detections) and OUT/images.json (image_id -> file, '
      'size), plus OUT/NAME.json per image with --per-image-json. Every file is written whole, when all are done. '
      'Images larger than the model\'s scale: --slice-size H W predicts them in tiles.')
  parser.add_argument('inputs', nargs='+', help='image files, folders (searched recursively) or glob patterns')
  parser.add_argument('--checkpoint', required=True, help='checkpoint directory (training run or converted)')
  parser.add_argument('--out', required=True, help='output directory (created)')
  parser.add_argument('--threshold', type=float, default=0.3, help='score threshold for drawing and per-image json')
  parser.add_argument('--per-image-json', action='store_true', help='also write OUT/NAME.json for every image')
  parser.add_argument('--batch-size', type=int, default=None, help='images (or tiles) per batch (default '
                      'eval.batch_size)')
  slicing.add_arguments(parser)

  def run(args, config):
    harness.check_output_directory(args.out, '--out')
    sliced = slicing.from_arguments(args)
    if not expand_inputs(args.inputs)[0]:
      raise errors.MissingFileError(f'no images to read: {" ".join(args.inputs)} name no file, folder or matching '
                                    'image')
    with atomic.directory(args.out) as out:
      return _predict(args, config, out, sliced)

  return harness.run(run, parser, argv, lambda args: checkpoints.config_from_checkpoint(args.checkpoint),
                     uses='predict')


if __name__ == '__main__':
  raise SystemExit(main())
