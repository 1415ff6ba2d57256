"""Your own data as a new user brings it: a Pascal VOC folder and a YOLO folder of real JPEG tiles, through the
installed console scripts in a subprocess, from a directory outside the repository, without PYTHONPATH.

Default: fcos-check-data on both folders (layout detected) and bad input named by the command. Slow (each command
compiles the model): fcos-evaluate of a tiny checkpoint on each folder (the VOC one also reports PaddleDetection's
VOC mAP), and the whole chain per folder: check, train a few steps, evaluate, predict on an image file."""

import json
import os

import numpy as np
import pytest

from fcos_jax import checkpoints
from fcos_jax.model import fcos
from tests.test_commands import TF_IMPORT_NOTICE, run
from tests.test_data_voc_yolo import NAMES, small_config, tiles, write_layouts

SMALL = ['--config.data.train_split=train', '--config.data.val_split=val', '--config.data.short_sizes=(64,)',
         '--config.data.eval_short_size=64', '--config.data.max_size=128', '--config.data.canvases=((128, 128),)',
         '--config.data.max_boxes=8']


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp('own')
  return write_layouts(str(root), {'train': tiles(8, 0), 'val': tiles(3, 1)})


def error_lines(proc):
  return [line for line in proc.stderr.splitlines() if not TF_IMPORT_NOTICE.match(line)]


def test_check_data_reads_voc_and_yolo_folders_and_names_bad_input(folders, tmp_path):
  for kind, title in (('voc', 'ImageSets/Main/train.txt'), ('yolo', 'labels/train')):
    proc = run('fcos-check-data', folders[kind], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'{kind} layout (train, val)' in proc.stderr and f'== split train: {folders[kind]}/{title}' in proc.stdout
    assert proc.stdout.count('OK: nothing stops training') == 2 and '8 images' in proc.stdout
  with open(os.path.join(folders['voc'], 'Annotations', 'tile1_01.xml'), 'a') as f:
    f.write('<object>')  # Malformed: text after the root element.
  try:
    proc = run('fcos-check-data', folders['voc'], '--split', 'val', cwd=tmp_path)
  finally:
    with open(os.path.join(folders['voc'], 'Annotations', 'tile1_01.xml')) as f:
      text = f.read()
    with open(os.path.join(folders['voc'], 'Annotations', 'tile1_01.xml'), 'w') as f:
      f.write(text[:-len('<object>')])
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert error_lines(proc)[-2:] == [
      f"fcos-check-data: error: Pascal VOC split 'val' ({folders['voc']}/ImageSets/Main/val.txt): 1 problem(s):",
      f"  {folders['voc']}/Annotations/tile1_01.xml: malformed XML (junk after document element: line 1, column "
      f"{len(text) - len('<object>')})"]


def tiny_checkpoint(path, root):
  """A tiny FCOS checkpoint (seeded random weights, prior 0.5: detections everywhere) recording the VOC folder."""
  config = small_config('voc', root)
  config.model.prior_prob = 0.5
  variables = fcos.init_variables(fcos.build_model(config.model), 0)
  checkpoints.save_variables(str(path), variables, checkpoints.make_metadata(config, list(NAMES), [1, 2]))
  return path


@pytest.mark.slow  # Two evaluations, each compiling the model: 116 s measured on 2 cores at load 20.
def test_evaluate_a_voc_and_a_yolo_folder(folders, tmp_path):
  """The checkpoint records the VOC folder; the YOLO folder is chosen on the command line. Both give the COCO
  metrics of the same tiles (the same numbers); the VOC one adds PaddleDetection's VOC mAP."""
  checkpoint = tiny_checkpoint(tmp_path / 'ck', folders['voc'])
  metrics = {}
  for kind in ('voc', 'yolo'):
    proc = run('fcos-evaluate', f'--workdir=eval_{kind}', f'--checkpoint={checkpoint}', f'--config.data.source={kind}',
               f'--config.data.root={folders[kind]}', '--config.eval.batch_size=2', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics[kind] = json.loads((tmp_path / f'eval_{kind}' / 'metrics.json').read_text())
    assert metrics[kind]['num_images'] == 3 and 'COCO box AP' in proc.stdout
  assert 'VOC mAP@0.5' in proc.stdout or 'voc_map_11point' not in metrics['yolo']
  assert {k: metrics['voc'][k] for k in metrics['yolo']} == metrics['yolo']
  assert 0 <= metrics['voc']['voc_map_11point'] <= 1 and 0 <= metrics['voc']['voc_map_integral'] <= 1


@pytest.mark.slow  # Three commands that compile the model, per folder.
@pytest.mark.parametrize('kind', ['voc', 'yolo'])
def test_check_train_evaluate_and_predict_on_your_own_folder(folders, tmp_path, kind):
  root = folders[kind]
  proc = run('fcos-check-data', root, cwd=tmp_path)
  assert proc.returncode == 0 and 'OK: nothing stops training' in proc.stdout, proc.stderr[-3000:]
  train = ['--workdir=run', '--config=shapes', f'--config.data.source={kind}', f'--config.data.root={root}',
           '--config.data.generate_synthetic=false', *SMALL, '--config.model.num_classes=2',
           '--config.model.stem_width=8', '--config.model.fpn_channels=16', '--config.model.gn_groups=4',
           '--config.train.batch_size=1', '--config.train.num_steps=2', '--config.train.log_every=1',
           '--config.train.checkpoint_every=2', '--config.eval.batch_size=2', '--config.optimizer.warmup_steps=1']
  proc = run('fcos-train', *train, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'step 2/2 | loss' in proc.stdout and 'COCO box AP' in proc.stdout
  assert ('VOC mAP@0.5' in proc.stdout) == (kind == 'voc')
  assert checkpoints.read_metadata(str(tmp_path / 'run' / 'checkpoints'))['class_names'] == list(NAMES)
  proc = run('fcos-evaluate', '--workdir=eval', '--checkpoint=run/checkpoints', cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  assert metrics['num_images'] == 3 and np.isfinite(metrics['AP']) and ('voc_map_11point' in metrics) == (kind == 'voc')
  image = os.path.join(root, 'JPEGImages' if kind == 'voc' else 'images/val', 'tile1_01.jpg')
  proc = run('fcos-predict', '--checkpoint', 'run/checkpoints', '--out', 'predictions', image, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / 'predictions' / 'results.json').read_text())
  assert isinstance(results, list) and (tmp_path / 'predictions' / 'tile1_01.jpg').exists()
