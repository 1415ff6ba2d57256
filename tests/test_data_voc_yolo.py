"""Pascal VOC and YOLO folders (data.source 'voc', 'yolo'): the same tiles as a COCO folder, a VOC folder and a YOLO
folder give the same index, identical training batches and the same first-step loss; PaddleDetection's VOC rules
(clipping to width - 1, difficult, class names, its list form); bad input named one line per problem; the dataset
check; the small-batch padding group."""

import json
import logging
import os
import subprocess

import jax
import numpy as np
import pytest
from PIL import Image

from jax.sharding import Mesh

from fcos_jax import config as config_lib
from fcos_jax import errors, eval_lib, optim, resize, runtime, train_lib, voc_map
from fcos_jax.data import check, pipeline, sources, voc, yolo
from fcos_jax.model import fcos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ('tree', 'shrub')
LAYOUTS = {'folder': 'coco', 'voc': 'voc', 'yolo': 'yolo'}  # data.source -> its folder under the fixture's root.


def tiles(n=8, seed=0):
  """(name, pixels, boxes (x1, y1, x2, y2, class)) of `n` tiles, 64x128 and 128x64 (powers of two and whole-pixel
  boxes: the YOLO folder's normalised numbers are exact binary fractions, so all three layouts hold the same boxes
  bit for bit). The first tile has no boxes."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = (64, 128) if i % 3 else (128, 64)
    boxes = []
    for _ in range(int(rng.integers(1, 5)) if i else 0):
      x1, y1 = int(rng.integers(0, w - 24)), int(rng.integers(0, h - 24))
      boxes.append((x1, y1, x1 + int(rng.integers(6, 24)), y1 + int(rng.integers(6, 24)), int(rng.integers(0, 2))))
    out.append((f'tile{seed}_{i:02d}', rng.integers(0, 256, (h, w, 3), dtype=np.uint8), boxes))
  return out


def voc_xml(name, w, h, boxes, names=NAMES, difficult=()):
  objects = ''.join(
      f'<object><name>{names[c]}</name><difficult>{int(k in difficult)}</difficult><bndbox><xmin>{x1}</xmin>'
      f'<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>'
      for k, (x1, y1, x2, y2, c) in enumerate(boxes))
  return (f'<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height><depth>3</depth>'
          f'</size>{objects}</annotation>')


def write_layouts(root, splits):
  """`splits` {split: tiles} as root/coco (COCO-format), root/voc (VOC devkit with labels.txt) and root/yolo
  (Ultralytics, data.yaml); returns {data.source: folder}."""
  coco, devkit, ultra = (os.path.join(root, LAYOUTS[k]) for k in ('folder', 'voc', 'yolo'))
  for folder in ('Annotations', 'JPEGImages', os.path.join('ImageSets', 'Main')):
    os.makedirs(os.path.join(devkit, folder), exist_ok=True)
  os.makedirs(os.path.join(coco, 'annotations'), exist_ok=True)
  for split, items in splits.items():
    for folder in (os.path.join(coco, split), os.path.join(ultra, 'images', split),
                   os.path.join(ultra, 'labels', split)):
      os.makedirs(folder, exist_ok=True)
    images, anns = [], []
    for i, (name, pixels, boxes) in enumerate(items):
      h, w = pixels.shape[:2]
      for path in (os.path.join(coco, split, f'{name}.jpg'), os.path.join(devkit, 'JPEGImages', f'{name}.jpg'),
                   os.path.join(ultra, 'images', split, f'{name}.jpg')):
        Image.fromarray(pixels).save(path, quality=90)
      images.append({'id': i + 1, 'file_name': f'{name}.jpg', 'height': h, 'width': w})
      anns += [{'id': len(anns) + k + 1, 'image_id': i + 1, 'category_id': c + 1, 'bbox': [x1, y1, x2 - x1, y2 - y1],
                'area': (x2 - x1) * (y2 - y1), 'iscrowd': 0} for k, (x1, y1, x2, y2, c) in enumerate(boxes)]
      with open(os.path.join(devkit, 'Annotations', f'{name}.xml'), 'w') as f:
        f.write(voc_xml(name, w, h, boxes))
      if boxes:  # The tile without boxes has no label file: a background image.
        with open(os.path.join(ultra, 'labels', split, f'{name}.txt'), 'w') as f:
          f.writelines(f'{c} {(x1 + x2) / 2 / w!r} {(y1 + y2) / 2 / h!r} {(x2 - x1) / w!r} {(y2 - y1) / h!r}\n'
                       for x1, y1, x2, y2, c in boxes)
    with open(os.path.join(coco, 'annotations', f'instances_{split}.json'), 'w') as f:
      json.dump({'images': images, 'annotations': anns,
                 'categories': [{'id': k + 1, 'name': n} for k, n in enumerate(NAMES)]}, f)
    with open(os.path.join(devkit, 'ImageSets', 'Main', f'{split}.txt'), 'w') as f:
      f.writelines(f'{name}\n' for name, _, _ in items)
  with open(os.path.join(devkit, 'labels.txt'), 'w') as f:
    f.write('\n'.join(NAMES) + '\n')
  with open(os.path.join(ultra, 'data.yaml'), 'w') as f:
    f.write(f'path: .\ntrain: images/train\nval: images/val\nnames: {list(NAMES)}\n')
  return {k: os.path.join(root, v) for k, v in LAYOUTS.items()}


@pytest.fixture(scope='module')
def layouts(tmp_path_factory):
  return write_layouts(str(tmp_path_factory.mktemp('layouts')), {'train': tiles(8, 0), 'val': tiles(3, 1)})


def small_config(source, root):
  """A tiny FCOS on 64x128 tiles, one 128x128 canvas."""
  c = config_lib.get_config()
  c.data.update(dict(source=source, root=root, train_split='train', val_split='val', short_sizes=(64,),
                     eval_short_size=64, max_size=128, canvases=((128, 128),), max_boxes=8))
  c.model.update(dict(depth=18, stem_width=8, fpn_channels=16, head_convs=2, gn_groups=4, num_classes=2))
  c.train.batch_size = 2
  c.eval.batch_size = 2
  c.optimizer.warmup_steps = 0
  return c


def test_the_three_layouts_hold_the_same_index_and_ground_truth(layouts):
  folder = sources.make_source(small_config('folder', layouts['folder']))
  for kind in ('voc', 'yolo'):
    other = sources.make_source(small_config(kind, layouts[kind]))
    assert type(other).__name__ == {'voc': 'VocSource', 'yolo': 'YoloSource'}[kind]
    for split in ('train', 'val'):
      a, b = folder.index(split), other.index(split)
      assert [os.path.basename(f) for f in a.files] == [os.path.basename(f) for f in b.files]
      np.testing.assert_array_equal(a.image_ids, b.image_ids)
      np.testing.assert_array_equal(a.sizes, b.sizes)
      for x, y in zip(a.boxes + a.labels, b.boxes + b.labels):
        np.testing.assert_array_equal(x, y)
      assert other.class_names(split) == NAMES and other.category_ids(split) == (1, 2)
      boxes = lambda gt: sorted((a['image_id'], a['category_id'], *a['bbox']) for a in gt.dataset['annotations'])
      assert boxes(other.coco_gt(split)) == boxes(folder.coco_gt(split))
  assert sum(len(b) for b in folder.index('train').boxes) > 10


def first_step_losses(config, batches):
  """The loss of the first train step of a fresh model (config.seed) on each of `batches`: one compile."""
  mesh = Mesh(np.asarray(jax.devices()[:1]), ('data',))
  model, tx = fcos.build_model(config.model), optim.make_optimizer(config)
  state, _ = train_lib.create_state(model, tx, config, mesh)
  step = jax.jit(train_lib.make_train_step(model, config, tx), static_argnames='canvas')
  losses = []
  for batch in batches:
    batch, canvas = resize.split_canvas(batch)
    losses.append(float(step(state, batch, canvas=canvas)[1]['loss']))
  return losses


def first_batches(layouts, n=3):
  """{data.source: its first `n` training batches} of the tiny config on each layout."""
  batches = {}
  for kind, root in layouts.items():
    iterator = iter(pipeline.make_train_dataset(small_config(kind, root)))
    batches[kind] = [next(iterator) for _ in range(n)]
  return batches


def test_the_three_layouts_give_identical_training_batches(layouts):
  """Same images, boxes, labels, ids, sizes and order, bit for bit, in every key of the first batches."""
  batches = first_batches(layouts)
  for kind in ('voc', 'yolo'):
    for a, b in zip(batches['folder'], batches[kind]):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f'{kind} {key}')
  assert sum(int(b['valid'].sum()) for b in batches['folder']) > 4


@pytest.mark.slow  # One compile of the train step: 96 to 165 s measured on 2 cores at load 20.
def test_the_three_layouts_give_the_same_first_step_loss(layouts):
  batches = first_batches(layouts, 1)
  losses = first_step_losses(small_config('folder', layouts['folder']), [batches[k][0] for k in layouts])
  assert np.isfinite(losses[0]) and losses[0] == losses[1] == losses[2], losses


def test_evaluation_of_a_voc_folder_adds_the_voc_map_and_matches_the_coco_folder(layouts, tmp_path):
  """The COCO metrics of the same tiles as a COCO folder and as a VOC folder are the same; the VOC source adds
  PaddleDetection's VOC mAP of the written results, and the tiny model (prior 0.5: detections everywhere) with its
  random weights gets a real number, not a placeholder."""
  metrics = {}
  for kind in ('folder', 'voc'):
    config = small_config(kind, layouts[kind])
    config.model.prior_prob = 0.5
    config.eval.batch_size = 8  # One image per test device.
    model = fcos.build_model(config.model)
    evaluator = eval_lib.Evaluator(config, model, runtime.create_mesh(), class_names=NAMES)
    metrics[kind] = evaluator.run(fcos.init_variables(model, 0), str(tmp_path / kind))
  assert {k: metrics['voc'][k] for k in metrics['folder']} == metrics['folder']
  results = json.loads((tmp_path / 'voc' / 'results.json').read_text())
  gt = sources.make_source(small_config('voc', layouts['voc'])).coco_gt('val')
  assert len(results) > 10
  assert voc_map.voc_metrics(gt, results, [1, 2, 3]) == {k: metrics['voc'][k] for k in voc_map.voc_metrics(gt, [], [])}
  saved = json.loads((tmp_path / 'voc' / 'metrics.json').read_text())
  assert saved['voc_map_11point'] == metrics['voc']['voc_map_11point'] and 'voc_map_integral' not in metrics['folder']


def write_voc(root, entries, labels=NAMES, split='train', list_form=False):
  """A VOC folder: `entries` (name, (h, w), xml text or None for voc_xml of `boxes`, boxes)."""
  for folder in ('Annotations', 'JPEGImages', os.path.join('ImageSets', 'Main')):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  for name, (h, w), xml, boxes in entries:
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(os.path.join(root, 'JPEGImages', f'{name}.jpg'))
    with open(os.path.join(root, 'Annotations', f'{name}.xml'), 'w') as f:
      f.write(xml if xml is not None else voc_xml(name, w, h, boxes))
  if labels:
    with open(os.path.join(root, 'label_list.txt' if list_form else 'labels.txt'), 'w') as f:
      f.write('\n'.join(labels) + '\n')
  lines = [f'JPEGImages/{n}.jpg Annotations/{n}.xml\n' if list_form else f'{n}\n' for n, _, _, _ in entries]
  with open(os.path.join(root, f'{split}.txt' if list_form else os.path.join('ImageSets', 'Main', f'{split}.txt')),
            'w') as f:
    f.writelines(lines)
  return str(root)


def test_voc_follows_paddledetection_clipping_difficult_and_names(tmp_path, caplog):
  """Coordinates as written, clipped to [0, w - 1] x [0, h - 1]; a box left without area is dropped; difficult boxes
  train like the others and carry `difficult: 1` into the ground truth; without a class-name file, the sorted names
  found in the split."""
  xml = voc_xml('a', 100, 80, [(-5, 10, 100, 80, 1), (10, 10, 30, 40, 0), (120, 10, 130, 20, 0), (5, 5, 5, 9, 1)],
                difficult=(1,))
  root = write_voc(tmp_path, [('a', (80, 100), xml, None)], labels=None)
  dataset, path, notes = voc.read_split(root, 'train')
  assert path == os.path.join(root, 'ImageSets', 'Main', 'train.txt')
  assert [c['name'] for c in dataset['categories']] == ['shrub', 'tree']  # Sorted: shrub is label 0 here.
  assert [a['bbox'] for a in dataset['annotations']] == [[0, 10, 99, 69], [10, 10, 20, 30]]
  assert [(a['category_id'], a['difficult']) for a in dataset['annotations']] == [(1, 0), (2, 1)]
  assert [k for k, _ in notes] == ['box_outside', 'box_outside', 'degenerate_box']
  assert notes[1][1] == f'{root}/Annotations/a.xml: object 3 (tree) box [120, 10, 130, 20] in a 100x80 image, dropped'
  with caplog.at_level(logging.WARNING):
    source = sources.VocSource(root)
    index = source.index('train')
  assert '2 box(es) reaching outside the image' in caplog.text and '1 box(es) without area' in caplog.text
  np.testing.assert_array_equal(index.boxes[0], [[0, 10, 99, 79], [10, 10, 30, 40]])  # The difficult one trains.
  np.testing.assert_array_equal(index.labels[0], [0, 1])


def test_voc_list_form_label_list_and_the_xml_filename(tmp_path):
  """PaddleDetection's `image_path annotation_path` lines with label_list.txt; an ID line whose JPEGImages/ID.jpg
  is absent takes the XML's <filename>; an XML without <size> takes the image header's."""
  root = write_voc(tmp_path / 'list', [('a', (64, 96), None, [(1, 2, 30, 40, 1)])], list_form=True, split='trainval')
  dataset, path, _ = voc.read_split(root, 'trainval')
  assert path == os.path.join(root, 'trainval.txt') and dataset['images'][0]['file_name'] == 'JPEGImages/a.jpg'
  assert [(a['bbox'], a['category_id']) for a in dataset['annotations']] == [([1, 2, 29, 38], 2)]
  assert voc.split_names(root) == ['trainval']
  root = write_voc(tmp_path / 'named', [('b', (50, 70), '<annotation><filename>b.png</filename><object><name>tree'
                                        '</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>'
                                        '</bndbox></object></annotation>', None)])
  os.rename(os.path.join(root, 'JPEGImages', 'b.jpg'), os.path.join(root, 'JPEGImages', 'b.png'))
  dataset, _, _ = voc.read_split(root, 'train')
  assert dataset['images'] == [{'id': 1, 'file_name': 'JPEGImages/b.png', 'height': 50, 'width': 70}]


@pytest.mark.skipif(not os.path.exists(os.path.join(REPO, '.venv-paddle', '.installed')),
                    reason='PaddleDetection environment .venv-paddle not built (parity/run.sh builds it)')
def test_voc_boxes_labels_and_difficult_match_paddledetections_reader(tmp_path):
  """PaddleDetection's VOCDataSet (parity/paddle_voc_reader.py) on the same list-form folder: every image it keeps
  (those with objects) has our boxes, labels and difficult flags, in the same order; boxes reaching outside, at the
  edge, fractional, negative and without area after clipping included."""
  rng = np.random.default_rng(3)
  entries = []
  for i in range(12):
    h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
    x1, y1 = rng.integers(-20, w, 6), rng.integers(-20, h, 6)
    boxes = [(int(a), int(b), int(a + rng.integers(-3, 50)) + 0.5 * (k % 2), int(b + rng.integers(1, 50)),
              int(rng.integers(0, 2))) for k, (a, b) in enumerate(zip(x1, y1))][:int(rng.integers(0, 7))]
    entries.append((f'im{i}', (h, w), voc_xml(f'im{i}', w, h, boxes, difficult=(1, 4)), None))
  root = write_voc(tmp_path, entries, list_form=True, split='trainval')
  proc = subprocess.run([os.path.join(REPO, '.venv-paddle', 'bin', 'python'),
                         os.path.join(REPO, 'parity', 'paddle_voc_reader.py'), root, 'trainval.txt', 'paddle.json'],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  paddle = json.loads((tmp_path / 'paddle.json').read_text())
  dataset, _, notes = voc.read_split(root, 'trainval')
  anns = {img['id']: [a for a in dataset['annotations'] if a['image_id'] == img['id']] for img in dataset['images']}
  ours = [(os.path.join(root, img['file_name']), anns[img['id']]) for img in dataset['images']]
  ours = [(file, a) for (file, a), (_, _, xml, _) in zip(ours, entries) if '<object>' in xml]  # Paddle drops empty.
  assert [file for file, _ in ours] == [r['file'] for r in paddle] and len(paddle) >= 8 and notes
  for (_, a), record in zip(ours, paddle):
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in (b['bbox'] for b in a)]
    np.testing.assert_array_equal(np.float32(xyxy).reshape(-1, 4), np.float32(record['boxes']).reshape(-1, 4))
    assert [b['category_id'] - 1 for b in a] == record['labels'] and [b['difficult'] for b in a] == record['difficult']
  assert sum(len(r['boxes']) for r in paddle) > 20


def voc_error(root, split='train'):
  with pytest.raises(errors.DataError) as error:
    sources.VocSource(str(root)).index(split)
  return str(error.value).splitlines()


def test_voc_bad_input_is_named_one_line_per_problem(tmp_path):
  """Malformed XML, a class labels.txt does not list, an object without a box: one error, one line per file."""
  boxes = [(1, 1, 20, 20, 0)]
  root = write_voc(tmp_path / 'bad', [
      ('ok', (64, 64), None, boxes), ('broken', (64, 64), '<annotation><object></annotation>', None),
      ('dog', (64, 64), voc_xml('dog', 64, 64, boxes, names=('dgo',)), None),
      ('nobox', (64, 64), '<annotation><size><width>64</width><height>64</height></size><object><name>tree</name>'
       '</object></annotation>', None)])
  ann = os.path.join(root, 'Annotations')
  assert voc_error(root) == [
      f"Pascal VOC split 'train' ({root}/ImageSets/Main/train.txt): 3 problem(s):",
      f'  {ann}/broken.xml: malformed XML (mismatched tag: line 1, column 22)',
      f'  {ann}/nobox.xml: object 1 needs a <name>, a <bndbox> with numeric xmin, ymin, xmax, ymax, and <difficult> 0 '
      'or 1 if any',
      f"  {ann}/dog.xml: object 1 names class 'dgo', which labels.txt does not list (tree, shrub)"]
  empty = write_voc(tmp_path / 'empty', [])
  assert voc_error(empty) == [f"Pascal VOC split 'train' ({empty}/ImageSets/Main/train.txt): 1 problem(s):",
                              f'  {empty}/ImageSets/Main/train.txt: no images listed (empty split file)']
  with pytest.raises(errors.MissingFileError, match=f'No split file {empty}/ImageSets/Main/val.txt or '
                                                    f'{empty}/val.txt'):
    sources.VocSource(empty).index('val')


def test_voc_missing_images_follow_the_coco_folder_rules(tmp_path, caplog):
  root = write_voc(tmp_path, [('a', (64, 64), None, [(1, 1, 20, 20, 0)]), ('b', (64, 64), None, [(1, 1, 9, 9, 1)])])
  os.remove(os.path.join(root, 'JPEGImages', 'b.jpg'))
  with pytest.raises(errors.MissingFileError, match=r'train.txt: 1 image file\(s\) missing: .*/JPEGImages/b.jpg'):
    sources.VocSource(root).index('train')
  with caplog.at_level(logging.WARNING):
    source = sources.VocSource(root, skip_bad_images=True)
    assert len(source.index('train')) == 1 and source.missing('train') == ((f'{root}/JPEGImages/b.jpg', 2),)
  assert 'skipping 1 missing image file(s)' in caplog.text


def write_yolo(root, labels, names_file='data.yaml: {names: [tree, shrub]}', size=(64, 128)):
  """A YOLO folder: `labels` {image name: label file text or None (no file)}."""
  for folder in ('images/train', 'labels/train'):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  for name, text in labels.items():
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(os.path.join(root, 'images', 'train', f'{name}.jpg'))
    if text is not None:
      with open(os.path.join(root, 'labels', 'train', f'{name}.txt'), 'w') as f:
        f.write(text)
  file, text = names_file.split(': ', 1)
  with open(os.path.join(root, file), 'w') as f:
    f.write(text)
  return str(root)


def test_yolo_boxes_class_names_and_background_images(tmp_path):
  """Normalised centre boxes -> pixels; names from data.yaml as a dict, or classes.txt; an image without a label
  file or with an empty one has no objects; a box reaching outside is clipped like a COCO box."""
  root = write_yolo(tmp_path / 'a', {'a': '1 0.5 0.25 0.25 0.5\n\n0 0.9375 0.5 0.25 0.5\n', 'b': None, 'c': ''},
                    names_file="data.yaml: names: {0: tree, 1: 'shrub'}")
  dataset, labels, notes = yolo.read_split(root, 'train')
  assert labels == os.path.join(root, 'labels', 'train')
  assert [(a['image_id'], a['category_id'], a['bbox']) for a in dataset['annotations']] == [
      (1, 2, [48.0, 0.0, 32.0, 32.0]), (1, 1, [104.0, 16.0, 32.0, 32.0])]
  assert notes == [('no_label_file', f'{root}/images/train/b.jpg: no {root}/labels/train/b.txt')]
  index = sources.YoloSource(root).index('train')
  np.testing.assert_array_equal(index.boxes[0], [[48, 0, 80, 32], [104, 16, 128, 48]])  # Clipped to 128 wide.
  assert [len(b) for b in index.boxes] == [2, 0, 0] and index.sizes.tolist() == [[64, 128]] * 3
  root = write_yolo(tmp_path / 'b', {'a': '0 0.5 0.5 0.5 0.5\n'}, names_file='classes.txt: tree\nshrub\n')
  assert sources.YoloSource(root).class_names('train') == NAMES


def test_yolo_bad_input_is_named_one_line_per_problem(tmp_path):
  root = write_yolo(tmp_path / 'bad', {'four': '0 0.5 0.5 0.5\n', 'class': '0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n',
                                       'pixels': '1 32 32 10 10\n'})
  with pytest.raises(errors.DataError) as error:
    sources.YoloSource(root).index('train')
  labels = os.path.join(root, 'labels', 'train')
  assert str(error.value).splitlines() == [
      f"YOLO split 'train' ({labels}): 3 problem(s):",
      f'  {labels}/class.txt line 2: class 2, but there are 2 class names (0 to 1)',
      f'  {labels}/four.txt line 1: expected 5 numbers "class cx cy w h", got 4: \'0 0.5 0.5 0.5\'',
      f'  {labels}/pixels.txt line 1: cx cy w h must be normalised to [0, 1], got 32 32 10 10']
  root = write_yolo(tmp_path / 'names', {'a': ''}, names_file='notes.txt: x')
  with pytest.raises(errors.MissingFileError, match=f'No class names for the YOLO folder {root}: add '):
    sources.YoloSource(root).index('train')
  root = write_yolo(tmp_path / 'empty', {})
  with pytest.raises(errors.DataError, match=f'{root}/images/train: no images'):
    sources.YoloSource(root).index('train')
  with pytest.raises(errors.MissingFileError, match=f'No image folder {root}/images/val '):
    sources.YoloSource(root).index('val')


def test_yolo_unreadable_images_stop_unless_skipped_and_the_check_reports_them(tmp_path, caplog):
  root = write_yolo(tmp_path, {'a': '0 0.5 0.5 0.5 0.5\n', 'b': '0 0.5 0.5 0.5 0.5\n'})
  with open(os.path.join(root, 'images', 'train', 'b.jpg'), 'wb') as f:
    f.write(b'not an image')
  with pytest.raises(errors.DataError, match=r'labels/train: 1 unreadable image\(s\) \(data.skip_bad_images=true '
                                             r'skips them\): .*/b.jpg: UnidentifiedImageError'):
    sources.YoloSource(root).index('train')
  with caplog.at_level(logging.WARNING):
    assert len(sources.YoloSource(root, skip_bad_images=True).index('train')) == 1
  assert 'skipping 1 unreadable image(s)' in caplog.text
  report = check.check_split(sources.YoloSource(root), 'train')
  assert report.fatal == 1 and 'b.jpg: UnidentifiedImageError' in report.findings['unreadable'][0]


def test_the_dataset_check_reads_voc_and_yolo_folders(layouts, tmp_path):
  for kind in ('voc', 'yolo'):
    source, splits = check.config_splits(small_config(kind, layouts[kind]))
    assert splits == ['train', 'val'] and isinstance(source, sources.FOLDER_KINDS[kind])
    report = check.check_split(source, 'train')
    assert report.fatal == 0 and report.num_images == 8 and [row[1] for row in report.categories] == list(NAMES)
  xml = voc_xml('a', 64, 64, [(1, 1, 70, 20, 0)])
  root = write_voc(tmp_path, [('a', (64, 48), xml, None)])  # The XML says 64x64, the file is 48x64.
  report = check.check_split(sources.VocSource(root), 'train')
  assert report.fatal == 1 and report.findings['size_mismatch'] and len(report.findings['box_outside']) == 1
  assert sources.detect_layout(layouts['voc']) == 'voc' and sources.detect_layout(layouts['yolo']) == 'yolo'
  assert sources.detect_layout(layouts['folder']) == 'folder' and voc.split_names(layouts['voc']) == ['train', 'val']
  assert yolo.split_names(layouts['yolo']) == ['train', 'val']


def test_config_checks_for_the_folder_sources():
  config = small_config('voc', '')
  config.data.train_images = 'imgs'
  with pytest.raises(errors.ConfigError) as error:
    config_lib.validate(config)
  assert "data.root is empty: set it to a Pascal VOC folder (or data.source='tfds')" in str(error.value)
  assert "data.train_images='imgs' is not used by data.source='voc': leave it empty" in str(error.value)
  config = small_config('yolo', 'x')
  config.data.val_annotations = 'a.json'
  with pytest.raises(errors.ConfigError, match="data.val_annotations='a.json' is not used by data.source='yolo'"):
    config_lib.validate(config)


def test_a_batch_of_one_trains_with_the_default_pad_group():
  """data.pad_group=2 with train.batch_size=1 is valid: a group that does not divide the batch becomes gcd(group,
  batch) images, so each image is padded on its own (PaddleDetection's per-GPU batch of 1); batches it divides keep
  their groups."""
  config = small_config('folder', 'x')
  config.train.batch_size = 1
  config_lib.validate(config, num_devices=1)
  sizes = np.array([[100, 90], [300, 20], [129, 257]], np.int32)
  alone = fcos.reference_extent(sizes, 128)
  np.testing.assert_array_equal(fcos.reference_extent(sizes[:1], 128, 2), alone[:1])
  np.testing.assert_array_equal(fcos.reference_extent(sizes, 128, 2), alone)  # gcd(2, 3) = 1.
  np.testing.assert_array_equal(fcos.reference_extent(sizes[:2], 128, 2), [[384, 128], [384, 128]])
