"""COCO sources: box filters and label mapping, ground truth, json validation and damaged images, TFDS (mocked)."""

import io
import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from fcos_jax.data import annotations
from fcos_jax.data import categories
from fcos_jax.data import decoding
from fcos_jax.data import sources
from fcos_jax.data import synthetic

pytestmark = pytest.mark.fast

tf.config.set_visible_devices([], 'GPU')


@pytest.fixture
def folder(tmp_path):
  """A 6-image synthetic folder dataset (split 'train'); returns (root, its annotation dict)."""
  root = str(tmp_path / 'coco')
  synthetic.write_split(root, 'train', 6, seed=0)
  with open(os.path.join(root, 'annotations', 'instances_train.json')) as f:
    return root, json.load(f)


def write_json(root, dataset, split='train'):
  with open(os.path.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
    json.dump(dataset, f)


def test_index_applies_the_box_filters_and_label_mapping(folder, caplog):
  root, dataset = folder
  img = dataset['images'][0]
  h, w = img['height'], img['width']
  ann = lambda i, cat, bbox, crowd=0: {'id': i, 'image_id': img['id'], 'category_id': cat, 'bbox': bbox,  # noqa: E731
                                       'iscrowd': crowd, 'area': 1.0}
  dataset['annotations'] = [
      ann(1, 7, [10, 20, 30, 40]),  # Kept: label 2 (ids 1, 3, 7, 8, 12).
      ann(2, 12, [0, 0, 50, 50], crowd=1),  # Crowd: dropped.
      ann(3, 1, [5, 5, -3, 10]),  # Negative width: dropped.
      ann(4, 1, [5, 5, 10, 0]),  # Zero height: dropped.
      ann(5, 3, [w - 10, h - 5, 30, 30]),  # Sticks out: clipped.
      ann(6, 8, [w + 5, 3, 10, 10]),  # Entirely outside: dropped.
  ]
  write_json(root, dataset)
  with caplog.at_level(logging.WARNING):
    source = sources.FolderSource(root)
    index = source.index('train')
  assert 'dropped 3 box(es) with no area (w <= 0 or h <= 0, or outside the image): annotation ids 3, 4, 6' in (
      caplog.text)
  assert source.category_ids('train') == (1, 3, 7, 8, 12)
  assert len(index) == 6 and index.image_ids[0] == img['id']
  np.testing.assert_array_equal(index.sizes[0], [h, w])
  np.testing.assert_allclose(index.boxes[0], [[10, 20, 40, 60], [w - 10, h - 5, w, h]])
  np.testing.assert_array_equal(index.labels[0], [2, 1])
  assert all(len(b) == 0 for b in index.boxes[1:])
  assert index.files[0] == os.path.join(root, 'train', img['file_name'])
  gt = source.coco_gt('train')
  assert len(gt.anns) == 6 and gt.anns[2]['iscrowd'] == 1 and len(gt.imgs) == 6  # The json as it is.


def test_records_hold_the_index_and_shard_by_orientation(folder):
  root, _ = folder
  source = sources.FolderSource(root)
  index = source.index('train')
  records = list(source.records('train').as_numpy_iterator())
  assert [r['image_id'] for r in records] == index.image_ids.tolist()
  for r, boxes, labels in zip(records, index.boxes, index.labels):
    np.testing.assert_allclose(r['boxes'], boxes)
    np.testing.assert_array_equal(r['labels'], labels)
    assert r['boxes'].dtype == np.float32 and r['labels'].dtype == np.int32 and r['orig_size'].dtype == np.int32
  shards = [list(source.records('train', i, 2).as_numpy_iterator()) for i in range(2)]
  ids = [[r['image_id'] for r in shard] for shard in shards]
  assert sorted(ids[0] + ids[1]) == sorted(index.image_ids.tolist()) and not set(ids[0]) & set(ids[1])
  portrait = [sum(r['orig_size'][0] > r['orig_size'][1] for r in shard) for shard in shards]
  assert abs(portrait[0] - portrait[1]) <= 1
  with_boxes = [r['image_id'] for r in source.records('train', with_boxes_only=True).as_numpy_iterator()]
  assert with_boxes == [i for i, b in zip(index.image_ids, index.boxes) if len(b)]
  assert len(with_boxes) == 5  # Image 5 of the synthetic split is empty.


def test_shuffled_records_permute_every_epoch(folder):
  index = sources.FolderSource(folder[0]).index('train')
  ids = [r['image_id'] for r in index.records(seed=3).take(18).as_numpy_iterator()]
  epochs = [ids[:6], ids[6:12], ids[12:]]
  assert all(sorted(e) == sorted(index.image_ids.tolist()) for e in epochs)
  assert len({tuple(e) for e in epochs}) == 3 and epochs[0] != index.image_ids.tolist()
  assert ids == [r['image_id'] for r in index.records(seed=3).take(18).as_numpy_iterator()]
  first = next(iter(index.records(seed=3)))
  row = index.image_ids.tolist().index(int(first['image_id']))
  np.testing.assert_allclose(first['boxes'].numpy(), index.boxes[row])
  np.testing.assert_array_equal(first['labels'].numpy(), index.labels[row])


@pytest.mark.parametrize('edit,message', [
    (lambda d: d.pop('annotations'), 'missing or invalid "annotations" list'),
    (lambda d: d.pop('images'), 'missing or invalid "images" list'),
    (lambda d: d['annotations'][0].update(image_id=999), 'annotation 1 names unknown image_id 999'),
    (lambda d: d['annotations'][1].update(category_id=5), 'annotation 2 names unknown category_id 5'),
    (lambda d: d['annotations'][0].update(bbox=[1, 2, 3]), 'annotation 1 has bbox [1, 2, 3]'),
    (lambda d: d['annotations'][2].update(bbox=[1, 2, 'x', 4]), "annotation 3 has bbox [1, 2, 'x', 4]"),
    (lambda d: d['images'][1].pop('height'), 'image entry needs id, file_name, height and width'),
    (lambda d: d['images'].append(dict(d['images'][0])), 'duplicate image id 1'),
    (lambda d: d['images'][0].update(height='480'), "image 1 has size '480'x"),
    (lambda d: d['images'][0].update(width=0), 'image 1 has size'),
    (lambda d: d['images'][1].update(file_name=7), 'image entry needs an integer id and a string file_name'),
    (lambda d: d['images'][1].update(id='2'), 'image entry needs an integer id and a string file_name'),
])
def test_bad_json_names_the_file_and_entry(folder, edit, message):
  root, dataset = folder
  edit(dataset)
  write_json(root, dataset)
  with pytest.raises(ValueError, match='instances_train.json: ' + message.replace('[', r'\[')):
    sources.FolderSource(root).index('train')


def test_unknown_keys_are_ignored(folder):
  root, dataset = folder
  plain = sources.FolderSource(root).index('train')
  dataset.update(info={'year': 2017}, licenses=[], extra=[1, 2])
  dataset['images'][0].update(coco_url='http://x', flickr_id=5)
  for ann in dataset['annotations']:
    ann.update(segmentation=[[0, 0, 1, 1]], attributes={'occluded': True})
  write_json(root, dataset)
  index = sources.FolderSource(root).index('train')
  np.testing.assert_array_equal(index.image_ids, plain.image_ids)
  for a, b in zip(index.boxes, plain.boxes):
    np.testing.assert_array_equal(a, b)


def test_invalid_json_and_missing_annotations(folder):
  root, _ = folder
  with pytest.raises(FileNotFoundError, match='instances_val.json'):
    sources.FolderSource(root).index('val')
  with open(os.path.join(root, 'annotations', 'instances_train.json'), 'w') as f:
    f.write('{"images": [')
  with pytest.raises(ValueError, match='instances_train.json: invalid JSON'):
    sources.FolderSource(root).index('train')


def test_missing_image_file_fails_early_or_is_skipped(folder, caplog):
  root, dataset = folder
  missing = os.path.join(root, 'train', dataset['images'][2]['file_name'])
  os.remove(missing)
  with pytest.raises(FileNotFoundError, match=f'1 image file\\(s\\) missing: {missing}'):
    sources.FolderSource(root).index('train')
  with caplog.at_level(logging.WARNING):
    index = sources.FolderSource(root, skip_bad_images=True).index('train')
  assert len(index) == 5 and dataset['images'][2]['id'] not in index.image_ids
  assert f'skipping 1 missing image file(s): {missing}' in caplog.text


def _jpeg(h=40, w=60):
  return tf.io.encode_jpeg(np.full((h, w, 3), 120, np.uint8)).numpy()


@pytest.mark.parametrize('data,problem', [
    (_jpeg(), ''),
    (_jpeg() + b'\0' * 100, ''),  # Bytes after the end marker are harmless.
    (tf.io.encode_png(np.zeros((5, 5, 1), np.uint8)).numpy(), ''),
    (_jpeg()[:-200], 'truncated JPEG (no end-of-image marker)'),
    (_jpeg()[:100], 'truncated JPEG (no end-of-image marker)'),
    (tf.io.encode_png(np.zeros((5, 5, 3), np.uint8)).numpy()[:-20], 'truncated PNG (no IEND chunk)'),
    (b'', 'empty file'),
    (b'<html>not found</html>', 'not a JPEG, PNG, GIF, BMP or WebP image'),
])
def test_integrity_problem(data, problem):
  assert decoding.integrity_problem(tf.constant(data)).numpy().decode() == problem


def _record(h=40, w=60):
  return {'file': tf.constant('dir/img.jpg'), 'image_id': tf.constant(17), 'orig_size': tf.constant([h, w]),
          'boxes': tf.zeros([0, 4]), 'labels': tf.zeros([0], tf.int32)}


def test_decode_grayscale_and_png_to_rgb():
  gray = np.arange(40 * 60, dtype=np.uint8).reshape(40, 60, 1)
  for data in (tf.io.encode_png(gray), tf.io.encode_jpeg(gray, quality=100),
               tf.io.encode_png(np.repeat(gray, 4, axis=-1))):
    example, problem = decoding.decode(_record(), data)
    image = example['image'].numpy()
    assert problem.numpy() == b'' and image.shape == (40, 60, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all()
  example, _ = decoding.decode(_record(), tf.io.encode_png(gray))
  np.testing.assert_array_equal(example['image'].numpy()[..., 1], gray[..., 0])


def test_decode_cmyk_jpeg_to_rgb():
  from PIL import Image  # pylint: disable=g-import-not-at-top  (pillow comes with matplotlib)
  y, x = np.mgrid[:40, :60]
  pixels = np.stack([x * 4, y * 6, 255 - x * 4, np.full_like(x, 40)], -1).astype(np.uint8)  # Smooth: no decoder noise.
  buffer = io.BytesIO()
  Image.fromarray(pixels, 'CMYK').save(buffer, 'JPEG', quality=95)
  example, problem = decoding.decode(_record(), tf.constant(buffer.getvalue()))
  want = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert('RGB'), np.int32)
  image = example['image'].numpy()
  assert problem.numpy() == b'' and image.shape == (40, 60, 3) and image.dtype == np.uint8
  assert np.abs(image.astype(np.int32) - want).max() <= 3  # Pillow's CMYK -> RGB, up to the decoders' rounding.


def _photo(h=97, w=131):
  """Photo-like RGB pixels: gradients, ripples, sensor noise and a sharp-edged patch (the IDCTs differ on these)."""
  y, x = np.mgrid[:h, :w]
  pixels = np.stack([x * 1.5 + 40 * np.sin(y / 5.0), y * 2.0 + 30 * np.cos(x / 4.0), (x + y) * 0.8], -1)
  pixels = pixels + np.random.default_rng(0).normal(0, 12, pixels.shape)
  pixels[20:60, 30:90] = (250, 20, 30)
  return np.clip(pixels, 0, 255).astype(np.uint8)


# Pillow's JPEG options for the variants PaddleDetection meets: 4:2:0 baseline, progressive, 4:4:4, grayscale.
_JPEG_KINDS = {'baseline': {}, 'progressive': {'progressive': True}, '444': {'subsampling': 0}, 'gray': {}}


@pytest.mark.parametrize('kind', sorted(_JPEG_KINDS))
def test_jpegs_decode_as_opencv_does(kind, tmp_path):
  """Pillow decodes with libjpeg-turbo's defaults, the accurate integer IDCT and fancy upsampling, as OpenCV does
  (bit for bit: parity/reader_compare.py checks both against fcos_jax). The pipeline, the Predictor and the explain
  API decode the same; TensorFlow's default (fast IDCT) differs, so this test can fail."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from fcos_jax import explain, predict  # pylint: disable=g-import-not-at-top
  picture = Image.fromarray(_photo())
  buffer = io.BytesIO()
  (picture.convert('L') if kind == 'gray' else picture).save(buffer, 'JPEG', quality=90, **_JPEG_KINDS[kind])
  data = buffer.getvalue()
  want = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
  example, _ = decoding.decode(_record(97, 131), tf.constant(data))
  np.testing.assert_array_equal(example['image'].numpy(), want)
  np.testing.assert_array_equal(predict.decode(data, 'a.jpg'), want)
  (tmp_path / 'a.jpg').write_bytes(data)
  np.testing.assert_array_equal(explain.load_image(tmp_path / 'a.jpg'), want)
  fast = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
  assert (fast != want).any()


def test_png_decodes_to_its_pixels():
  pixels = _photo()
  example, _ = decoding.decode(_record(97, 131), tf.io.encode_png(pixels))
  np.testing.assert_array_equal(example['image'].numpy(), pixels)


def test_decode_names_the_damaged_file_or_reports_it():
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'Unreadable image dir/img.jpg \(image_id 17\): truncated JPEG'):
    decoding.decode(_record(), _jpeg()[:300])
  example, problem = decoding.decode(_record(), tf.constant(b''), skip_bad=True)
  assert problem.numpy().decode() == 'dir/img.jpg (image_id 17): empty file'
  assert example['image'].shape == (40, 60, 3) and not example['image'].numpy().any()


def test_decode_checks_the_annotated_size():
  with pytest.raises(tf.errors.InvalidArgumentError, match='Image dir/img.jpg is 40x60 but its annotation says 30x60'):
    decoding.decode(_record(30, 60), _jpeg())


# --- TFDS, mocked: tests must never reach a real download. ---------------------------------------------------------

def _tfds_examples(num):
  """Synthetic images as TFDS coco/2017 examples, with their expected pixel boxes (crowd included)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  examples, expected = [], []
  for i in range(num):
    image, objects = synthetic.render(np.random.default_rng([5, i]), i)
    h, w = image.shape[:2]
    bbox = [tfds.features.BBox(y / h, x / w, (y + bh) / h, (x + bw) / w) for _, (x, y, bw, bh), _ in objects]
    examples.append({'image': image, 'image/filename': f'{i}.jpg', 'image/id': 100 + i, 'objects': {
        'area': [bw * bh // 2 for _, (_, _, bw, bh), _ in objects], 'bbox': bbox, 'id': list(range(len(objects))),
        'is_crowd': [bool(c) for _, _, c in objects], 'label': [label for label, _, _ in objects]}})
    expected.append((i, objects))
  return examples, expected


@pytest.fixture(scope='module')
def mocked_tfds():
  """tfds.testing.mock_data serving 8 synthetic examples through the real (de)serialisation of coco/2017."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  examples, expected = _tfds_examples(8)

  serialized = []

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del split, read_config, shuffle_files
    return tf.data.Dataset.from_tensor_slices(serialized).map(
        lambda s: self.info.features.deserialize_example(s, decoders=decoders))

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    features = tfds.builder('coco/2017').info.features
    serialized += [features.serialize_example(features.encode_example(ex)) for ex in examples]
    yield expected


def test_tfds_records_and_ground_truth(mocked_tfds):
  source = sources.TfdsSource('coco/2017', '/nonexistent/tfds')
  records = list(source.records('val2017').as_numpy_iterator())
  assert len(records) == 8
  for r, (i, objects) in zip(records, mocked_tfds):
    assert r['image_id'] == 100 + i and r['file'] == f'{i}.jpg'.encode() and r['encoded'][:2] == b'\xff\xd8'
    kept = [(label, box) for label, box, crowd in objects if not crowd]
    np.testing.assert_allclose(r['boxes'], np.reshape([[x, y, x + w, y + h] for _, (x, y, w, h) in kept], (-1, 4)),
                               atol=1e-3)
    np.testing.assert_array_equal(r['labels'], [label for label, _ in kept])
  assert sum(len(r['labels']) > 0 for r in source.records('train', with_boxes_only=True).as_numpy_iterator()) == 7
  index = source.index('val2017')
  assert index.image_ids.tolist() == list(range(100, 108))
  gt = source.coco_gt('val2017')
  assert len(gt.imgs) == 8 and sum(a['iscrowd'] for a in gt.anns.values()) == 1
  assert len(gt.anns) == sum(len(objects) for _, objects in mocked_tfds)
  ann = gt.imgToAnns[100][0]
  label, (x, y, w, h), _ = mocked_tfds[0][1][0]
  np.testing.assert_allclose(ann['bbox'], [x, y, w, h], atol=1e-3)
  assert ann['area'] == w * h // 2  # TFDS's (mask) area, not the box's.
  assert ann['category_id'] == categories.COCO_CATEGORY_IDS[label]
  assert source.category_ids('val') == categories.COCO_CATEGORY_IDS


def test_tfds_pipeline(mocked_tfds):
  from fcos_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from fcos_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = config_lib.get_config()
  config.data.update(dict(source='tfds', tfds_data_dir='/nonexistent/tfds', short_sizes=(320,), eval_short_size=320,
                          max_size=480, canvases=((384, 512), (512, 384)), max_boxes=10))
  config.train.batch_size = config.eval.batch_size = 2
  iterator = iter(pipeline.make_train_dataset(config))
  with_boxes = {100 + i for i, objects in mocked_tfds if any(not crowd for _, _, crowd in objects)}
  for _ in range(4):
    batch = next(iterator)
    assert batch['image'].shape[1:] in ((384, 512, 3), (512, 384, 3)) and batch['boxes'].shape == (2, 10, 4)
    assert set(batch['image_id'].tolist()) <= with_boxes and batch['valid'].any(1).all()
  batches, info = pipeline.make_eval_dataset(config)
  ids = [int(i) for b in batches for i, m in zip(b['image_id'], b['mask']) if m]
  assert sorted(ids) == list(range(100, 108)) and info.num_images == 8
  assert info.label_to_category == categories.COCO_CATEGORY_IDS and len(info.coco_gt.imgs) == 8


# --- Layouts and category names. -----------------------------------------------------------------------------------

def test_any_layout_with_sub_folders(folder, tmp_path):
  """images/ + labels/train.json, file_names with sub-folders, relative paths under the root or absolute."""
  root, dataset = folder
  other = str(tmp_path / 'other')
  os.makedirs(os.path.join(other, 'labels'))
  for i, img in enumerate(dataset['images']):
    sub = os.path.join(f'part{i % 2}', img['file_name'])
    os.makedirs(os.path.join(other, 'images', f'part{i % 2}'), exist_ok=True)
    shutil.copy(os.path.join(root, 'train', img['file_name']), os.path.join(other, 'images', sub))
    img['file_name'] = sub
  with open(os.path.join(other, 'labels', 'train.json'), 'w') as f:
    json.dump(dataset, f)
  plain = sources.FolderSource(root).index('train')
  for layout in (('images', 'labels/train.json'),
                 (os.path.join(other, 'images'), os.path.join(other, 'labels', 'train.json'))):
    source = sources.FolderSource(other, layout={'train': layout})
    assert source.annotation_path('train') == os.path.join(other, 'labels', 'train.json')
    assert source.image_path('train', 'a/b.jpg') == os.path.join(other, 'images', 'a', 'b.jpg')
    index = source.index('train')
    assert [os.path.relpath(f, os.path.join(other, 'images')) for f in index.files] == [
        img['file_name'] for img in dataset['images']]
    np.testing.assert_array_equal(index.image_ids, plain.image_ids)
    record = next(iter(source.records('train')))
    example, problem = decoding.decode(record, source.read(record))
    assert problem.numpy() == b'' and example['image'].shape[-1] == 3
  default = sources.FolderSource(root)
  assert default.annotation_path('val') == os.path.join(root, 'annotations', 'instances_val.json')
  assert default.image_path('val', 'x.jpg') == os.path.join(root, 'val', 'x.jpg')
  with pytest.raises(FileNotFoundError, match=os.path.join(other, 'annotations', 'instances_train.json')):
    sources.FolderSource(other).index('train')  # The COCO layout is not there: the error names where it looked.


CATEGORIES = [{'id': 1, 'name': 'person'}, {'id': 3, 'name': 'car'}, {'id': 18, 'name': 'dog'}]


def test_label_to_category_maps_by_name():
  model = ('car', 'person', 'bicycle', 'dog')
  assert annotations.label_to_category(model, CATEGORIES) == (3, 1, -1, 18)  # The dataset has no bicycle.
  assert annotations.label_to_category(('person', 'car', 'dog'), CATEGORIES[::-1]) == (1, 3, 18)


def test_label_to_category_lists_every_mismatch():
  with pytest.raises(ValueError) as error:
    annotations.label_to_category(('person', 'car', 'car'), CATEGORIES + [{'id': 90, 'name': 'toothbrush'}])
  message = str(error.value)
  assert "dataset categories the model does not know (2): 18 'dog', 90 'toothbrush'" in message
  assert 'model class names given more than once: car' in message and 'the model knows: person, car, car' in message
  with pytest.raises(ValueError, match='dataset category names given more than once: dog'):
    annotations.label_to_category(('dog',), [{'id': 1, 'name': 'dog'}, {'id': 2, 'name': 'dog'}])
