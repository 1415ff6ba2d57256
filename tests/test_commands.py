"""The six commands as a user runs them: console scripts in a subprocess, from a directory outside the repository,
without PYTHONPATH. Every user mistake prints one line `PROG: error: ...` naming the thing and exits with status 2,
without a traceback and without leaving anything new behind; a converted checkpoint alone is enough to predict,
export and (with a dataset) evaluate."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fcos_jax import atomic, predict
from fcos_jax.data import categories
from tests.test_predict import picture

BIN = os.path.dirname(sys.executable)
SMALL = ['--config.data.eval_short_size=128', '--config.data.max_size=128', '--config.data.canvases=((128, 128),)']


def run(command, *args, cwd):
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'FCOS_JAX_DEBUG')}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([os.path.join(BIN, command), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)


def listing(folder):
  return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder)
                for n in dirs + files)


# What TensorFlow 2.21's C++ side prints to stderr when it is imported, whatever TF_CPP_MIN_LOG_LEVEL says.
TF_IMPORT_NOTICE = re.compile(r'WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} [\d:.]+ +\d+ port\.cc')


def assert_user_error(cwd, command, *args, message):
  """Runs the command in `cwd`: exit status 2, the one line `command: error: ...message...` (besides TensorFlow's
  import notices), no traceback, nothing new in cwd."""
  before = listing(cwd)
  proc = run(command, *args, cwd=cwd)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if not TF_IMPORT_NOTICE.match(line)]
  assert len(lines) == 1 and lines[0].startswith(f'{command}: error: '), proc.stderr[-3000:]
  assert message in lines[0] and 'Traceback' not in proc.stderr, proc.stderr
  assert listing(cwd) == before


@pytest.fixture(scope='module')
def tiny(tiny_checkpoint):
  """A checkpoint of the tiny model whose config names a relative data.root to generate ('data/shapes')."""
  return tiny_checkpoint


@pytest.fixture()
def user(tmp_path):
  """A working directory with one image and one ordinary file."""
  Image.fromarray(picture(100, 120, 1)).save(tmp_path / 'photo.jpg')
  (tmp_path / 'a_file').write_text('x')
  return tmp_path


def test_a_truncated_array_file_is_named_by_every_command_that_reads_it(tiny, user):
  damaged = user / 'damaged'
  shutil.copytree(tiny, damaged)
  largest = max((os.path.getsize(os.path.join(d, f)), os.path.join(d, f))
                for d, _, files in os.walk(damaged / '0' / 'variables') for f in files)[1]
  os.truncate(largest, 100)
  message = f'Checkpoint step 0 ({damaged / "0"}) is unreadable: OUT_OF_RANGE: '
  assert_user_error(user, 'fcos-predict', '--checkpoint', damaged, '--out', 'out', 'photo.jpg', message=message)
  assert_user_error(user, 'fcos-export', '--checkpoint', damaged, '--out', 'out', '--format', 'stablehlo',
                    message=message)
  assert_user_error(user, 'fcos-evaluate', f'--checkpoint={damaged}', '--workdir=w', f'--config.data.root={user}',
                    message=message)


def test_paths_of_the_wrong_kind_and_missing_inputs(tiny, user):
  assert_user_error(user, 'fcos-predict', '--checkpoint', tiny, '--out', 'a_file', 'photo.jpg',
                    message='--out=a_file is a file, not a directory')
  assert_user_error(user, 'fcos-export', '--checkpoint', tiny, '--out', 'a_file', '--format', 'stablehlo',
                    message='--out=a_file is a file, not a directory')
  assert_user_error(user, 'fcos-evaluate', '--workdir=a_file', f'--checkpoint={tiny}',
                    message='--workdir=a_file is a file, not a directory')
  assert_user_error(user, 'fcos-train', '--workdir=a_file', message='--workdir=a_file is a file, not a directory')
  assert_user_error(user, 'fcos-convert', 'paddle', 'missing.pdparams', 'ck', '--arch', 'fcos_r50',
                    message='No input file missing.pdparams')
  assert_user_error(user, 'fcos-predict', '--checkpoint', tiny, '--out', 'out', 'nowhere/*.jpg',
                    message='no images to read: nowhere/*.jpg')
  assert_user_error(user, 'fcos-export', '--checkpoint', 'nowhere', '--out', 'out', '--format', 'onnx',
                    message=f'No checkpoint directory at {user / "nowhere"}')
  assert_user_error(user, 'fcos-check-data', 'nowhere', message='No annotation file nowhere/annotations/')
  # Training: a dataset that is not there stops it before the workdir (or its config.json) exists.
  assert_user_error(user, 'fcos-train', '--workdir=w', '--config.data.root=nowhere',
                    '--config.data.generate_synthetic=false',
                    message=f'No annotation file {user / "nowhere" / "annotations" / "instances_train.json"}')


def test_export_checks_the_canvas_before_any_work(tiny, user):
  assert_user_error(user, 'fcos-export', '--checkpoint', tiny, '--out', 'out', '--format', 'stablehlo',
                    '--canvas', '7', '7', message='canvas 7 7 must be (H, W) multiples of 128')


def test_evaluation_never_generates_data(tiny, user):
  """The checkpoint records data.root='data/shapes' (relative) and generate_synthetic=True: evaluation names the
  missing dataset instead of generating one in the current directory."""
  assert_user_error(user, 'fcos-evaluate', '--workdir=w', f'--checkpoint={tiny}',
                    message=f'No annotation file {user / "data" / "shapes" / "annotations" / "instances_val.json"}')


def test_predict_and_export_take_every_config_argument(tiny, user):
  assert_user_error(user, 'fcos-predict', '--checkpoint', tiny, '--out', 'out', 'photo.jpg',
                    '--config.postprocess.nms_iou=2',
                    message='Invalid config: postprocess.nms_iou=2.0 must be in [0, 1]')
  assert_user_error(user, 'fcos-export', '--checkpoint', tiny, '--out', 'out', '--format', 'stablehlo',
                    '--config.data.flip=maybe', message='--config.data.flip=maybe: data.flip must be true or false')
  proc = run('fcos-export', '--checkpoint', tiny, '--out', 'out', '--format', 'stablehlo', '--verbose',
             '--config.data.flipp=true', cwd=user)
  assert proc.returncode != 0 and 'Traceback' in proc.stderr and 'ConfigError' in proc.stderr


def test_atomic_outputs_leave_nothing_on_failure(tmp_path):
  with pytest.raises(RuntimeError):
    with atomic.directory(str(tmp_path / 'out')) as staging:
      (tmp_path / staging / 'model').write_bytes(b'')
      raise RuntimeError('failed half way')
  with pytest.raises(RuntimeError):
    with atomic.replacing(str(tmp_path / 'model.stablehlo')) as partial:
      open(partial, 'wb').close()
      raise RuntimeError('failed half way')
  assert os.listdir(tmp_path) == []
  (tmp_path / 'out' / 'old').mkdir(parents=True)
  with atomic.directory(str(tmp_path / 'out')) as staging:
    (tmp_path / staging / 'new').mkdir()
    atomic.write_json(os.path.join(staging, 'new', 'a.json'), [1])
  assert listing(tmp_path) == ['out', 'out/new', 'out/new/a.json', 'out/old']


@pytest.fixture(scope='module')
def converted(converted_checkpoint):
  """fcos-convert of a Paddle FCOS R50 state dict of seeded random values: a checkpoint with no dataset recorded."""
  return converted_checkpoint


def coco_folder(root):
  """A COCO-format val2017 of two images with one 'person' box each."""
  (root / 'val2017').mkdir(parents=True)
  (root / 'annotations').mkdir()
  images = []
  for i in (1, 2):
    Image.fromarray(picture(96, 128, i)).save(root / 'val2017' / f'{i}.jpg')
    images.append({'id': i, 'file_name': f'{i}.jpg', 'height': 96, 'width': 128})
  annotations = [{'id': i, 'image_id': i, 'category_id': 1, 'bbox': [10, 10, 40, 50], 'area': 2000, 'iscrowd': 0}
                 for i in (1, 2)]
  cats = [{'id': c, 'name': n} for c, n in zip(categories.COCO_CATEGORY_IDS, categories.COCO_CLASS_NAMES)]
  (root / 'annotations' / 'instances_val2017.json').write_text(
      json.dumps({'images': images, 'annotations': annotations, 'categories': cats}))


def test_a_converted_checkpoint_alone_predicts_exports_and_evaluates(converted, user):
  proc = run('fcos-predict', '--checkpoint', converted, '--out', 'predictions', 'photo.jpg', *SMALL, cwd=user)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(user / 'predictions')) == ['images.json', 'photo.jpg', 'results.json']
  proc = run('fcos-export', '--checkpoint', converted, '--out', 'exported', '--format', 'stablehlo', '--canvas',
             '128', '128', cwd=user)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(user / 'exported')) == ['contract.json', 'model.stablehlo']
  assert_user_error(user, 'fcos-evaluate', '--workdir=w', f'--checkpoint={converted}',
                    message='Invalid config: data.root is empty')
  coco_folder(user / 'coco')
  proc = run('fcos-evaluate', '--workdir=w', f'--checkpoint={converted}', '--config.data.root=coco', *SMALL,
             '--config.eval.batch_size=2', cwd=user)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(user / 'w')) == ['metrics.json', 'pr_curves.png', 'results.json']
  metrics = json.loads((user / 'w' / 'metrics.json').read_text())
  assert metrics['num_images'] == 2 and np.isfinite(metrics['AP'])
  # The per-class table: 'person' has the two boxes, the other 79 classes none (no AP, said in the printed table).
  results = json.loads((user / 'w' / 'results.json').read_text())
  assert list(metrics['per_class']) == list(categories.COCO_CLASS_NAMES)
  for category, (name, row) in zip(categories.COCO_CATEGORY_IDS, metrics['per_class'].items()):
    assert row['gt'] == (2 if name == 'person' else 0)
    assert row['detections'] == sum(r['category_id'] == category for r in results)
    assert (row['AP'] is None) == (name != 'person') and set(row) == {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
                                                                      'AR100', 'gt', 'detections'}
  assert '| category ' in proc.stdout and 'No ground truth in the evaluated images, so no AP: bicycle,' in proc.stdout
  with Image.open(user / 'w' / 'pr_curves.png') as picture:
    assert picture.format == 'PNG' and picture.width > 600
  assert predict.Predictor.from_checkpoint(str(converted)).class_names[0] == 'person'  # The API, as the commands.
