"""What an evaluation leaves besides the 12 numbers: the per-class table in the metrics json, the PR-curve picture,
and (given a metric writer) the per-class AP and pictures of fixed validation images with their detections, taken
from the evaluation's own pass; a short training run's TensorBoard holds them at each evaluation."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from clu import metric_writers
from PIL import Image

from fcos_jax import eval_lib, runtime, train_lib
from fcos_jax.data import synthetic
from fcos_jax.model import fcos
from tests.test_predict import tiny_config as tiny_predict_config
from tests.test_train import data_root, tiny_config  # pylint: disable=unused-import  (data_root: a fixture)

SHAPES = [name for _, name, _ in synthetic.CATEGORIES]


def pictures(tensor):
  """The images of an image summary: [N, H, W, 3] uint8, checked against the width and height it records."""
  width, height, *encoded = tf.make_ndarray(tensor)
  decoded = np.stack([np.asarray(Image.open(io.BytesIO(e)).convert('RGB')) for e in encoded])
  assert decoded.shape[1:3] == (int(height), int(width))
  return decoded


def thumbnail(picture, size=16):
  return np.asarray(Image.fromarray(picture).resize((size, size), Image.BILINEAR), np.float32)


def event_values(logdir):
  """{tag: {step: TensorProto}} of the TensorBoard event files under `logdir`."""
  found = {}
  for name in os.listdir(logdir):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
      for value in event.summary.value:
        found.setdefault(value.tag, {})[event.step] = value.tensor
  return found


def test_the_evaluator_draws_fixed_images_from_its_own_pass(tmp_path):
  root = synthetic.generate(str(tmp_path / 'data'), num_train=1, num_val=6, seed=0)
  config = tiny_predict_config()  # Random weights scoring ~0.25 everywhere: 20 detections an image.
  config.model.num_classes = 5
  config.data.update(dict(root=root, generate_synthetic=False, canvases=((256, 256),)))  # Evaluated in file order.
  config.eval.num_images_to_draw = 4
  model = fcos.build_model(config.model)
  variables = fcos.init_variables(model, 0)
  evaluator, calls = eval_lib.Evaluator(config, model, runtime.create_mesh()), []
  jitted = evaluator.eval_step
  evaluator.eval_step = lambda *args, **kwargs: calls.append(1) or jitted(*args, **kwargs)
  events = {}
  for threshold in (1.0, 0.0):  # Nothing drawn, then every detection.
    evaluator.options.draw_threshold = threshold
    writer = metric_writers.SummaryWriter(str(tmp_path / f'tensorboard_{threshold}'))
    metrics = evaluator.run(variables, str(tmp_path / str(threshold)), 5, writer=writer)
    writer.close()
    events[threshold] = event_values(str(tmp_path / f'tensorboard_{threshold}'))
  assert len(calls) == 2 * evaluator.info.num_batches  # One pass per evaluation.
  assert sorted(os.listdir(tmp_path / '0.0')) == ['metrics_step5.json', 'pr_curves_step5.png', 'results_step5.json']
  assert list(metrics['per_class']) == SHAPES and all(row['AP'] is not None for row in metrics['per_class'].values())
  assert {tag: list(values) for tag, values in events[0.0].items()} == {
      **{f'eval/AP/{name}': [5] for name in SHAPES}, 'eval/detections': [5]}
  for name, row in metrics['per_class'].items():
    assert float(tf.make_ndarray(events[0.0][f'eval/AP/{name}'][5])) == pytest.approx(row['AP'], rel=1e-6)
  plain, drawn = (pictures(events[t]['eval/detections'][5]) for t in (1.0, 0.0))
  assert plain.shape[0] == 4 and max(plain.shape[1:3]) == 640 and plain.shape == drawn.shape
  gt = json.loads((tmp_path / 'data' / 'annotations' / 'instances_val.json').read_text())
  files = [np.asarray(Image.open(tmp_path / 'data' / 'val' / image['file_name']).convert('RGB'))
           for image in gt['images']]
  for k, picture in enumerate(plain):  # The k-th image of the split, enlarged to 640 (then grey padding).
    h, w = files[k].shape[:2]
    content = picture[:round(h * 640 / max(h, w)), :round(w * 640 / max(h, w))]
    distances = [np.abs(thumbnail(content) - thumbnail(f)).mean() for f in files]
    assert np.argmin(distances) == k and distances[k] < 8, distances
  assert (np.abs(plain.astype(int) - drawn).max(axis=-1) > 64).mean() > 0.02  # The boxes and labels.


@pytest.mark.slow  # ~4 min on 2 busy cores (a training run); the Evaluator's own writes are tested above.
def test_a_short_run_leaves_tables_curves_and_tensorboard_pictures_at_each_evaluation(data_root, tmp_path):
  train_lib.train_and_evaluate(tiny_config(data_root, num_steps=2, eval_every=1), str(tmp_path))
  found = event_values(str(tmp_path / 'tensorboard'))
  for step in (1, 2):  # Periodic, then final.
    metrics = json.loads((tmp_path / f'metrics_step{step}.json').read_text())
    assert list(metrics['per_class']) == SHAPES
    with Image.open(tmp_path / f'pr_curves_step{step}.png') as picture:
      assert picture.format == 'PNG'
    for name, row in metrics['per_class'].items():
      assert float(tf.make_ndarray(found[f'eval/AP/{name}'][step])) == pytest.approx(row['AP'], rel=1e-6, abs=1e-9)
    drawn = pictures(found['eval/detections'][step])
    assert drawn.shape[0] == 4 and max(drawn.shape[1:3]) == 640  # eval.num_images_to_draw of the 8 val images.
