"""tf.data pipeline on a generated dataset: the batch contract, pixels and boxes after the transforms, determinism,
per-process sharding, padded evaluation, damaged images, checkpointed iterators and global arrays."""

import json
import logging
import os
import shutil
import threading
import time

import jax
from jax.sharding import Mesh
import numpy as np
import pytest
import tensorflow as tf

from fcos_jax import config as config_lib
from fcos_jax import errors
from fcos_jax import runtime
from fcos_jax.data import iterator
from fcos_jax.data import pipeline
from fcos_jax.data import synthetic

CANVASES = ((384, 512), (512, 384))
COLOURS = np.array([colour for _, _, colour in synthetic.CATEGORIES], np.float32)  # By label.


@pytest.fixture(scope='module')
def root(shapes_dataset):
  return shapes_dataset(16, 10)


def make_config(root, **data):
  c = config_lib.get_config()
  c.data.update({**dict(root=root, train_split='train', val_split='val', short_sizes=(288, 320), eval_short_size=320,
                        max_size=480, canvases=CANVASES, max_boxes=12), **data})
  c.model.num_classes = 5
  c.train.batch_size = 4
  c.eval.batch_size = 4
  return c


def annotations(root, split):
  """{image_id: (non-crowd xyxy boxes [N, 4], labels [N], all boxes xyxy incl. crowd)} from the json."""
  with open(os.path.join(root, 'annotations', f'instances_{split}.json')) as f:
    dataset = json.load(f)
  label = {cid: i for i, (cid, _, _) in enumerate(synthetic.CATEGORIES)}
  out = {img['id']: ([], [], []) for img in dataset['images']}
  for a in dataset['annotations']:
    x, y, w, h = a['bbox']
    boxes, labels, every = out[a['image_id']]
    every.append([x, y, x + w, y + h])
    if not a['iscrowd']:
      boxes.append([x, y, x + w, y + h])
      labels.append(label[a['category_id']])
  return {k: (np.reshape(b, (-1, 4)), np.array(l, int), np.reshape(e, (-1, 4))) for k, (b, l, e) in out.items()}


def take(batches, n):
  batch_iterator = iter(batches)
  return [next(batch_iterator) for _ in range(n)]


def check_batch(batch, gt, short_sizes, eval_mode=False):
  """The contract, the resize rule, boxes following the image (flipped or not) and the shapes' pixels.

  Returns how many images of the batch were flipped."""
  expected_keys = {'image', 'boxes', 'labels', 'valid', 'image_id', 'scale', 'orig_size', 'size'}
  assert set(batch) == expected_keys | ({'mask', 'unreadable'} if eval_mode else set())
  b, h, w, _ = batch['image'].shape
  assert (h, w) in CANVASES and batch['image'].dtype == np.uint8
  for key, shape, dtype in [('boxes', (b, 12, 4), np.float32), ('labels', (b, 12), np.int32), ('valid', (b, 12), bool),
                            ('image_id', (b,), np.int32), ('scale', (b, 2), np.float32),
                            ('orig_size', (b, 2), np.int32), ('size', (b, 2), np.int32)]:
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  num_flipped = 0
  assert not (eval_mode and batch['unreadable'].any())
  for i in range(b):
    if eval_mode and not batch['mask'][i]:
      assert batch['image_id'][i] == -1 and not batch['valid'][i].any() and not batch['image'][i].any()
      continue
    boxes, labels, every = gt[int(batch['image_id'][i])]
    oh, ow = batch['orig_size'][i]
    sh, sw = batch['size'][i]
    # PaddleDetection's Resize: s = min(short / short side, 480 / long side), sizes round(s * dim) (halves to even,
    # as Python rounds), scale (s, s).
    rules = {(round(r * oh), round(r * ow)): r for r in [min(s / min(oh, ow), 480 / max(oh, ow)) for s in short_sizes]}
    assert (sh, sw) in rules
    np.testing.assert_array_equal(batch['scale'][i], np.float32([rules[sh, sw]] * 2))
    image = batch['image'][i]
    assert not image[sh:].any() and not image[:, sw:].any()  # Zero padding.
    n = len(labels)
    assert batch['valid'][i].tolist() == [True] * n + [False] * (12 - n)
    np.testing.assert_array_equal(batch['labels'][i, :n], labels)
    assert (batch['labels'][i, n:] == -1).all() and not batch['boxes'][i, n:].any()
    sy, sx = batch['scale'][i]
    scaled = boxes * [sx, sy, sx, sy]
    # Flipped first (x1' = w - x2), then scaled.
    flipped = np.stack([ow * sx - scaled[:, 2], scaled[:, 1], ow * sx - scaled[:, 0], scaled[:, 3]], axis=1)
    got = batch['boxes'][i, :n]
    is_flipped = n > 0 and not np.allclose(got, scaled, atol=1e-3)
    np.testing.assert_allclose(got, flipped if is_flipped else scaled, atol=1e-3)
    assert not (eval_mode and is_flipped)
    num_flipped += is_flipped
    check_pixels(image.astype(np.float32), got, labels, boxes, every)
  return num_flipped


