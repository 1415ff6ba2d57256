"""Bad input as a user meets it, through the entry points: a canvas whose only image is unreadable stops with its
name instead of spinning; SIGTERM/SIGINT are honoured while the input blocks; skipped images are reported once; an
unreadable evaluation image counts as missed."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fcos_jax import checkpoints, eval_lib
from fcos_jax.data import iterator
from fcos_jax.model import fcos
from fcos_jax.recipes import shapes
from test_train import scalars

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
CANVASES = ((256, 256), (256, 128))  # Landscape, portrait.
TINY = ['--config.data.generate_synthetic=false', '--config.data.short_sizes=(128,)',
        '--config.data.eval_short_size=128', '--config.data.max_size=192', f'--config.data.canvases={CANVASES}',
        '--config.data.max_boxes=16', '--config.model.stem_width=8',
        '--config.model.fpn_channels=16', '--config.model.gn_groups=4', '--config.train.log_every=1']


@pytest.fixture(scope='module')
def data_root(shapes_dataset):
  return shapes_dataset(16, 6)


def copy_of(root, tmp_path):
  copy = str(tmp_path / 'data')
  shutil.copytree(root, copy)
  return copy


def load_json(root, split):
  with open(os.path.join(root, 'annotations', f'instances_{split}.json')) as f:
    return json.load(f)


def truncate(path):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


def train(tmp_path, root, *extra, **popen):
  command = [sys.executable, os.path.join(REPO, 'train.py'), f'--config={os.path.join(REPO, "configs", "shapes.py")}',
             f'--workdir={tmp_path / "work"}', f'--config.data.root={root}', *TINY, *extra]
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'PYTHONPATH')}
  return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **popen)


def only_portrait_unreadable(data_root, tmp_path):
  """A copy of the dataset whose portrait canvas has one image, truncated -> (root, that image's json entry)."""
  root = copy_of(data_root, tmp_path)
  dataset = load_json(root, 'train')
  portrait = [im for im in dataset['images'] if im['height'] > im['width']]
  only, gone = portrait[0], {im['id'] for im in portrait[1:]}
  assert any(a['image_id'] == only['id'] and not a['iscrowd'] for a in dataset['annotations'])
  dataset['images'] = [im for im in dataset['images'] if im['id'] not in gone]
  dataset['annotations'] = [a for a in dataset['annotations'] if a['image_id'] not in gone]
  with open(os.path.join(root, 'annotations', 'instances_train.json'), 'w') as f:
    json.dump(dataset, f)
  truncate(os.path.join(root, 'train', only['file_name']))
  return root, only


def test_a_canvas_whose_only_image_is_unreadable_stops_with_its_name(data_root, tmp_path):
  root, only = only_portrait_unreadable(data_root, tmp_path)
  # Seed 7 draws the portrait canvas first (seed 0, the default, at the 37th batch): the error comes before compiling.
  proc = train(tmp_path, root, '--config.data.skip_bad_images=true', '--config.train.num_steps=1000',
               '--config.seed=7')
  try:
    output, _ = proc.communicate(timeout=240)  # It used to spin forever here.
  finally:
    proc.kill()
  assert proc.returncode not in (0, None), output[-3000:]
  assert re.search(r'fcos-train: error: Input pipeline: No readable image in canvas 256x128 of split train '
                   r'\(1 image\(s\) or fewer; 1 unreadable in a row\): \S+/train/' + only['file_name']
                   + r' \(image_id \d+\): truncated JPEG', output), output[-3000:]
  assert 'EagerPyFunc' not in output and output.count('Skipping unreadable image') <= 1


def test_an_input_error_mid_run_saves_the_last_step_and_the_fixed_rerun_resumes(data_root, tmp_path):
  """The portrait canvas's only image unreadable: seed 8 draws that canvas for the 3rd batch. fcos-train saves step 2,
  names the file in one line and exits with status 2; with the file restored, the same command resumes from step 2
  and finishes (step 3, the portrait canvas's first)."""
  root, only = only_portrait_unreadable(data_root, tmp_path)
  image = os.path.join(root, 'train', only['file_name'])
  command = [os.path.join(BIN, 'fcos-train'), '--config=shapes', f'--workdir={tmp_path / "work"}',
             f'--config.data.root={root}', *TINY, '--config.data.skip_bad_images=true', '--config.seed=8',
             '--config.train.num_steps=3', '--config.train.final_eval=false']
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'PYTHONPATH', 'FCOS_JAX_DEBUG')}
  failed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
  assert failed.returncode == 2, failed.stdout[-2000:] + failed.stderr[-3000:]
  assert 'Traceback' not in failed.stderr and 'step 2/3 | loss' in failed.stdout, failed.stderr[-3000:]
  error = failed.stderr.strip().splitlines()[-1]
  assert re.fullmatch(r'fcos-train: error: Input pipeline: No readable image in canvas 256x128 of split train .*: '
                      + re.escape(f'{image} (image_id {only["id"]}): truncated JPEG (no end-of-image marker). ')
                      + r'Training stopped after step 2, which is saved: fix the file and run the same command to '
                      r'resume\.', error), error
  assert checkpoints.manager(str(tmp_path / 'work' / 'checkpoints')).latest_step() == 2
  shutil.copy(os.path.join(data_root, 'train', only['file_name']), image)  # The file fixed.
  resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
  assert 'Resumed from step 2.' in resumed.stdout and 'step 3/3 | loss' in resumed.stdout, resumed.stdout[-2000:]
  assert checkpoints.manager(str(tmp_path / 'work' / 'checkpoints')).latest_step() == 3


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signals_are_honoured_while_the_input_blocks(data_root, tmp_path, signum):
  """Every training image a FIFO without writer: reading any of them blocks forever inside TensorFlow."""
  root = copy_of(data_root, tmp_path)
  for image in load_json(root, 'train')['images']:
    path = os.path.join(root, 'train', image['file_name'])
    os.remove(path)
    os.mkfifo(path)
  proc = train(tmp_path, root, '--config.train.num_steps=10')
  try:
    deadline = time.time() + 240
    while not (tmp_path / 'work' / 'tensorboard').exists() and time.time() < deadline:  # Made just before the loop.
      time.sleep(0.1)
    time.sleep(3)
    assert proc.poll() is None
    proc.send_signal(signum)
    sent = time.time()
    output, _ = proc.communicate(timeout=30)
    assert time.time() - sent < 10 + iterator._GRACE_S, output[-3000:]
  finally:
    proc.kill()
  # Either signal asks for a stop with a checkpoint; the read never ends, so after _GRACE_S nothing can be saved.
  name = signal.Signals(signum).name
  assert proc.returncode == 0 and f'{name}: the input is stuck, so step 0 cannot be saved with its data position; ' \
      'run the same command to resume from the start.' in output, output[-3000:]


