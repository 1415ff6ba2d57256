"""COCO results and metrics: detections made from the ground truth itself score AP 1, worse ones less, none 0; a
dataset with its categories in another order or fewer of them scores the model's labels by name."""

import json

import jax
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fcos_jax import checkpoints, eval_lib, runtime
from fcos_jax.commands import evaluate as fcos_evaluate
from fcos_jax.data import annotations, synthetic
from fcos_jax.model import fcos
from tests.test_data_pipeline import NAMES as SHAPES, relabelled_json
from tests.test_predict import tiny_config

CATEGORIES = (1, 5, 90)  # Non-contiguous COCO ids; label = position in this sorted tuple.
# image id -> (width, height, [(category, [x, y, w, h]), ...]); sizes avoid the 32^2 and 96^2 area bounds.
IMAGES = {
    3: (640, 480, [(1, [10, 20, 20, 20]), (5, [100, 120, 50, 60]), (90, [300, 100, 150, 200])]),
    7: (500, 375, [(5, [50, 50, 200, 150]), (5, [60, 40, 190, 140]), (1, [400, 300, 25, 18])]),
    11: (300, 200, []),
    20: (800, 600, [(90, [5, 5, 60, 70]), (1, [700, 500, 80, 90])]),
}
CANVAS_LONG = 704  # Each image is resized so its long side is this.


@pytest.fixture(scope='module')
def gt_path(tmp_path_factory):
  images, anns = [], []
  for image_id, (w, h, boxes) in IMAGES.items():
    images.append({'id': image_id, 'width': w, 'height': h, 'file_name': f'{image_id}.jpg'})
    for cat, (x, y, bw, bh) in boxes:
      anns.append({'id': len(anns) + 1, 'image_id': image_id, 'category_id': cat, 'bbox': [x, y, bw, bh],
                   'area': bw * bh, 'iscrowd': 0})
  data = {'images': images, 'annotations': anns,
          'categories': [{'id': c, 'name': f'c{c}'} for c in CATEGORIES]}
  path = tmp_path_factory.mktemp('coco') / 'instances_val.json'
  path.write_text(json.dumps(data))
  return path


def perfect_batch(k=6):
  """Detections equal to the ground truth in canvas pixels, plus one masked-out padding image."""
  ids = list(IMAGES) + [3]
  b = len(ids)
  det = {'boxes': np.zeros((b, k, 4), np.float32), 'scores': np.zeros((b, k), np.float32),
         'classes': np.full((b, k), -1, np.int32), 'valid': np.zeros((b, k), bool)}
  scale = np.zeros((b, 2), np.float32)
  for i, image_id in enumerate(ids):
    w, h, boxes = IMAGES[image_id]
    sx = round(w * CANVAS_LONG / max(w, h)) / w
    sy = round(h * CANVAS_LONG / max(w, h)) / h
    scale[i] = sy, sx
    for j, (cat, (x, y, bw, bh)) in enumerate(boxes):
      det['boxes'][i, j] = np.array([x, y, x + bw, y + bh]) * [sx, sy, sx, sy]
      det['scores'][i, j] = 0.9 - 0.1 * j
      det['classes'][i, j] = CATEGORIES.index(cat)
      det['valid'][i, j] = True
  batch = {'image_id': np.array(ids), 'scale': scale, 'mask': np.array([True] * len(IMAGES) + [False])}
  return det, batch


def test_results_are_ground_truth_in_original_pixels():
  det, batch = perfect_batch()
  results = eval_lib.detections_to_coco(det, batch, CATEGORIES)
  expected = [(image_id, cat, box) for image_id, (_, _, boxes) in IMAGES.items() for cat, box in boxes]
  assert len(results) == len(expected)  # Invalid slots and the padding image are skipped.
  for r, (image_id, cat, box) in zip(results, expected):
    assert (r['image_id'], r['category_id']) == (image_id, cat)
    np.testing.assert_allclose(r['bbox'], box, atol=0.011)
    assert isinstance(r['image_id'], int) and isinstance(r['score'], float)
  del batch['mask']
  assert len(eval_lib.detections_to_coco(det, batch, CATEGORIES)) == len(expected) + 3


def test_perfect_detections_give_ap_one(gt_path):
  det, batch = perfect_batch()
  metrics = eval_lib.coco_evaluate(str(gt_path), eval_lib.detections_to_coco(det, batch, CATEGORIES))
  assert list(metrics) == list(eval_lib.METRIC_NAMES)
  for name in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR100', 'ARs', 'ARm', 'ARl'):
    assert metrics[name] == pytest.approx(1.0), name


def test_jittered_and_missing_detections_score_lower(gt_path):
  det, batch = perfect_batch()
  rng = np.random.default_rng(0)
  jittered = dict(det, boxes=det['boxes'] * rng.uniform(0.85, 1.15, det['boxes'].shape).astype(np.float32))
  ap_jitter = eval_lib.coco_evaluate(gt_path, eval_lib.detections_to_coco(jittered, batch, CATEGORIES))['AP']
  assert 0 < ap_jitter < 0.9
  missing = dict(det, valid=det['valid'] & (batch['image_id'] != 7)[:, None])  # Image 7: no predictions.
  results = eval_lib.detections_to_coco(missing, batch, CATEGORIES)
  metrics = eval_lib.coco_evaluate(gt_path, results)
  assert 0 < metrics['AP'] < 1 and metrics['AR100'] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)  # Per category.
  assert eval_lib.coco_evaluate(gt_path, results, image_ids=[3, 11, 20])['AP'] == pytest.approx(1.0)