def check_pixels(image, boxes, labels, orig_boxes, every):
  """Isolated shapes of 10+ px: their colour's pixels lie in the box; rectangles fill it exactly (within 2 px).

  `boxes` are on the canvas, `orig_boxes` the same in the json's pixels, `every` all the image's json boxes."""
  for box, label, orig in zip(boxes, labels, orig_boxes):
    x1, y1, x2, y2 = box
    if min(x2 - x1, y2 - y1) < 10 or _overlaps(orig, every):
      continue
    x0, y0 = int(max(x1 - 4, 0)), int(max(y1 - 4, 0))
    region = image[y0:int(y2) + 5, x0:int(x2) + 5]
    ys, xs = np.nonzero(np.linalg.norm(region - COLOURS[label], axis=-1) < 60)
    found = np.array([xs.min() + x0, ys.min() + y0, xs.max() + 1 + x0, ys.max() + 1 + y0])
    assert (found[:2] >= box[:2] - 2).all() and (found[2:] <= box[2:] + 2).all(), (found, box)
    if label == 0:
      np.testing.assert_allclose(found, box, atol=2)
      inner = image[int(y1) + 2:int(y2) - 2, int(x1) + 2:int(x2) - 2].reshape(-1, 3).mean(0)
      np.testing.assert_allclose(inner, COLOURS[0], atol=25)


def _overlaps(box, every):
  near = (every[:, 0] < box[2] + 3) & (box[0] - 3 < every[:, 2]) & (every[:, 1] < box[3] + 3) & (
      box[1] - 3 < every[:, 3])
  return near.sum() > 1


def test_train_batches_round_trip(root):
  config = make_config(root, short_sizes=(256, 288, 320))
  batches = take(pipeline.make_train_dataset(config), 12)
  gt = annotations(root, 'train')
  flipped = sum(check_batch(batch, gt, (256, 288, 320)) for batch in batches)
  assert 5 < flipped < 43  # Of 48.
  seen = {int(i) for b in batches for i in b['image_id']}
  assert seen == {k for k, (boxes, _, _) in gt.items() if len(boxes)}  # Every image with boxes; no empty one.
  assert {b['image'].shape[1:3] for b in batches} == set(CANVASES)
  assert len({tuple(b['size'][:, 0]) for b in batches}) > 1


def test_eval_batches_round_trip_and_padding(root):
  config = make_config(root)
  batches, info = pipeline.make_eval_dataset(config)
  got = list(batches)
  assert len(got) == len(batches) == info.num_batches and info.num_images == 10
  gt = annotations(root, 'val')
  for batch in got:
    check_batch(batch, gt, (320,), eval_mode=True)
  ids = [int(i) for b in got for i, m in zip(b['image_id'], b['mask']) if m]
  assert sorted(ids) == sorted(gt) and len(ids) == 10  # Every image once, empty ones included.
  assert sum((~b['mask']).sum() for b in got) == 4 * len(got) - 10
  assert info.label_to_category == (1, 3, 7, 8, 12) and len(info.coco_gt.imgs) == 10
  limited, info = pipeline.make_eval_dataset(make_config(root), split='train')
  assert info.num_images == 16
  config.eval.max_images = 5
  limited, info = pipeline.make_eval_dataset(config)
  assert info.num_images == 5 and sum(b['mask'].sum() for b in limited) == 5