def test_skipped_training_images_are_named_once_and_counted(data_root, tmp_path):
  """Three epochs over a split with one truncated image: one warning, the summary line, train_metrics.json and the
  TensorBoard count all say 1."""
  root = copy_of(data_root, tmp_path)
  broken = next(i for i in load_json(root, 'train')['images'] if i['width'] >= i['height'])
  truncate(os.path.join(root, 'train', broken['file_name']))
  proc = train(tmp_path, root, '--config.data.skip_bad_images=true', '--config.train.num_steps=6',
               '--config.train.batch_size=8', '--config.train.final_eval=false')
  output, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, output[-3000:]
  message = f'{root}/train/{broken["file_name"]} (image_id {broken["id"]}): truncated JPEG (no end-of-image marker)'
  assert output.count('Skipping unreadable image') == 1 and message in output
  assert f'Skipped 1 unreadable image(s) (data.skip_bad_images): {message}' in output
  with open(tmp_path / 'work' / 'train_metrics.json') as f:
    summary = json.load(f)
  assert summary['skipped_images'] == 1 and summary['skipped_files'] == [message]
  skipped = scalars(str(tmp_path / 'work' / 'tensorboard'))['train/skipped_images']
  assert set(skipped) == set(range(1, 7)) and skipped[6] == 1


def tiny_config(root, **data):
  c = shapes.get_config()
  c.data.update(dict(root=root, generate_synthetic=False, short_sizes=(128,), eval_short_size=128, max_size=192,
                     canvases=CANVASES, max_boxes=16, **data))
  c.model.update(dict(stem_width=8, fpn_channels=16, gn_groups=4))
  c.postprocess.score_threshold = 0.0  # An untrained model: keep its (poor) detections so that AP is not zero.
  c.eval.batch_size = 8
  return c


def annotations_from_detections(images, results, per_image=3):
  """COCO annotations made of each image's `per_image` best detections in `results`: ground truth on which an
  untrained model scores an AP above 0."""
  annotations = []
  for image in images:
    top = sorted((r for r in results if r['image_id'] == image['id']), key=lambda r: -r['score'])[:per_image]
    annotations += [{'id': len(annotations) + 1, 'image_id': image['id'], 'iscrowd': 0, 'category_id': r['category_id'],
                     'bbox': r['bbox'], 'area': r['bbox'][2] * r['bbox'][3]} for r in top]
  return annotations


def test_an_unreadable_eval_image_counts_as_missed(data_root, tmp_path, capsys):
  """An untrained model, scored against ground truth made of its own top detections (so that AP is above 0):
  with one image unreadable, the metrics are those of the same detections without that image's, over all images."""
  root = copy_of(data_root, tmp_path)
  gt_path = os.path.join(root, 'annotations', 'instances_val.json')
  dataset = load_json(root, 'val')
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  model = fcos.build_model(tiny_config(root).model)
  variables = fcos.init_variables(model, 0)
  for name in ('good', 'bad'):
    os.makedirs(tmp_path / name)
  eval_lib.Evaluator(tiny_config(root), model, mesh).run(variables, str(tmp_path / 'good'))
  with open(tmp_path / 'good' / 'results.json') as f:
    results = json.load(f)
  dataset['annotations'] = annotations_from_detections(dataset['images'], results)
  with open(gt_path, 'w') as f:
    json.dump(dataset, f)
  broken = dataset['images'][2]
  truncate(os.path.join(root, 'val', broken['file_name']))
  bad = eval_lib.Evaluator(tiny_config(root, skip_bad_images=True), model, mesh).run(variables, str(tmp_path / 'bad'))
  assert 'on 6 images, 1 of them unreadable (scored as missed)' in capsys.readouterr().out
  kept = [r for r in results if r['image_id'] != broken['id']]
  assert len(kept) < len(results)
  expected = eval_lib.evaluate_boxes(gt_path, kept)
  assert bad.pop('per_class') == expected.per_class
  assert bad == pytest.approx({**expected.metrics, 'unreadable_images': 1}, abs=1e-12)
  assert 0 < bad['AP'] < eval_lib.coco_evaluate(gt_path, results)['AP']
  with open(tmp_path / 'bad' / 'metrics.json') as f:
    metrics = json.load(f)
  assert metrics['num_images'] == 6 and metrics['unreadable_images'] == 1
  assert metrics['unreadable_files'] == [f'{root}/val/{broken["file_name"]} (image_id {broken["id"]}): truncated JPEG '
                                         '(no end-of-image marker)']
