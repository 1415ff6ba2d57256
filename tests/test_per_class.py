"""Per-class results, PR curves and the two COCOeval backends: each per-class row is what pycocotools reports on
that category alone, each curve is COCOeval's precision at IoU 0.5, faster-coco-eval gives pycocotools' numbers
(generated data with crowd boxes, empty images, gappy ids; the shapes val split), and the table and the picture
show what they say."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.cocoeval import COCOeval

from benchmarks import coco_eval
from fcos_jax import eval_lib, per_class
from fcos_jax.data import annotations, synthetic

# Where pycocotools' stats hold each per-class value (COCOeval.summarize's order).
STATS_INDEX = {'AP': 0, 'AP50': 1, 'AP75': 2, 'APs': 3, 'APm': 4, 'APl': 5, 'AR100': 8}


@pytest.fixture(scope='module')
def generated():
  """40 generated images (crowd boxes, images without boxes, gappy ids, a category without ground truth) with 30
  detections each."""
  gt = coco_eval.ground_truth(40, seed=1)
  assert any(b['iscrowd'] for b in gt['annotations'])
  assert {i['id'] for i in gt['images']} - {b['image_id'] for b in gt['annotations']}
  return gt, coco_eval.detections(gt, 30, seed=1)


def evaluate(gt, results, image_ids=None, backend='pycocotools'):
  with contextlib.redirect_stdout(io.StringIO()):
    return eval_lib.evaluate_boxes(annotations.quiet_coco(gt), results, image_ids, backend)


def pycocotools_run(gt, results, category_ids=None, image_ids=None):
  """pycocotools' own COCOeval, accumulated and summarized, restricted to `category_ids` and `image_ids`."""
  coco = annotations.quiet_coco(gt)
  with contextlib.redirect_stdout(io.StringIO()):
    run = COCOeval(coco, coco.loadRes([dict(r) for r in results]), 'bbox')
    if category_ids is not None:
      run.params.catIds = category_ids
    if image_ids is not None:
      run.params.imgIds = image_ids
    run.evaluate()
    run.accumulate()
    run.summarize()
  return run


@pytest.mark.parametrize('subset', [False, True], ids=['all images', 'a third of them'])
def test_each_row_is_what_pycocotools_reports_on_that_category_alone(generated, subset):
  gt, results = generated
  image_ids = [i['id'] for i in gt['images'][::3]] if subset else None
  evaluation = evaluate(gt, results, image_ids)
  assert evaluation.metrics == dict(zip(eval_lib.METRIC_NAMES, pycocotools_run(gt, results, None, image_ids).stats))
  evaluated = set(image_ids or [i['id'] for i in gt['images']])
  assert list(evaluation.per_class) == [name for _, name in coco_eval.CATEGORIES]  # In category id order.
  for category, name in coco_eval.CATEGORIES:
    stats = pycocotools_run(gt, results, [category], image_ids).stats
    row = evaluation.per_class[name]
    assert {k: row[k] for k in per_class.METRICS} == {k: None if stats[i] == -1 else stats[i]
                                                      for k, i in STATS_INDEX.items()}, name
    assert row['gt'] == sum(b['category_id'] == category and not b['iscrowd'] and b['image_id'] in evaluated
                            for b in gt['annotations'])
    assert row['detections'] == sum(r['category_id'] == category and r['image_id'] in evaluated for r in results)
  assert evaluation.per_class['toothbrush']['gt'] == 0 and evaluation.per_class['toothbrush']['detections'] > 0
  assert evaluation.per_class['toothbrush']['AP'] is None and evaluation.per_class['person']['AP'] > 0.1


def test_curves_are_cocoeval_precision_at_iou_half(generated):
  gt, results = generated
  evaluation = evaluate(gt, results)
  run = pycocotools_run(gt, results)
  np.testing.assert_array_equal(evaluation.curves.recall, np.linspace(0, 1, 101))
  np.testing.assert_array_equal(evaluation.curves.precision, run.eval['precision'][0, :, :, 0, 2].T)
  assert evaluation.curves.names == tuple(evaluation.per_class)
  for name, curve in zip(evaluation.curves.names, evaluation.curves.precision):
    ap50 = evaluation.per_class[name]['AP50']
    assert (curve == -1).all() if ap50 is None else curve.mean() == pytest.approx(ap50, abs=1e-12)