def test_train_is_deterministic_for_a_seed(root):
  config = make_config(root, short_sizes=(288, 320))
  first, second = take(pipeline.make_train_dataset(config), 5), take(pipeline.make_train_dataset(config), 5)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  config.seed = 1
  other = take(pipeline.make_train_dataset(config), 5)
  assert any(not np.array_equal(a['image_id'], b['image_id']) for a, b in zip(first, other))


def test_processes_share_the_canvas_schedule_and_split_the_images(root):
  config = make_config(root)
  shards = [take(pipeline.make_train_dataset(config, i, 2), 8) for i in range(2)]
  for a, b in zip(*shards):
    assert a['image'].shape == b['image'].shape == (2, *a['image'].shape[1:])
  ids = [{int(i) for b in shard for i in b['image_id']} for shard in shards]
  assert not ids[0] & ids[1]


@pytest.mark.parametrize('process_count', [2, 3])
def test_eval_shards_cover_every_image_once(root, process_count):
  config = make_config(root)
  config.eval.batch_size = 2 * process_count
  ids, lengths, schedules = [], set(), set()
  for i in range(process_count):
    batches, info = pipeline.make_eval_dataset(config, process_index=i, process_count=process_count)
    got = list(batches)
    lengths.add(len(got))
    schedules.add(tuple(b['image'].shape for b in got))
    ids += [int(i) for b in got for i, m in zip(b['image_id'], b['mask']) if m]
  assert len(lengths) == 1 and len(schedules) == 1  # Same batches and canvases on every process.
  assert sorted(ids) == sorted(annotations(root, 'val'))


def test_iterator_checkpoint_resumes_exactly(root, tmp_path):
  batches = pipeline.make_train_dataset(make_config(root))
  batch_iterator = iter(batches)
  take(batch_iterator, 2)
  path = tf.train.Checkpoint(iterator=batch_iterator).write(str(tmp_path / 'data'))
  size = sum(os.path.getsize(tmp_path / f) for f in os.listdir(tmp_path))
  assert size < 4 * 384 * 512 * 3  # Positions, not prefetched batches.
  expected = take(batch_iterator, 3)
  restored = iter(pipeline.make_train_dataset(make_config(root)))
  tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
  for a, b in zip(expected, take(restored, 3)):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['image_id'], b['image_id'])


@pytest.mark.devices(8)
def test_to_global_shards_over_data(root):
  config = make_config(root)
  config.train.batch_size = 8
  batch = take(pipeline.make_train_dataset(config), 1)[0]
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  arrays = runtime.to_global(batch, mesh)
  for k, v in arrays.items():
    assert v.shape == batch[k].shape and v.dtype == batch[k].dtype and len(v.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(v), batch[k])
  assert arrays['image'].addressable_shards[1].data.shape == (1, *batch['image'].shape[1:])


@pytest.fixture
def damaged(root, tmp_path):
  """A copy of the dataset with val image 3 truncated; returns (root, its file)."""
  copy = str(tmp_path / 'damaged')
  shutil.copytree(root, copy)
  path = os.path.join(copy, 'val', '000001000003.jpg')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  return copy, path


def test_damaged_image_is_named(damaged):
  copy, path = damaged
  batches, _ = pipeline.make_eval_dataset(make_config(copy))
  with pytest.raises(ValueError, match=f'Unreadable image {path} \\(image_id 1000003\\): truncated JPEG'):
    list(batches)


