"""Evaluation: the jitted eval step over a split, detections -> COCO result dicts in original-image pixels ->
pycocotools box metrics, written to the workdir."""

import contextlib
import io
import os
import sys
import time

import jax
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fcos_jax import atomic, checkpoints, inference, resize, runtime
from fcos_jax import config as config_lib
from fcos_jax.model import fcos

# The order of COCOeval.stats for boxes.
METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def detections_to_coco(detections, batch, label_to_category, decimals=2):
  """COCO result dicts for the valid detections of one batch, skipping padding images (`batch['mask']` False).

  `detections`: `boxes` [B, K, 4] xyxy canvas pixels, `scores` [B, K], `classes` [B, K], `valid` [B, K] (NumPy or
  JAX). `batch`: `image_id` [B], `scale` [B, 2] (sy, sx) resize factors, optional `mask` [B]. Boxes go back to
  original pixels (divided by the scale) as [x, y, w, h] rounded to `decimals`; `label_to_category[label]` is the
  COCO category id of a contiguous label, or -1 for a class the dataset does not have (its detections are dropped).
  """
  keep = np.asarray(detections['valid'], bool)
  keep = keep & (np.asarray(label_to_category)[np.maximum(np.asarray(detections['classes']), 0)] >= 0)
  if batch.get('mask') is not None:
    keep = keep & np.asarray(batch['mask'], bool)[:, None]
  image, slot = np.nonzero(keep)
  xyxy = inference.to_original_pixels(np.asarray(detections['boxes'])[image, slot], np.asarray(batch['scale'])[image])
  xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=-1).round(decimals)
  categories = np.asarray(label_to_category)[np.asarray(detections['classes'])[image, slot]]
  image_ids = np.asarray(batch['image_id'])[image]
  scores = np.asarray(detections['scores'], np.float64)[image, slot]
  return [{'image_id': i, 'category_id': c, 'bbox': b, 'score': s}
          for i, c, b, s in zip(image_ids.tolist(), categories.tolist(), xywh.tolist(), scores.tolist())]


def _empty_results(coco_gt):
  """A COCO result set without detections (pycocotools' loadRes cannot build one)."""
  coco_dt = COCO()
  coco_dt.dataset = {'images': list(coco_gt.dataset['images']), 'categories': list(coco_gt.dataset['categories']),
                     'annotations': []}
  with contextlib.redirect_stdout(io.StringIO()):
    coco_dt.createIndex()
  return coco_dt


def coco_evaluate(coco_gt, results, image_ids=None):
  """The 12 standard COCO box metrics {name: value} of `results` (dicts as from `detections_to_coco`).

  `coco_gt` is a pycocotools COCO or the path of a COCO annotations json; `image_ids` restricts the evaluation to
  those images (default: all of coco_gt, so images without results count as missed). Prints pycocotools' table.
  No results at all give AP 0 (-1 where a size range has no ground truth, as pycocotools reports).
  """
  if isinstance(coco_gt, (str, os.PathLike)):
    coco_gt = COCO(os.fspath(coco_gt))
  # loadRes adds fields to the dicts it gets: hand it copies.
  coco_dt = coco_gt.loadRes([dict(r) for r in results]) if results else _empty_results(coco_gt)
  evaluator = COCOeval(coco_gt, coco_dt, 'bbox')
  if image_ids is not None:
    evaluator.params.imgIds = sorted(int(i) for i in image_ids)
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return dict(zip(METRIC_NAMES, (float(v) for v in evaluator.stats)))


def make_eval_step(model, config):
  """(variables, batch, canvas) -> detections of `inference.make_detect_fn` plus the batch's image_id, scale,
  mask and unreadable. `canvas` (H, W) is static, default the batch's image shape (see fcos_jax.resize)."""
  detect = inference.make_detect_fn(model, config)

  def eval_step(variables, batch, canvas=None):
    images = resize.canvas_images(batch, canvas or batch['image'].shape[1:3], config.data.resize_on)
    detections = detect(variables, images, batch['size'])
    return {**detections, **{k: batch[k] for k in ('image_id', 'scale', 'mask', 'unreadable')}}

  return eval_step


def jit_eval_step(model, config, mesh):
  """The jitted eval step with replicated outputs. Build it once per run and pass it to every `evaluate` call: it
  then compiles once per canvas for the whole run (a fresh jax.jit would compile again at every evaluation)."""
  return jax.jit(make_eval_step(model, config), static_argnames='canvas', out_shardings=runtime.replicated(mesh))


