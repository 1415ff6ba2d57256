"""Evaluation: the jitted eval step over a split, detections -> COCO result dicts in original-image pixels ->
pycocotools box metrics, written to the workdir. An `Evaluator` holds what a run evaluates with; `run(variables)`
evaluates once."""

import os
import sys
import time
from typing import TYPE_CHECKING, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fcos_jax import atomic, checkpoints, inference, progress, resize, runtime
from fcos_jax import config as config_lib
from fcos_jax.data import annotations

if TYPE_CHECKING:  # For the annotations only: it imports TensorFlow, which make_eval_step does not need.
  from fcos_jax.data import sources

# The order of COCOeval.stats for boxes.
METRIC_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def detections_to_coco(detections: dict, batch: dict, label_to_category: Sequence[int],
                       decimals: int = 2) -> list[dict]:
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
  categories = np.asarray(label_to_category)[np.asarray(detections['classes'])[image, slot]]
  return coco_results(np.asarray(batch['image_id'])[image], categories, xyxy,
                      np.asarray(detections['scores'])[image, slot], decimals)


def coco_results(image_ids: np.ndarray, category_ids: np.ndarray, xyxy: np.ndarray, scores: np.ndarray,
                 decimals: int = 2) -> list[dict]:
  """COCO result dicts of N detections: `image_ids` [N], `category_ids` [N], `xyxy` [N, 4] boxes in original
  pixels (written as [x, y, w, h] rounded to `decimals`), `scores` [N] (written as float64)."""
  xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
  xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=-1).round(decimals)
  return [{'image_id': i, 'category_id': c, 'bbox': b, 'score': s}
          for i, c, b, s in zip(np.asarray(image_ids).tolist(), np.asarray(category_ids).tolist(), xywh.tolist(),
                                np.asarray(scores, np.float64).tolist())]


def _empty_results(coco_gt):
  """A COCO result set without detections (pycocotools' loadRes cannot build one)."""
  return annotations.quiet_coco({'images': list(coco_gt.dataset['images']),
                                 'categories': list(coco_gt.dataset['categories']), 'annotations': []})


def coco_evaluate(coco_gt: COCO | str | os.PathLike, results: Sequence[dict],
                  image_ids: Sequence[int] | None = None) -> dict:
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


def make_eval_step(model: nn.Module, config: ml_collections.ConfigDict) -> Callable:
  """(variables, batch, canvas) -> detections of `inference.make_detect_fn` plus the batch's image_id, scale,
  mask and unreadable. `canvas` (H, W) is static, default the batch's image shape (see fcos_jax.resize)."""
  detect = inference.make_detect_fn(model, config)

  def eval_step(variables, batch, canvas=None):
    images = resize.canvas_images(batch, canvas or batch['image'].shape[1:3], config.data.resize_on)
    detections = detect(variables, images, batch['size'])
    return {**detections, **{k: batch[k] for k in ('image_id', 'scale', 'mask', 'unreadable')}}

  return eval_step


class Evaluator:
  """The evaluation of one split, set up once per run: its input (batches that can be iterated again), the mapping
  of the model's labels to the split's categories, and the jitted eval step (compiled once per canvas for the whole
  run; a fresh jax.jit at every evaluation would compile again). `run(variables, workdir)` evaluates.

  Building it checks the label mapping: a split with a category the model does not know is a ConfigError before
  any training or prediction. `class_names`: the model's, to map its labels by name (classes the split lacks are
  not scored); None maps them by position. `source`: the run's data source (default: a new one). `stop`: polled
  while waiting for input (`iterator.Batches`); a stop raises `iterator.Interrupted` out of `run`.
  """

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, mesh: jax.sharding.Mesh,
               class_names: Sequence[str] | None = None,
               source: 'sources.FolderSource | sources.TfdsSource | None' = None,
               stop: Callable[[], bool] | None = None):
    from fcos_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow: make_eval_step needs none)
    self.mesh = mesh
    self.batches, self.info = pipeline.make_eval_dataset(
        config, process_index=jax.process_index(), process_count=jax.process_count(), stop=stop,
        class_names=class_names, source=source)
    self.eval_step = jax.jit(make_eval_step(model, config), static_argnames='canvas',
                             out_shardings=runtime.replicated(mesh))

  def run(self, variables: dict, workdir: str, step: int | None = None) -> dict:
    """Predicts the whole split, writes results.json and metrics.json (with `_step{step}` when given) to `workdir`,
    returns the metrics (the COCO ones and `unreadable_images`; {} on processes other than 0).

    Every process runs the same number of batches (the last is padded and masked); detections come back
    replicated, so process 0 writes the files and runs pycocotools. Unreadable images (data.skip_bad_images) get no
    detections but count: their ground truth is missed.
    """
    results, image_ids, num_unreadable = self._predict(jax.device_put(variables, runtime.replicated(self.mesh)))
    if not runtime.is_main_process():
      return {}
    suffix = '' if step is None else f'_step{step}'
    os.makedirs(workdir, exist_ok=True)
    atomic.write_json(os.path.join(workdir, f'results{suffix}.json'), results)
    metrics = {**coco_evaluate(self.info.coco_gt, results, image_ids=image_ids), 'unreadable_images': num_unreadable}
    skipped = self.batches.stats.summary()  # This process's files; the count is over all processes.
    atomic.write_json(os.path.join(workdir, f'metrics{suffix}.json'),
                      {'step': step, 'num_images': len(image_ids), **metrics,
                       'unreadable_files': skipped['skipped_files']}, 1)
    unreadable = f', {num_unreadable} of them unreadable (scored as missed)' if num_unreadable else ''
    print(f'COCO box AP {metrics["AP"]:.4f}, AP50 {metrics["AP50"]:.4f} on {len(image_ids)} images{unreadable}'
          + ('' if step is None else f' (step {step})'), flush=True)
    return metrics

  def _predict(self, variables):
    """(COCO result dicts, ids of the images evaluated, count of unreadable images) over the whole split.

    One batch in flight: the next batch is read and dispatched before the previous one's outputs are fetched, so
    the device computes while the host converts results and reads input.
    """
    info = self.info
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
      if runtime.is_main_process():
        rate = len(image_ids) / max(time.perf_counter() - start, 1e-9)
        progress.show(sys.stdout, 'evaluating', done, info.num_batches,
                      f'{done}/{info.num_batches} batches, {len(image_ids)} images, {rate:.1f} img/s')

    pending, dispatched = None, 0
    for batch in self.batches:
      batch, canvas = resize.split_canvas(batch)
      out = self.eval_step(variables, runtime.to_global(batch, self.mesh), canvas=canvas)
      if pending is not None:
        collect(pending, dispatched)
      pending, dispatched = out, dispatched + 1
    if pending is not None:
      collect(pending, dispatched)
    if runtime.is_main_process():
      print(flush=True)
    return results, image_ids, num_unreadable


def evaluate_checkpoint(config: ml_collections.ConfigDict | None, workdir: str,
                        checkpoint: str | None = None) -> dict:
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
  model, variables = inference.load_detector(path, config)
  return Evaluator(config, model, runtime.create_mesh(), class_names).run(variables, workdir)