def test_damaged_eval_image_is_kept_as_unreadable_and_reported_once(damaged, caplog):
  copy, path = damaged
  batches, info = pipeline.make_eval_dataset(make_config(copy, skip_bad_images=True))
  with caplog.at_level(logging.WARNING):
    got = list(batches)
  assert len(got) == info.num_batches and batches.stats.skipped_images == 1
  assert sum(b['mask'].sum() for b in got) == 9 and not any((b['mask'] & b['unreadable']).any() for b in got)
  unreadable = [int(i) for b in got for i in b['image_id'][b['unreadable']]]
  assert unreadable == [1000003]  # Still in its batch with its id, so that its ground truth counts.
  assert caplog.text.count(f'Skipping unreadable image {path}') == 1


def test_more_boxes_than_slots_are_counted_in_training_only(root, caplog):
  """Training keeps the largest data.max_boxes boxes and says so; evaluation scores against the whole json, so its
  box slots drop nothing that counts and it says nothing."""
  config = make_config(root, max_boxes=2)
  batches = pipeline.make_train_dataset(config)
  with caplog.at_level(logging.WARNING):
    got = take(batches, 3)
  over = sum(int((b['valid'].sum(1) == 2).sum()) for b in got)
  assert over and batches.stats.images_over_max_boxes > 0
  assert 'more GT boxes than data.max_boxes' in caplog.text
  assert all(b['valid'].sum(1).max() <= 2 and b['boxes'].shape[1] == 2 for b in got)
  caplog.clear()
  batches, _ = pipeline.make_eval_dataset(config)
  with caplog.at_level(logging.WARNING):
    got = list(batches)
  assert sum(len(boxes) > 2 for boxes, _, _ in annotations(root, 'val').values())  # There are such images.
  assert batches.stats.images_over_max_boxes == 0 and 'max_boxes' not in caplog.text
  assert all(b['boxes'].shape[1] == 2 and 'dropped_boxes' not in b for b in got)


def test_generates_the_synthetic_dataset_when_missing(tmp_path, monkeypatch):
  calls = []
  real = synthetic.generate
  monkeypatch.setattr(synthetic, 'generate', lambda out, seed: calls.append(out) or real(out, 6, 4, seed))
  config = make_config(str(tmp_path / 'new'), generate_synthetic=True)
  with pytest.raises(FileNotFoundError, match='instances_val.json'):  # Building an input never writes a dataset.
    pipeline.make_eval_dataset(config)
  synthetic.ensure(config)
  batches, info = pipeline.make_eval_dataset(config)
  assert calls == [str(tmp_path / 'new')] and info.num_images == 4
  synthetic.ensure(config)
  assert len(calls) == 1  # Present now: not generated again.


def test_rejects_a_class_count_mismatch(root):
  config = make_config(root)
  config.model.num_classes = 80
  with pytest.raises(ValueError, match=r"Split 'train' has 5 categories \(rectangle, ellipse, triangle, cross, "
                     r"diamond\) but model.num_classes is 80: set --config.model.num_classes=5\."):
    pipeline.make_train_dataset(config)


NAMES = [name for _, name, _ in synthetic.CATEGORIES]  # A model trained on the generated dataset, in label order.


def relabelled_json(source, path, categories):
  """The COCO json `source` with only `categories` [(id, new id, name)], in that order (the boxes of the others left
  out), written to `path`."""
  with open(source) as f:
    dataset = json.load(f)
  new_ids = {c: new for c, new, _ in categories}
  dataset['categories'] = [{'id': new, 'name': name} for _, new, name in categories]
  dataset['annotations'] = [dict(a, category_id=new_ids[a['category_id']]) for a in dataset['annotations']
                            if a['category_id'] in new_ids]
  path.write_text(json.dumps(dataset))
  return path


def relabelled(root, tmp_path, categories):
  """A config evaluating the val images of `root` with their json's `categories` as in `relabelled_json`."""
  path = relabelled_json(os.path.join(root, 'annotations', 'instances_val.json'), tmp_path / 'val.json', categories)
  return make_config(root, val_annotations=str(path))


def test_eval_maps_the_models_labels_by_category_name(root, tmp_path):
  new_ids = {1: 40, 3: 30, 7: 20, 8: 10, 12: 5}  # rectangle .. diamond: ids in the reverse order of the labels.
  config = relabelled(root, tmp_path, [(c, new_ids[c], name) for c, name, _ in synthetic.CATEGORIES[::-1]])
  _, info = pipeline.make_eval_dataset(config, class_names=NAMES)
  assert info.label_to_category == (40, 30, 20, 10, 5)
  _, info = pipeline.make_eval_dataset(config)  # Names unknown: by position in the sorted ids, as before.
  assert info.label_to_category == (5, 10, 20, 30, 40)