def test_no_results_give_ap_zero(gt_path):
  metrics = eval_lib.coco_evaluate(gt_path, [])
  assert metrics['AP'] == 0 and metrics['AR100'] == 0
  assert set(metrics) == set(eval_lib.METRIC_NAMES)


def test_classes_the_dataset_lacks_are_not_scored():
  det, batch = perfect_batch()
  mapping = (1, -1, 90)  # The model's class 1 (category 5 here) is not in the dataset.
  results = eval_lib.detections_to_coco(det, batch, mapping)
  expected = [(i, c) for i, (_, _, boxes) in IMAGES.items() for c, _ in boxes if c != 5]
  assert [(r['image_id'], r['category_id']) for r in results] == expected


# --- Datasets with other or fewer categories: labels mapped by name. ---------------------------------------------

NAMES = tuple(f'c{c}' for c in CATEGORIES)  # The model's class names, in label order.


def jittered_batch():
  """`perfect_batch` with boxes moved a little: AP between 0 and 1."""
  det, batch = perfect_batch()
  rng = np.random.default_rng(0)
  return dict(det, boxes=det['boxes'] * rng.uniform(0.85, 1.15, det['boxes'].shape).astype(np.float32)), batch


def relabelled(gt_path, tmp_path, new_ids):
  """The ground truth of `gt_path` with category ids replaced by new_ids[id] (absent: the category and its boxes left
  out), listed in reverse -> (json path, categories)."""
  path = relabelled_json(gt_path, tmp_path / 'relabelled.json',
                         [(c, new_ids[c], f'c{c}') for c in CATEGORIES[::-1] if c in new_ids])
  return path, json.loads(path.read_text())['categories']


def test_categories_in_another_order_score_the_same_by_name(gt_path, tmp_path):
  det, batch = jittered_batch()
  new_ids = {1: 90, 5: 1, 90: 5}
  path, categories = relabelled(gt_path, tmp_path, new_ids)
  original = eval_lib.detections_to_coco(det, batch, CATEGORIES)
  expected = eval_lib.coco_evaluate(gt_path, original)
  assert 0 < expected['AP'] < 0.9
  by_name = eval_lib.detections_to_coco(det, batch, annotations.label_to_category(NAMES, categories))
  assert by_name == [dict(r, category_id=new_ids[r['category_id']]) for r in original]  # Mapped by hand.
  assert eval_lib.coco_evaluate(path, by_name) == pytest.approx(expected, abs=1e-12)
  by_position = eval_lib.detections_to_coco(det, batch, sorted(new_ids.values()))  # What names unknown would do.
  assert eval_lib.coco_evaluate(path, by_position)['AP'] < expected['AP'] / 2


def test_fewer_categories_score_the_others_as_on_the_full_dataset(gt_path, tmp_path):
  det, batch = jittered_batch()
  path, categories = relabelled(gt_path, tmp_path, {1: 1, 90: 90})
  mapping = annotations.label_to_category(NAMES, categories)
  assert mapping == (1, -1, 90)
  results = eval_lib.detections_to_coco(det, batch, mapping)
  everything = eval_lib.detections_to_coco(det, batch, CATEGORIES)
  assert results == [r for r in everything if r['category_id'] != 5]
  # Reference: pycocotools on the full dataset and every detection, restricted to categories 1 and 90.
  full = COCO(str(gt_path))
  evaluator = COCOeval(full, full.loadRes([dict(r) for r in everything]), 'bbox')
  evaluator.params.catIds = [1, 90]
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  expected = dict(zip(eval_lib.METRIC_NAMES, evaluator.stats.tolist()))
  assert eval_lib.coco_evaluate(path, results) == pytest.approx(expected, abs=1e-12)
  assert eval_lib.coco_evaluate(gt_path, everything)['AP'] != pytest.approx(expected['AP'])


@pytest.fixture(scope='module')
def shapes_checkpoint(shapes_dataset, tmp_path_factory):
  """A tiny random model of the generated dataset's 5 classes, saved with and without its class names, and the
  dataset (2 val images)."""
  root = shapes_dataset(2, 2)
  config = tiny_config()
  config.model.num_classes = 5
  config.data.update(dict(root=root, generate_synthetic=False))
  variables = fcos.init_variables(fcos.build_model(config.model), 0)
  paths = {}
  for key, metadata in (('names', checkpoints.make_metadata(config, SHAPES, [c for c, _, _ in synthetic.CATEGORIES])),
                        ('none', checkpoints.make_metadata(config))):
    paths[key] = tmp_path_factory.mktemp('ckpt') / key
    checkpoints.save_variables(str(paths[key]), variables, metadata)
  return root, paths


