"""Evaluation: the jitted eval step over a split, detections -> COCO result dicts in original-image pixels ->
COCO box metrics (the 12 numbers, a per-class table, PR curves; faster-coco-eval or pycocotools), written to the
workdir, and to TensorBoard with a few images drawn. An `Evaluator` holds what a run evaluates with;
`run(variables)` evaluates once."""

import contextlib
import dataclasses
import gc
import io
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

from fcos_jax import atomic, checkpoints, draw, errors, inference, per_class, progress, resize, runtime, voc_map
from fcos_jax import config as config_lib
from fcos_jax.data import annotations

if TYPE_CHECKING:  # For the annotations only: it imports TensorFlow, which make_eval_step does not need.
  from fcos_jax import slicing
  from fcos_jax.data import sources

# The order of COCOeval.stats for boxes.
METRIC_NAMES = config_lib.COCO_METRICS


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


@dataclasses.dataclass(frozen=True)
class BoxEvaluation:
  """What one COCOeval run over box results reports."""
  metrics: dict  # The 12 standard numbers {name: value} in METRIC_NAMES order (-1 where undefined, as COCOeval).
  per_class: dict  # {category name: {AP, AP50, AP75, APs, APm, APl, AR100 (None where undefined), gt, detections}}.
  curves: per_class.Curves  # Precision-recall at IoU 0.5 per category.