def test_eval_on_fewer_categories_leaves_the_other_classes_unscored(root, tmp_path):
  config = relabelled(root, tmp_path, [(c, c, name) for c, name, _ in synthetic.CATEGORIES if name != 'cross'])
  _, info = pipeline.make_eval_dataset(config, class_names=NAMES)
  assert info.label_to_category == (1, 3, 7, -1, 12)
  with pytest.raises(errors.ConfigError, match=r"Split 'val' has 4 categories \(rectangle, ellipse, triangle, "
                     r"diamond\) but model.num_classes is 5: set --config.model.num_classes=4\."):
    pipeline.make_eval_dataset(config)  # Names unknown: positions need every category.


def test_eval_stops_on_categories_the_model_does_not_know(root, tmp_path):
  config = relabelled(root, tmp_path, [(c, c, 'hexagon' if name == 'diamond' else name)
                                       for c, name, _ in synthetic.CATEGORIES])
  with pytest.raises(errors.ConfigError) as error:
    pipeline.make_eval_dataset(config, class_names=NAMES)
  assert str(error.value).splitlines() == [
      "Split 'val': The dataset's categories do not match the model's classes by name:",
      "  dataset categories the model does not know (1): 12 'hexagon'; the model knows: rectangle, ellipse, "
      'triangle, cross, diamond']
  with pytest.raises(errors.ConfigError, match=r"The model has 4 classes \(rectangle, ellipse, triangle, cross: the "
                     r"categories of its training split 'train', or of its checkpoint\) but model.num_classes is 5: "
                     r"set --config.model.num_classes=4\."):
    pipeline.make_eval_dataset(make_config(root), class_names=NAMES[:4])


def test_an_image_too_big_for_its_canvas_is_named(root):
  batches, _ = pipeline.make_eval_dataset(make_config(root, canvases=((256, 384), (384, 256))))
  with pytest.raises(ValueError, match=r'Image \S+/val/\d+\.jpg resized to \d+x\d+ does not fit its canvas 256x384'):
    next(iter(batches))


def truncate(path):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


def copy_with_broken_train_images(root, tmp_path, keep_portrait=None):
  """A copy of the dataset whose first landscape and first portrait train images (with boxes) are truncated; with
  keep_portrait=1 the other portrait images leave the json, so the broken one is its canvas's only image.
  Returns (root, [broken files], their image ids, the ids of all train images with boxes)."""
  copy = str(tmp_path / 'broken')
  shutil.copytree(root, copy)
  path = os.path.join(copy, 'annotations', 'instances_train.json')
  with open(path) as f:
    dataset = json.load(f)
  with_boxes = {a['image_id'] for a in dataset['annotations'] if not a['iscrowd']}
  images = [im for im in dataset['images'] if im['id'] in with_boxes]
  portrait = [im for im in images if im['height'] > im['width']]
  landscape = [im for im in images if im['height'] <= im['width']]
  if keep_portrait:
    gone = {im['id'] for im in portrait[keep_portrait:]}
    dataset['images'] = [im for im in dataset['images'] if im['id'] not in gone]
    dataset['annotations'] = [a for a in dataset['annotations'] if a['image_id'] not in gone]
    with open(path, 'w') as f:
      json.dump(dataset, f)
  broken = [os.path.join(copy, 'train', im['file_name']) for im in (landscape[0], portrait[0])]
  for file in broken:
    truncate(file)
  return copy, broken, {landscape[0]['id'], portrait[0]['id']}, {im['id'] for im in images}