def assert_same_evaluation(a, b, tolerance=1e-9):
  assert a.metrics.keys() == b.metrics.keys()
  assert max(abs(a.metrics[k] - b.metrics[k]) for k in a.metrics) <= tolerance, (a.metrics, b.metrics)
  assert a.per_class.keys() == b.per_class.keys()
  for name, row in a.per_class.items():
    other = b.per_class[name]
    assert [k for k, v in row.items() if v is None] == [k for k, v in other.items() if v is None], name
    assert max(abs(v - other[k]) for k, v in row.items() if v is not None) <= tolerance, (name, row, other)
  np.testing.assert_allclose(a.curves.precision, b.curves.precision, rtol=0, atol=tolerance)


@pytest.mark.parametrize('case', ['all images', 'a third of them', 'no detections'])
def test_faster_coco_eval_reports_pycocotools_numbers(generated, case):
  gt, results = generated
  image_ids = [i['id'] for i in gt['images'][::3]] if case == 'a third of them' else None
  results = [] if case == 'no detections' else results
  reference = evaluate(gt, results, image_ids, 'pycocotools')
  assert_same_evaluation(evaluate(gt, results, image_ids, 'faster'), reference)
  assert 0 < reference.metrics['AP'] < 1 or case == 'no detections'


def test_faster_coco_eval_reports_pycocotools_numbers_on_the_shapes_val_split(tmp_path):
  root = synthetic.generate(str(tmp_path), num_train=1, num_val=24, seed=0)
  gt = json.loads((tmp_path / 'annotations' / 'instances_val.json').read_text())
  assert root == str(tmp_path) and len(gt['images']) == 24
  results = coco_eval.detections(gt, 40, seed=2)
  reference = evaluate(gt, results, backend='pycocotools')
  assert 0.1 < reference.metrics['AP'] < 0.9
  assert_same_evaluation(evaluate(gt, results, backend='faster'), reference)


def test_the_table_is_aligned_and_says_where_there_is_no_ground_truth():
  row = dict(AP=0.5, AP50=0.75, AP75=0.5, APs=None, APm=0.25, APl=1.0, AR100=0.625, gt=12, detections=40)
  empty = {**{k: None for k in per_class.METRICS}, 'gt': 0, 'detections': 3}
  text = per_class.format_table({'rectangle': row, 'a longer class name': empty})
  lines = text.splitlines()
  table, notes = lines[:6], lines[6:]
  assert len({len(line) for line in table}) == 1 and table[0] == table[2] == table[5]
  assert [c.strip() for c in table[1].strip('|').split('|')] == ['category', *per_class.METRICS, 'gt', 'detections']
  assert [c.strip() for c in table[3].strip('|').split('|')] == [
      'rectangle', '0.500', '0.750', '0.500', '-', '0.250', '1.000', '0.625', '12', '40']
  assert [c.strip() for c in table[4].strip('|').split('|')][1:] == ['-'] * 7 + ['0', '3']
  assert notes[0] == 'No ground truth in the evaluated images, so no AP: a longer class name.'
  assert notes[1].startswith("'-': the class has no ground truth in that size range")
  assert '-1' not in text


def test_repeated_category_names_get_their_ids():
  categories = [{'id': 1, 'name': 'cat'}, {'id': 4, 'name': 'dog'}, {'id': 9, 'name': 'cat'}]
  assert per_class.category_names(categories) == ['cat (id 1)', 'dog', 'cat (id 9)']


def test_the_picture_shows_the_weakest_classes_and_the_mean(tmp_path):
  names = tuple(f'class {k}' for k in range(14))
  levels = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5, 0.55, 0.65, 0.75, 0.85, 0.95])
  precision = np.repeat(levels[:, None], 101, axis=1)
  precision[13] = -1  # No ground truth: neither drawn nor in the mean.
  curves = per_class.Curves(np.linspace(0, 1, 101), precision, names)
  ax = per_class.plot_curves(curves, 'step 7').axes[0]
  weakest = np.argsort(levels[:13])[:per_class.MAX_CURVES]
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  assert labels == [f'class {k} ({levels[k]:.3f})' for k in weakest] + [f'mean of 13 ({levels[:13].mean():.3f})']
  np.testing.assert_allclose(ax.lines[-1].get_ydata(), levels[:13].mean())
  assert ax.get_xlabel() == 'recall' and ax.get_ylabel().startswith('precision')
  assert 'step 7' in ax.get_title() and 'the 10 weakest by AP50 of 13 classes' in ax.get_title()
  per_class.save_curves(str(tmp_path / 'pr.png'), curves, 'step 7')
  with Image.open(tmp_path / 'pr.png') as picture:
    assert picture.format == 'PNG' and picture.width > 600 and picture.height > 400
  empty = per_class.plot_curves(per_class.Curves(curves.recall, -np.ones((2, 101)), names[:2])).axes[0]
  assert not empty.lines and empty.texts[0].get_text() == 'no ground truth in the evaluated images'