def _progress(done, total, images, start):
  rate = images / max(time.perf_counter() - start, 1e-9)
  bar = '#' * int(30 * done / max(total, 1))
  sys.stdout.write(f'\revaluating [{bar:<30s}] {done}/{total} batches, {images} images, {rate:.1f} img/s')
  sys.stdout.flush()


def evaluate(config, model, variables, mesh, workdir, step=None, eval_step=None, stop=None, class_names=None):
  """Predicts the whole eval split, writes results.json and metrics.json to `workdir`, returns the metrics (the
  COCO ones and `unreadable_images`; {} on processes other than 0).

  Every process runs the same number of batches (the last is padded and masked); detections come back
  replicated, so process 0 writes the files and runs pycocotools. Unreadable images (data.skip_bad_images) get no
  detections but count: their ground truth is missed. `eval_step`: from `jit_eval_step`, reused across calls
  (default: a new one). `stop`: polled while waiting for input (pipeline.Batches). `class_names`: the model's, to
  map its labels to the split's categories by name (classes the split lacks are not scored; a category the model
  does not know is a ConfigError before any prediction); None maps them by position.
  """
  from fcos_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  dataset, info = pipeline.make_eval_dataset(config, process_index=jax.process_index(),
                                             process_count=jax.process_count(), stop=stop, class_names=class_names)
  eval_step = eval_step or jit_eval_step(model, config, mesh)
  variables = jax.device_put(variables, runtime.replicated(mesh))
  results, image_ids, start = [], list(info.missing_image_ids), time.perf_counter()
  num_unreadable = len(info.missing_image_ids)

  def collect(out, done):
    """One batch's outputs, fetched from the device, into the results."""
    nonlocal num_unreadable
    out = jax.device_get(out)
    results.extend(detections_to_coco(out, out, info.label_to_category))
    unreadable = np.asarray(out['unreadable'], bool)
    image_ids.extend(np.asarray(out['image_id'])[np.asarray(out['mask'], bool) | unreadable].tolist())
    num_unreadable += int(unreadable.sum())
    if jax.process_index() == 0:
      _progress(done, info.num_batches, len(image_ids), start)

  # One batch in flight: the next batch is read and dispatched before the previous one's outputs are fetched, so
  # the device computes while the host converts results and reads input.
  pending, dispatched = None, 0
  for batch in dataset:
    batch, canvas = resize.split_canvas(batch)
    out = eval_step(variables, runtime.to_global(batch, mesh), canvas=canvas)
    if pending is not None:
      collect(pending, dispatched)
    pending, dispatched = out, dispatched + 1
  if pending is not None:
    collect(pending, dispatched)
  if jax.process_index() != 0:
    return {}
  print(flush=True)
  suffix = '' if step is None else f'_step{step}'
  os.makedirs(workdir, exist_ok=True)
  atomic.write_json(os.path.join(workdir, f'results{suffix}.json'), results)
  metrics = {**coco_evaluate(info.coco_gt, results, image_ids=image_ids), 'unreadable_images': num_unreadable}
  skipped = dataset.stats.summary()  # This process's files; the count is over all processes.
  atomic.write_json(os.path.join(workdir, f'metrics{suffix}.json'),
                    {'step': step, 'num_images': len(image_ids), **metrics,
                     'unreadable_files': skipped['skipped_files']}, 1)
  unreadable = f', {num_unreadable} of them unreadable (scored as missed)' if num_unreadable else ''
  print(f'COCO box AP {metrics["AP"]:.4f}, AP50 {metrics["AP50"]:.4f} on {len(image_ids)} images{unreadable}'
        + ('' if step is None else f' (step {step})'), flush=True)
  return metrics


def evaluate_checkpoint(config, workdir, checkpoint=None):
  """Evaluates `checkpoint` (a checkpoint directory), or the latest checkpoint in `workdir`.

  `config` None takes the config recorded in the checkpoint (its data fields name the evaluation split). The class
  names the checkpoint records map its labels to the split's categories by name (by position if it has none).
  Evaluation never generates data (data.generate_synthetic is ignored): a missing dataset is an error naming it.
  """
  path = checkpoint or os.path.join(workdir, 'checkpoints')
  config = checkpoints.config_from_checkpoint(path, config).copy_and_resolve_references()
  config.data.generate_synthetic = False
  class_names = (checkpoints.read_metadata(path) or {}).get('class_names')
  runtime.initialize_distributed(config)
  config_lib.validate(config, jax.device_count(), uses='evaluate')
  model = fcos.build_model(config.model)
  abstract = jax.eval_shape(lambda: fcos.init_variables(model, 0))
  variables = checkpoints.load_variables(path, abstract)
  return evaluate(config, model, variables, runtime.create_mesh(), workdir, class_names=class_names)