def test_training_skips_unreadable_images_and_reports_each_once(root, tmp_path, caplog):
  copy, broken, broken_ids, with_boxes = copy_with_broken_train_images(root, tmp_path)
  batches = pipeline.make_train_dataset(make_config(copy, skip_bad_images=True))
  with caplog.at_level(logging.WARNING):
    got = take(batches, 30)  # 120 images: several epochs.
  assert {int(i) for b in got for i in b['image_id']} == with_boxes - broken_ids
  for file in broken:
    assert caplog.text.count(f'Skipping unreadable image {file}') == 1
  assert batches.stats.skipped_images == 2 and set(batches.stats.summary()) == {'skipped_images', 'skipped_files'}
  assert 'Skipped 2 unreadable image(s)' in batches.stats.summary_line()


def test_a_canvas_without_readable_images_is_an_error_not_a_hang(root, tmp_path):
  copy, broken, _, _ = copy_with_broken_train_images(root, tmp_path, keep_portrait=1)
  batch_iterator = iter(pipeline.make_train_dataset(make_config(copy, skip_bad_images=True)))
  with pytest.raises(ValueError, match=f'No readable image in canvas 512x384 of split train \\(1 image.*{broken[1]}'):
    for _ in range(200):  # The portrait canvas is drawn for ~1 batch in 10.
      next(batch_iterator)


def unblock(fifo):
  """Opens `fifo` for writing and closes it, so that the reader blocked on it reads an empty file."""
  for _ in range(100):
    try:
      os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
      return
    except OSError:  # No reader yet.
      time.sleep(0.05)


def test_stop_during_a_read_waits_for_it_or_gives_up(tmp_path, monkeypatch):
  """A stop during a read that ends in the grace period takes its batch; a read that never ends (a FIFO without
  writer) is given up after the grace period, with `stuck` set."""
  monkeypatch.setattr(iterator, '_GRACE_S', 2)
  stop = threading.Event()

  def slow():
    for i in range(3):
      time.sleep(1 if i == 1 else 0)
      yield {'i': i, 'dropped_boxes': np.zeros([1], np.int32)}

  spec = {'i': tf.TensorSpec([], tf.int64), 'dropped_boxes': tf.TensorSpec([1], tf.int32)}
  batch_iterator = iter(iterator.Batches(tf.data.Dataset.from_generator(slow, output_signature=spec),
                                         iterator.InputStats(), stop=stop.is_set))
  assert next(batch_iterator)['i'] == 0
  threading.Timer(0.3, stop.set).start()
  assert next(batch_iterator)['i'] == 1  # The read in flight when the stop came ended within the grace period.
  with pytest.raises(iterator.Interrupted):
    next(batch_iterator)
  assert not batch_iterator.stuck

  fifo = str(tmp_path / 'fifo')
  os.mkfifo(fifo)
  dataset = tf.data.Dataset.from_tensors(fifo).map(lambda f: {'text': tf.io.read_file(f),
                                                              'dropped_boxes': tf.zeros([1], tf.int32)})
  stop.clear()
  batch_iterator = iter(iterator.Batches(dataset, iterator.InputStats(), stop=stop.is_set))
  threading.Timer(0.3, stop.set).start()
  start = time.perf_counter()
  with pytest.raises(iterator.Interrupted):
    next(batch_iterator)
  assert batch_iterator.stuck and 2 <= time.perf_counter() - start < 4
  unblock(fifo)


def test_stop_is_asked_before_each_batch(tmp_path):
  stop = threading.Event()
  dataset = tf.data.Dataset.range(5).map(lambda i: {'i': i, 'dropped_boxes': tf.zeros([1], tf.int32)})
  batch_iterator = iter(iterator.Batches(dataset, iterator.InputStats(), stop=stop.is_set))
  assert next(batch_iterator)['i'] == 0
  stop.set()
  with pytest.raises(iterator.Interrupted):
    next(batch_iterator)
  path = tf.train.Checkpoint(iterator=batch_iterator).write(str(tmp_path / 'position'))
  stop.clear()
  assert [int(b['i']) for b in batch_iterator] == [1, 2, 3, 4]  # Nothing was taken by the interrupted call.
  restored = iter(iterator.Batches(dataset, iterator.InputStats()))
  tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
  assert [int(b['i']) for b in restored] == [1, 2, 3, 4]