def test_evaluate_scores_the_models_labels_by_category_name(shapes_checkpoint, tmp_path):
  """fcos-evaluate on a json with other ids, listed in reverse and without 'triangle': the results are those on the
  original json, their ids mapped by name and the triangle detections dropped."""
  root, paths = shapes_checkpoint
  new_ids = {1: 40, 3: 30, 8: 20, 12: 5}  # rectangle, ellipse, cross, diamond.
  other = relabelled_json(f'{root}/annotations/instances_val.json', tmp_path / 'val.json',
                          [(c, new_ids[c], name) for c, name, _ in synthetic.CATEGORIES[::-1] if c in new_ids])
  for name, extra in (('same', []), ('other', [f'--config.data.val_annotations={other}'])):
    fcos_evaluate.main([f'--workdir={tmp_path / name}', f'--checkpoint={paths["names"]}', *extra])
  same, other = (json.loads((tmp_path / name / 'results.json').read_text()) for name in ('same', 'other'))
  detected = {r['category_id'] for r in same}  # Which classes a random model detects depends on its outputs:
  assert 7 in detected and len(detected & {1, 3, 12}) >= 2  # triangle (dropped) and mapped ones must be among them.
  assert other == [dict(r, category_id=new_ids[r['category_id']]) for r in same if r['category_id'] != 7]


def evaluate_command(monkeypatch, capsys, tmp_path, root, checkpoint, categories):
  """Runs fcos-evaluate's entry point on `checkpoint` and the val json of `root` with `categories` [(id, new id,
  name)]; prediction must not start. Returns (exit status, stderr lines)."""
  path = relabelled_json(f'{root}/annotations/instances_val.json', tmp_path / 'val.json', categories)

  def no_prediction(*args):
    raise AssertionError(f'prediction started: {args}')

  monkeypatch.setattr(eval_lib, 'make_eval_step', no_prediction)
  with pytest.raises(SystemExit) as exit_:
    fcos_evaluate.main([f'--workdir={tmp_path / "w"}', f'--checkpoint={checkpoint}',
                       f'--config.data.val_annotations={path}'])
  return exit_.value.code, capsys.readouterr().err.splitlines()


def test_evaluate_stops_before_predicting_on_categories_the_model_does_not_know(shapes_checkpoint, tmp_path,
                                                                                monkeypatch, capsys):
  root, paths = shapes_checkpoint
  categories = [(c, c, 'hexagon' if name == 'diamond' else name) for c, name, _ in synthetic.CATEGORIES]
  status, err = evaluate_command(monkeypatch, capsys, tmp_path, root, paths['names'], categories + [(99, 50, 'star')])
  assert status == 2 and err[-2:] == [
      "fcos-evaluate: error: Split 'val': The dataset's categories do not match the model's classes by name:",
      "  dataset categories the model does not know (2): 12 'hexagon', 50 'star'; the model knows: rectangle, "
      'ellipse, triangle, cross, diamond'], err


def test_evaluate_maps_by_position_when_the_checkpoint_has_no_class_names(shapes_checkpoint, tmp_path, monkeypatch,
                                                                          capsys):
  root, paths = shapes_checkpoint
  fewer = [(c, c, name) for c, name, _ in synthetic.CATEGORIES if name != 'cross']  # By name this would evaluate.
  status, err = evaluate_command(monkeypatch, capsys, tmp_path, root, paths['none'], fewer)
  assert status == 2 and err[-1] == ("fcos-evaluate: error: Split 'val' has 4 categories (rectangle, ellipse, "
                                     'triangle, diamond) but model.num_classes is 5: set '
                                     '--config.model.num_classes=4.')


def test_evaluate_dispatches_the_next_batch_before_fetching_the_last(shapes_dataset, tmp_path, monkeypatch):
  """One batch in flight: batch i + 1 is on the device before batch i's detections are fetched; the results are
  those of every batch."""
  root = shapes_dataset(1, 9)  # Two batches of 8.
  config = tiny_config()
  config.model.num_classes = 5
  config.data.update(dict(root=root, generate_synthetic=False))
  config.eval.batch_size = 8
  model = fcos.build_model(config.model)
  evaluator, events = eval_lib.Evaluator(config, model, runtime.create_mesh()), []
  jitted = evaluator.eval_step

  def eval_step(*args, **kwargs):
    events.append('dispatch')
    return jitted(*args, **kwargs)

  evaluator.eval_step = eval_step
  fetch = jax.device_get
  monkeypatch.setattr(jax, 'device_get', lambda tree: events.append('fetch') or fetch(tree))
  variables = fcos.init_variables(model, 0)
  for run in ('first', 'second'):  # The same Evaluator again: the same batches, the same results.
    evaluator.run(variables, str(tmp_path / run))
  assert events == ['dispatch', 'dispatch', 'fetch', 'fetch'] * 2
  assert json.loads((tmp_path / 'first' / 'metrics.json').read_text())['num_images'] == 9
  assert (tmp_path / 'first' / 'results.json').read_text() == (tmp_path / 'second' / 'results.json').read_text()
