"""`fcos-predict` as a user runs it: a subprocess outside the repository, a checkpoint with metadata,
files, folders and globs, unreadable inputs named and skipped, pictures and json written whole."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fcos_jax import predict
from tests.test_predict import picture

NAMES, IDS = ['cat', 'dog', 'bird'], [17, 18, 16]  # The classes tiny_checkpoint (conftest.py) records.


def run(args, cwd):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([os.path.join(os.path.dirname(sys.executable), 'fcos-predict'), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def test_predict_command_draws_and_writes_results(tiny_checkpoint, tmp_path):
  folder = tmp_path / 'photos'
  (folder / 'sub').mkdir(parents=True)
  Image.fromarray(picture(120, 200, 1)).save(folder / 'wide.jpg')
  Image.fromarray(picture(300, 90, 2)[..., 0]).save(folder / 'sub' / 'tall_gray.png')
  (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  Image.fromarray(picture(20, 30, 3)).save(tmp_path / 'tiny.png')
  out = tmp_path / 'out'
  proc = run([str(folder), str(tmp_path / '*.png'), str(tmp_path / 'nothing*.jpg'), '--checkpoint',
              str(tiny_checkpoint), '--out', str(out), '--per-image-json', '--threshold', '0.0', '--batch-size', '2'],
             cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'broken.jpg: truncated JPEG' in proc.stderr and 'nothing*.jpg: no such file' in proc.stderr
  assert 'skipped 2 unreadable input(s)' in proc.stdout and '3 images' in proc.stdout
  assert 'images/s' in proc.stderr
  assert sorted(os.listdir(out)) == ['images.json', 'results.json', 'tall_gray.jpg', 'tall_gray.json', 'tiny.jpg',
                                     'tiny.json', 'wide.jpg', 'wide.json']
  with Image.open(out / 'tiny.jpg') as drawn:
    assert max(drawn.size) == 640  # Small images are enlarged so that labels stay legible.
  with Image.open(out / 'tall_gray.jpg') as drawn:
    assert drawn.size == (640 * 90 // 300, 640)

  images = json.loads((out / 'images.json').read_text())
  results = json.loads((out / 'results.json').read_text())
  files = [im['file_name'] for im in images]
  assert [os.path.basename(f) for f in files] == ['tall_gray.png', 'wide.jpg', 'tiny.png']  # Sorted per argument.
  assert {r['category_id'] for r in results} <= set(IDS)
  want = predict.Predictor.from_checkpoint(str(tiny_checkpoint), batch_size=2).predict(files)
  for im, pred in zip(images, want):
    mine = [r for r in results if r['image_id'] == im['id']]
    assert len(mine) == len(pred.scores) and (im['height'], im['width']) == pred.image_size
    np.testing.assert_allclose([r['score'] for r in mine], pred.scores, rtol=1e-6)
    np.testing.assert_allclose([r['bbox'][:2] for r in mine], pred.boxes[:, :2], atol=0.006)
    assert [r['category_id'] for r in mine] == [IDS[c] for c in pred.classes]
  per_image = json.loads((out / 'wide.json').read_text())
  assert per_image['detections'][0]['class_name'] == NAMES[per_image['detections'][0]['class_id']]
  assert len(per_image['detections']) == len(want[0].scores)


def test_predict_command_fails_clearly(tiny_checkpoint, tmp_path):
  proc = run(['missing/*.jpg', '--checkpoint', str(tiny_checkpoint), '--out', str(tmp_path / 'out')], cwd=tmp_path)
  assert proc.returncode == 2 and not (tmp_path / 'out').exists()
  assert proc.stderr == 'fcos-predict: error: no images to read: missing/*.jpg name no file, folder or matching image\n'
  (tmp_path / 'a.png').write_bytes(b'')
  proc = run(['a.png', '--checkpoint', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'out')], cwd=tmp_path)
  assert proc.returncode == 2 and 'No checkpoint directory at' in proc.stderr and 'Traceback' not in proc.stderr
  assert not (tmp_path / 'out').exists()