@contextlib.contextmanager
def _collector_paused():
  """Pauses Python's cyclic garbage collector: COCOeval allocates objects per box and detection (none of them in a
  cycle), and the collections their number triggers would take about as long as the evaluation itself."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


def _cocoeval(coco_gt, results, image_ids, backend):
  """A bbox COCOeval of `backend` over `results` (copies: loadRes adds fields to the dicts it gets), its images
  restricted to `image_ids` when given; evaluated and accumulated, its prints swallowed."""
  with contextlib.redirect_stdout(io.StringIO()):
    if backend == 'pycocotools':
      coco_dt = coco_gt.loadRes([dict(r) for r in results]) if results else _empty_results(coco_gt)
      evaluator = COCOeval(coco_gt, coco_dt, 'bbox')
    else:
      try:
        import faster_coco_eval  # pylint: disable=g-import-not-at-top  (only for this backend)
      except ImportError as e:
        raise errors.UserError("eval.backend='faster' needs the package faster-coco-eval (pip install "
                               "faster-coco-eval), or set eval.backend=pycocotools") from e
      gt = faster_coco_eval.COCO(coco_gt.dataset)  # Shares the annotation dicts (it adds the same 'ignore' field).
      evaluator = faster_coco_eval.COCOeval_faster(gt, gt.loadRes([dict(r) for r in results]), 'bbox',
                                                   print_function=print)
    if image_ids is not None:
      evaluator.params.imgIds = sorted(int(i) for i in image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
  return evaluator


def _counts(category_ids, boxes, image_ids):
  """How many of `boxes` (dicts with image_id and category_id) lie in `image_ids` (None: all), per category of the
  sorted `category_ids`."""
  ids, cats = np.asarray(category_ids, np.int64), np.array([b['category_id'] for b in boxes], np.int64)
  if image_ids is not None:
    cats = cats[np.isin(np.array([b['image_id'] for b in boxes], np.int64), np.asarray(list(image_ids), np.int64))]
  index = np.minimum(np.searchsorted(ids, cats), len(ids) - 1)
  return np.bincount(index[ids[index] == cats], minlength=len(ids)).tolist()


def evaluate_boxes(coco_gt: COCO | str | os.PathLike, results: Sequence[dict],
                   image_ids: Sequence[int] | None = None, backend: str = 'faster') -> BoxEvaluation:
  """The COCO box metrics of `results` (dicts as from `detections_to_coco`): the 12 numbers, the per-class table and
  the PR curves, all from one COCOeval run of `backend` (config_lib.EVAL_BACKENDS: 'faster', faster-coco-eval's
  C++ COCOeval; 'pycocotools'). Prints the COCO summary and the per-class table.

  `coco_gt` is a pycocotools COCO or the path of a COCO annotations json; `image_ids` restricts the evaluation to
  those images (default: all of coco_gt, so images without results count as missed). No results at all give AP 0
  (-1 where a size range has no ground truth, as pycocotools reports). The per-class `gt` counts the ground-truth
  boxes that score (crowd boxes excluded), `detections` the results, both in the evaluated images.
  """
  if backend not in config_lib.EVAL_BACKENDS:
    raise ValueError(f'backend={backend!r} must be one of {config_lib.EVAL_BACKENDS}')
  if isinstance(coco_gt, (str, os.PathLike)):
    coco_gt = COCO(os.fspath(coco_gt))
  with _collector_paused():
    evaluator = _cocoeval(coco_gt, results, image_ids, backend)
  with contextlib.redirect_stdout(io.StringIO()) as summary:
    evaluator.summarize()
  print('\n'.join(summary.getvalue().splitlines()[:len(METRIC_NAMES)]), flush=True)
  category_ids = list(evaluator.params.catIds)
  names = per_class.category_names(coco_gt.loadCats(category_ids))
  counted = [a for a in coco_gt.dataset['annotations'] if not a.get('iscrowd', 0)]
  table = per_class.results(evaluator.eval, evaluator.params, names, _counts(category_ids, counted, image_ids),
                            _counts(category_ids, results, image_ids))
  print(per_class.format_table(table), flush=True)
  return BoxEvaluation(dict(zip(METRIC_NAMES, (float(v) for v in evaluator.stats[:len(METRIC_NAMES)]))), table,
                       per_class.curves(evaluator.eval, evaluator.params, names))


def coco_evaluate(coco_gt: COCO | str | os.PathLike, results: Sequence[dict],
                  image_ids: Sequence[int] | None = None, backend: str = 'faster') -> dict:
  """The 12 standard COCO box metrics {name: value} of `results` (see `evaluate_boxes`, which prints)."""
  return evaluate_boxes(coco_gt, results, image_ids, backend).metrics


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
    self.mesh, self.options = mesh, config.eval
    self.voc = config.data.source == 'voc'  # Also PaddleDetection's VOC mAP (fcos_jax.voc_map).
    self.batches, self.info = pipeline.make_eval_dataset(
        config, process_index=jax.process_index(), process_count=jax.process_count(), stop=stop,
        class_names=class_names, source=source)
    self.eval_step = jax.jit(make_eval_step(model, config), static_argnames='canvas',
                             out_shardings=runtime.replicated(mesh))
    self.resized_on_device = resize.side(config.data.resize_on) == 'device'

  def run(self, variables: dict, workdir: str, step: int | None = None, writer=None) -> dict:
    """Predicts the whole split, writes results.json, metrics.json and pr_curves.png (each with `_step{step}` when
    given) to `workdir`, returns the metrics (the 12 COCO numbers, with a VOC source `voc_map_11point` and
    `voc_map_integral`, `unreadable_images` and `per_class`, see `evaluate_boxes`; {} on processes other than 0).

    `writer` (a clu metric writer, e.g. the training run's TensorBoard): also gets, at `step`, the per-class AP as
    scalars `eval/AP/CLASS` and eval.num_images_to_draw fixed validation images (the first of the split) drawn with
    their detections scoring at least eval.draw_threshold as images `eval/detections`, taken from this same pass.

    Every process runs the same number of batches (the last is padded and masked); detections come back
    replicated, so process 0 writes the files and runs COCOeval (eval.backend). Unreadable images
    (data.skip_bad_images) get no detections but count: their ground truth is missed.
    """
    num_pictures = self.options.num_images_to_draw if writer is not None and runtime.is_main_process() else 0
    results, image_ids, num_unreadable, pictures = self._predict(
        jax.device_put(variables, runtime.replicated(self.mesh)), num_pictures)
    if not runtime.is_main_process():
      return {}
    suffix = '' if step is None else f'_step{step}'
    os.makedirs(workdir, exist_ok=True)
    atomic.write_json(os.path.join(workdir, f'results{suffix}.json'), results)
    evaluation = evaluate_boxes(self.info.coco_gt, results, image_ids, self.options.backend)
    metrics = {**evaluation.metrics, 'unreadable_images': num_unreadable}
    if self.voc:
      metrics.update(voc_map.voc_metrics(self.info.coco_gt, results, image_ids))
      print(f'VOC mAP@0.5 {metrics["voc_map_11point"]:.4f} (11point), {metrics["voc_map_integral"]:.4f} (integral)',
            flush=True)
    skipped = self.batches.stats.summary()  # This process's files; the count is over all processes.
    atomic.write_json(os.path.join(workdir, f'metrics{suffix}.json'),
                      {'step': step, 'num_images': len(image_ids), **metrics,
                       'unreadable_files': skipped['skipped_files'], 'per_class': evaluation.per_class}, 1)
    per_class.save_curves(os.path.join(workdir, f'pr_curves{suffix}.png'), evaluation.curves,
                          f'{len(image_ids)} images' + ('' if step is None else f', step {step}'))
    if writer is not None:
      writer.write_scalars(step, {f'eval/AP/{name}': row['AP'] for name, row in evaluation.per_class.items()
                                  if row['AP'] is not None})
      if pictures:
        writer.write_images(step, {'eval/detections': _same_size(pictures)})
    unreadable = f', {num_unreadable} of them unreadable (scored as missed)' if num_unreadable else ''
    print(f'COCO box AP {metrics["AP"]:.4f}, AP50 {metrics["AP50"]:.4f} on {len(image_ids)} images{unreadable}'
          + ('' if step is None else f' (step {step})'), flush=True)
    return {**metrics, 'per_class': evaluation.per_class}

  def _predict(self, variables, num_pictures=0):
    """(COCO result dicts, ids of the images evaluated, count of unreadable images, pictures) over the whole split;
    `pictures`: the first `num_pictures` readable images of this process drawn with their detections.

    One batch in flight: the next batch is read and dispatched before the previous one's outputs are fetched, so
    the device computes while the host converts results and reads input.
    """
    info = self.info
    results, image_ids, start, pictures = [], list(info.missing_image_ids), time.perf_counter(), []
    num_unreadable = len(info.missing_image_ids)

    def collect(out, batch, done):
      """One batch's outputs, fetched from the device, into the results (and pictures, from the host `batch`)."""
      nonlocal num_unreadable
      out = jax.device_get(out)
      results.extend(detections_to_coco(out, out, info.label_to_category))
      unreadable = np.asarray(out['unreadable'], bool)
      image_ids.extend(np.asarray(out['image_id'])[np.asarray(out['mask'], bool) | unreadable].tolist())
      num_unreadable += int(unreadable.sum())
      if len(pictures) < num_pictures:
        pictures.extend(self._draw(out, batch, num_pictures - len(pictures)))
      if runtime.is_main_process():
        rate = len(image_ids) / max(time.perf_counter() - start, 1e-9)
        progress.show(sys.stdout, 'evaluating', done, info.num_batches,
                      f'{done}/{info.num_batches} batches, {len(image_ids)} images, {rate:.1f} img/s')

    pending, dispatched = None, 0
    for batch in self.batches:
      batch, canvas = resize.split_canvas(batch)
      out = self.eval_step(variables, runtime.to_global(batch, self.mesh), canvas=canvas)
      if pending is not None:
        collect(*pending, dispatched)
      pending, dispatched = (out, batch), dispatched + 1
    if pending is not None:
      collect(*pending, dispatched)
    if runtime.is_main_process():
      print(flush=True)
    return results, image_ids, num_unreadable, pictures

  def _draw(self, out, batch, count):
    """Up to `count` pictures (uint8 [h, w, 3]) of the readable images of this process's host `batch` with their
    detections in `out` (the global batch, fetched; this process's rows come first) that score at least
    eval.draw_threshold and belong to a category of the split."""
    names = {c['id']: c['name'] for c in self.info.coco_gt.dataset['categories']}
    category = np.asarray(self.info.label_to_category)
    pictures = []
    for i in np.flatnonzero(np.asarray(batch['mask'], bool))[:count]:
      shown = (np.asarray(out['valid'][i], bool) & (out['scores'][i] >= self.options.draw_threshold)
               & (category[np.maximum(out['classes'][i], 0)] >= 0))
      boxes, classes = out['boxes'][i][shown], out['classes'][i][shown]
      if self.resized_on_device:  # The host holds the decoded image: draw in original pixels.
        (h, w), boxes = batch['orig_size'][i], inference.to_original_pixels(boxes, out['scale'][i])
      else:  # The host holds the resized image: draw in canvas pixels.
        h, w = batch['size'][i]
      picture = draw.draw(batch['image'][i][:h, :w], boxes, out['scores'][i][shown], classes,
                          [names[c] for c in category[classes]])
      pictures.append(np.asarray(picture))
    return pictures


def _same_size(pictures):
  """uint8 [N, H, W, 3] of pictures [h, w, 3] of any sizes, each at the top left of a grey H x W (the largest)."""
  height, width = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
  out = np.full((len(pictures), height, width, 3), 64, np.uint8)
  for picture, o in zip(pictures, out):
    o[:picture.shape[0], :picture.shape[1]] = picture
  return out


class SlicedEvaluator(Evaluator):
  """An `Evaluator` that predicts each image in tiles (`fcos_jax.slicing`, PaddleDetection's sliced evaluation)
  through a `predict.Predictor`, then scores and writes as `run` does. One process."""

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, mesh: jax.sharding.Mesh,
               sliced: 'slicing.Slicing', class_names: Sequence[str] | None = None):
    from fcos_jax.data import sources  # pylint: disable=g-import-not-at-top  (TensorFlow)
    if jax.process_count() > 1:
      raise errors.ConfigError('Sliced evaluation runs in one process: start it without '
                             'train.coordinator_address or distributed_auto.')
    self.source, self.config, self.sliced = sources.make_source(config), config, sliced
    super().__init__(config, model, mesh, class_names, self.source)

  def _predict(self, variables, num_pictures=0):
    """(COCO result dicts, ids of the images evaluated, count of unreadable images, no pictures), as
    `Evaluator._predict`; it runs in fcos-evaluate, which draws no TensorBoard pictures (`num_pictures` is 0)."""
    from fcos_jax import predict  # pylint: disable=g-import-not-at-top  (TensorFlow)
    info, start = self.info, time.perf_counter()
    results, image_ids, num_unreadable = [], list(info.missing_image_ids), len(info.missing_image_ids)
    for image_id, found in predict.predict_split(
        predict.Predictor(self.config, variables), self.source, self.config.data.val_split,
        info.num_images - len(info.missing_image_ids), self.sliced, self.config.data.skip_bad_images):
      image_ids.append(image_id)
      if isinstance(found, predict.UnreadableImageError):  # Scored as missed.
        self.batches.stats.skip([f'{found} (image_id {image_id})'])
        num_unreadable += 1
        continue
      categories = np.asarray(info.label_to_category)[found.classes]
      known = categories >= 0  # Classes the split lacks are not scored.
      results.extend(coco_results([image_id] * int(known.sum()), categories[known], found.boxes[known],
                                  found.scores[known]))
      rate = len(image_ids) / max(time.perf_counter() - start, 1e-9)
      progress.show(sys.stdout, 'evaluating in tiles', len(image_ids), info.num_images,
                    f'{len(image_ids)}/{info.num_images} images, {rate:.1f} img/s')
    print(flush=True)
    return results, image_ids, num_unreadable, []


def evaluate_checkpoint(config: ml_collections.ConfigDict | None, workdir: str,
                        checkpoint: str | None = None, sliced: 'slicing.Slicing | None' = None) -> dict:
  """Evaluates `checkpoint` (a checkpoint directory), or the latest checkpoint in `workdir`; with `sliced`, predicts
  every image in tiles (`SlicedEvaluator`).

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
  if sliced is not None:
    return SlicedEvaluator(config, model, runtime.create_mesh(), sliced, class_names).run(variables, workdir)
  return Evaluator(config, model, runtime.create_mesh(), class_names).run(variables, workdir)
