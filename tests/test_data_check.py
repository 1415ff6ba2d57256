"""The dataset check: a generated split with files broken on purpose, every kind of finding detected and counted,
the command's exit codes from outside the repository, and training stopping before it compiles."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from fcos_jax.commands import train as fcos_train
from fcos_jax import config as config_lib
from fcos_jax import errors
from fcos_jax import train_lib
from fcos_jax.data import check
from fcos_jax.data import decoding
from fcos_jax.data import sources
from fcos_jax.data import synthetic

ORIENTATION = 0x0112
ANNOTATION_KINDS = ('unknown_image', 'unknown_category', 'degenerate_box', 'box_outside', 'crowd_box')


def _json_path(root, split='train'):
  return os.path.join(root, 'annotations', f'instances_{split}.json')


@pytest.fixture(scope='module')
def clean(shapes_dataset):
  return shapes_dataset(12, 2)


@pytest.fixture(scope='module')
def broken(clean, tmp_path_factory):
  """A copy of the clean dataset with one file or annotation broken per kind; returns (root, expected findings)."""
  root = str(tmp_path_factory.mktemp('broken') / 'data')
  shutil.copytree(clean, root)
  with open(_json_path(root)) as f:
    dataset = json.load(f)
  images = dataset['images']
  file = lambda i: os.path.join(root, 'train', images[i]['file_name'])  # pylint: disable=unnecessary-lambda-assignment
  pixels = lambda i: np.asarray(Image.open(file(i)).convert('RGB'))  # pylint: disable=unnecessary-lambda-assignment
  expected = {k.key: set() for k in check.KINDS}

  with open(file(0), 'rb') as f:
    data = f.read()
  with open(file(0), 'wb') as f:
    f.write(data[:len(data) // 2])
  expected['unreadable'].add(images[0]['id'])
  os.remove(file(1))
  expected['missing'].add(images[1]['id'])
  images[2]['height'] += 10
  expected['size_mismatch'].add(images[2]['id'])
  Image.fromarray(pixels(3)).convert('CMYK').save(file(3))
  expected['cmyk'].add(images[3]['id'])
  Image.fromarray(pixels(4)).convert('L').save(file(4))
  expected['grayscale'].add(images[4]['id'])
  for i, mode, kinds in ((6, 'RGBA', ('alpha',)), (7, 'P', ('palette',))):
    image = Image.fromarray(pixels(i)).convert(mode)
    os.remove(file(i))
    images[i]['file_name'] = images[i]['file_name'].replace('.jpg', '.png')
    image.save(file(i))
    for kind in kinds:
      expected[kind].add(images[i]['id'])
  exif = Image.Exif()
  exif[ORIENTATION] = 6
  Image.fromarray(pixels(8)).save(file(8), exif=exif)  # Stored pixels as annotated: only a warning.
  expected['exif_rotated'].add(images[8]['id'])
  Image.fromarray(pixels(9)).save(file(9), exif=exif)
  images[9]['height'], images[9]['width'] = images[9]['width'], images[9]['height']  # The json has the rotated size.
  expected['exif_rotated'].add(images[9]['id'])
  expected['size_mismatch'].add(images[9]['id'])

  next_id = max(a['id'] for a in dataset['annotations']) + 1
  h, w = images[10]['height'], images[10]['width']
  added = [  # (image, category, bbox, iscrowd, kinds)
      (10, 1, [10.0, 10.0, 50.0, 40.0], 1, ('crowd_box',)),
      (10, 3, [w - 20.0, 5.0, 60.0, 30.0], 0, ('box_outside',)),  # Partly outside: clipped.
      (10, 7, [w + 5.0, 5.0, 10.0, 10.0], 0, ('box_outside',)),  # Entirely outside: dropped.
      (11, 8, [30.0, 30.0, 0.0, 12.0], 0, ('degenerate_box',)),
      (11, 99, [30.0, 30.0, 10.0, 12.0], 0, ('unknown_category',)),
  ]
  for i, category, bbox, crowd, kinds in added:
    dataset['annotations'].append({'id': next_id, 'image_id': images[i]['id'], 'category_id': category, 'bbox': bbox,
                                   'iscrowd': crowd, 'area': 1.0})
    for kind in kinds:
      expected[kind].add(next_id)
    next_id += 1
  dataset['annotations'].append({'id': next_id, 'image_id': 555, 'category_id': 1, 'bbox': [1, 1, 5, 5]})
  expected['unknown_image'].add(next_id)
  expected['crowd_box'] |= {a['id'] for a in dataset['annotations'] if a.get('iscrowd')}
  sizes = {img['id']: (img['height'], img['width']) for img in images}
  def reaches_outside(a):
    x, y, bw, bh = a['bbox']
    h, w = sizes[a['image_id']]
    return bw > 0 and bh > 0 and (min(x, y) < 0 or x + bw > w or y + bh > h)
  outside = {a['id'] for a in dataset['annotations'] if a['image_id'] in sizes and not a.get('iscrowd')
             and reaches_outside(a)}
  assert expected['box_outside'] < outside  # Also boxes of image 9, whose json size is now rotated.
  expected['box_outside'] = outside
  expected['no_boxes'] = set(sizes) - {a['image_id'] for a in dataset['annotations'] if _kept(a, sizes, dataset)}
  assert expected['no_boxes'] == {images[synthetic.EMPTY_AT]['id']}  # The synthetic split's empty image.
  with open(_json_path(root), 'w') as f:
    json.dump(dataset, f)
  return root, dataset, expected


def _ids(report, kind):
  """The annotation ids (box and reference findings) or image ids (image findings) named by the findings of `kind`."""
  word = 'annotation' if kind in ANNOTATION_KINDS else 'image_id'
  return {int(re.search(word + r' (\d+)', item).group(1)) for item in report.findings[kind]}


def _kept(a, sizes, dataset):
  """Whether training uses annotation `a`: known image and category, not crowd, some area left inside the image."""
  if a['image_id'] not in sizes or a['category_id'] not in {c['id'] for c in dataset['categories']}:
    return False
  h, w = sizes[a['image_id']]
  x, y, bw, bh = a['bbox']
  return not a.get('iscrowd') and bw > 0 and bh > 0 and min(x + bw, w) > max(x, 0) and min(y + bh, h) > max(y, 0)


def _category_counts(dataset):
  """Per category: (images, boxes kept by training, crowd boxes), re-derived box by box."""
  sizes = {img['id']: (img['height'], img['width']) for img in dataset['images']}
  counts = {c['id']: [set(), 0, 0] for c in dataset['categories']}
  for a in dataset['annotations']:
    if a['image_id'] in sizes and a['category_id'] in counts and a.get('iscrowd'):
      counts[a['category_id']][2] += 1
    if _kept(a, sizes, dataset):
      counts[a['category_id']][0].add(a['image_id'])
      counts[a['category_id']][1] += 1
  return {cid: (len(c[0]), c[1], c[2]) for cid, c in counts.items()}


def test_every_kind_is_detected_and_counted(broken):
  root, dataset, expected = broken
  report = check.check_split(sources.FolderSource(root), 'train', threads=4)
  for kind in check.KINDS:
    assert _ids(report, kind.key) == expected[kind.key], kind.key
    assert len(report.findings[kind.key]) == len(expected[kind.key]), kind.key
  assert report.fatal == sum(len(expected[k.key]) for k in check.KINDS if k.fatal) == 6
  assert (report.num_images, report.num_annotations) == (len(dataset['images']), len(dataset['annotations']))
  counts = {cid: (images, boxes, crowd) for cid, _, images, boxes, crowd in report.categories}
  assert counts == _category_counts(dataset)
  assert 'truncated JPEG' in ' '.join(report.findings['unreadable'])
  rotated = [f for f in report.findings['size_mismatch'] if f'image_id {dataset["images"][9]["id"]})' in f]
  assert 'the json has the EXIF-rotated size' in rotated[0]
  text = report.format(examples=2)
  assert 'FAILED: 6 problem(s) would stop training' in text and '... and 1 more' in text  # 3 boxes outside, 2 shown.
  for _, name, *_ in report.categories:
    assert name in text


def test_warned_modes_decode_in_the_pipeline(broken):
  """Grayscale, CMYK, alpha, palette and EXIF-tagged files are warnings, not problems: training decodes them."""
  root, _, expected = broken
  with open(_json_path(root)) as f:
    images = {img['id']: img for img in json.load(f)['images']}
  for kind in ('grayscale', 'cmyk', 'alpha', 'palette'):
    for image_id in expected[kind] | (expected['exif_rotated'] - expected['size_mismatch']):
      img = images[image_id]
      record = {'file': tf.constant(img['file_name']), 'image_id': tf.constant(image_id, tf.int32),
                'orig_size': tf.constant([img['height'], img['width']], tf.int32),
                'boxes': tf.zeros([0, 4]), 'labels': tf.zeros([0], tf.int32)}
      example, problem = decoding.decode(record, tf.io.read_file(os.path.join(root, 'train', img['file_name'])))
      assert problem.numpy() == b'' and example['image'].shape == (img['height'], img['width'], 3)


def test_clean_split(clean):
  report = check.check_split(sources.FolderSource(clean), 'val')
  assert report.fatal == 0 and 'OK: nothing stops training' in report.format()
  assert sum(row[3] for row in report.categories) > 0


def _run(args, cwd):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  return subprocess.run([os.path.join(os.path.dirname(sys.executable), 'fcos-check-data'), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_command_exit_codes(broken, clean, tmp_path):
  root, _, _ = broken
  result = _run([root], tmp_path)  # Every split of ROOT/annotations.
  assert result.returncode == 1, result.stderr
  assert 'FAILED: 6 problem(s)' in result.stdout and 'truncated JPEG' in result.stdout
  assert 'split val' in result.stdout and 'OK: nothing stops training' in result.stdout
  result = _run(['--config=shapes', f'--config.data.root={clean}'], tmp_path)  # A recipe name; train and val.
  assert result.returncode == 0, result.stderr
  assert result.stdout.count('OK: nothing stops training') == 2
  result = _run([clean, '--split', 'nope'], tmp_path)
  assert result.returncode == 2 and 'instances_nope.json' in result.stderr
  result = _run([], tmp_path)
  assert result.returncode == 2 and 'give ROOT or --config' in result.stderr


def _check_first_config(root):
  c = config_lib.get_config()
  c.data.root, c.data.train_split, c.data.val_split = root, 'train', 'val'
  c.data.check_first = True
  c.train.batch_size, c.eval.batch_size = 8, 8
  return c


def test_training_stops_before_compiling(broken, tmp_path, capsys):
  c = _check_first_config(broken[0])
  workdir = str(tmp_path / 'work')
  with pytest.raises(check.DatasetProblems, match=r'in split\(s\) train \(6\)\.'):
    train_lib.train_and_evaluate(c, workdir)
  assert re.search(r'(?s)truncated JPEG.*FAILED: 6 problem\(s\).*split val.*OK', capsys.readouterr().out)
  assert not os.path.exists(workdir)  # Stopped before any work: no workdir, no config.json.
  c.data.source = 'tfds'
  with pytest.raises(ValueError, match=r"data.check_first needs a folder source \('folder', 'voc' or 'yolo'; it is "
                                      "'tfds'\)"):
    config_lib.validate(c, num_devices=8)


def test_an_incompatible_resume_stops_before_the_check(broken, tmp_path, capsys):
  workdir = tmp_path / 'work'
  saved = _check_first_config(broken[0])
  saved.model.fpn_channels = 128
  os.makedirs(workdir / 'checkpoints' / '400')
  (workdir / 'config.json').write_text(saved.to_json())
  with pytest.raises(errors.ConfigError, match='model.fpn_channels: 128 in the saved run, 256 now'):
    train_lib.train_and_evaluate(_check_first_config(broken[0]), str(workdir))
  assert capsys.readouterr().out == ''  # No report: not one image was read.


def test_fcos_train_reports_dataset_problems_as_a_user_error(broken, tmp_path, capsys, monkeypatch):
  monkeypatch.delenv('FCOS_JAX_DEBUG', raising=False)
  args = ['--config=shapes', f'--workdir={tmp_path / "w"}', f'--config.data.root={broken[0]}',
          '--config.data.generate_synthetic=false', '--config.data.check_first=true']
  with pytest.raises(SystemExit) as exit_:
    fcos_train.main(args)
  captured = capsys.readouterr()
  assert exit_.value.code == 2 and 'FAILED: 6 problem(s)' in captured.out
  assert captured.err.splitlines() == ['fcos-train: error: data.check_first: problems that would stop training (see '
                                       'the report above) in split(s) train (6).']
  with pytest.raises(check.DatasetProblems):  # --verbose: the traceback.
    fcos_train.main([*args, '--verbose'])
