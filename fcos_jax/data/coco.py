"""Sources of COCO images and boxes: a COCO-format folder or TFDS `coco/2017`.

Both sources give, per split, an `Index` (everything but pixels), a tf.data stream of records (one per image) and a
`pycocotools.coco.COCO` ground truth for evaluation. A record holds `file` (string, for messages), `image_id` int32,
`orig_size` int32 [2] (h, w), `boxes` float32 [N, 4] and `labels` int32 [N]; `source.read(record)` gives its encoded
bytes and `decode` the canonical example, which adds `image` uint8 [h, w, 3] (RGB).

Boxes follow the SPEC: crowd annotations dropped, [x, y, w, h] -> [x, y, x + w, y + h] (no -1), clipped to the image,
boxes with no area dropped. Label = position of the category id in the sorted category ids of the split.
"""

import contextlib
import dataclasses
import io
import json
import logging
import os

import numpy as np
from pycocotools import coco as coco_api
import tensorflow as tf

from fcos_jax import errors
from fcos_jax.data.categories import COCO_CATEGORY_IDS  # TFDS label i is the i-th of them.

_TFDS_SPLITS = {'train2017': 'train', 'val2017': 'validation'}  # COCO folder names -> TFDS split names.


@dataclasses.dataclass(frozen=True)
class Index:
  """Metadata of the images of one split, in the order of `records`; row i is image i."""
  files: np.ndarray  # [N] str: image paths (folder) or file names (TFDS).
  image_ids: np.ndarray  # [N] int64.
  sizes: np.ndarray  # [N, 2] int32 (h, w).
  boxes: tuple  # N arrays [n_i, 4] float32, xyxy pixels after the SPEC filters.
  labels: tuple  # N arrays [n_i] int32.

  def __len__(self):
    return len(self.files)

  def select(self, rows):
    """The index of the images `rows` [M] (ints), in that order."""
    return Index(self.files[rows], self.image_ids[rows], self.sizes[rows], tuple(self.boxes[i] for i in rows),
                 tuple(self.labels[i] for i in rows))

  def records(self, seed=None):
    """The rows as a tf.data.Dataset of records: once in order, or with `seed` (an int) endlessly, every epoch a
    new permutation drawn statelessly from (seed, epoch), so that an iterator checkpoint holds a counter, not a
    shuffle buffer."""
    n = len(self)
    splits = tf.constant(np.cumsum([0] + [len(b) for b in self.labels]), tf.int64)
    columns = {'file': tf.constant(self.files.astype(object)), 'image_id': tf.constant(self.image_ids, tf.int32),
               'orig_size': tf.constant(self.sizes, tf.int32)}
    boxes = tf.constant(np.concatenate(self.boxes).reshape(-1, 4), tf.float32)
    labels = tf.constant(np.concatenate(self.labels), tf.int32)

    @tf.autograph.experimental.do_not_convert  # Plain TF ops: skip autograph's slow source conversion.
    def row(i):
      if seed is not None:
        i = tf.random.experimental.index_shuffle(i % n, tf.stack([tf.constant(seed, tf.int64), i // n]),
                                                 tf.constant(n - 1, tf.int64))
      start, end = splits[i], splits[i + 1]
      return {**{k: v[i] for k, v in columns.items()}, 'boxes': boxes[start:end], 'labels': labels[start:end]}

    return tf.data.Dataset.range(n if seed is None else np.iinfo(np.int64).max).map(row)


def clean_boxes(xywh, crowd, height, width):
  """SPEC filters on COCO [x, y, w, h] boxes [N, 4] -> (xyxy [M, 4] float32 clipped to the image, kept [N] bool)."""
  xywh = np.asarray(xywh, np.float32).reshape(-1, 4)
  xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
  xyxy = np.clip(xyxy, 0, np.array([width, height, width, height], np.float32))
  kept = ~np.asarray(crowd, bool) & (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
  kept &= (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
  return xyxy[kept], kept


def _listing(items, limit=10):
  """'a, b, c, ...': the first `limit` items, for messages."""
  return ', '.join(map(str, items[:limit])) + (', ...' if len(items) > limit else '')


def _require(cond, path, message):
  if not cond:
    raise errors.DataError(f'{path}: {message}')


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def check_structure(dataset, path):
  """Validates the structure of a COCO annotation dict (types, required keys, unique image ids, positive sizes);
  errors name the json file and the offending entry. References between entries: see `unknown_references`."""
  _require(isinstance(dataset, dict), path, 'not a COCO annotation file (expected a JSON object).')
  for key in ('images', 'annotations', 'categories'):
    _require(isinstance(dataset.get(key), list), path, f'missing or invalid "{key}" list.')
  _require(dataset['categories'], path, 'no categories.')
  for cat in dataset['categories']:
    _require(isinstance(cat, dict) and isinstance(cat.get('id'), int), path, f'category without an integer id: {cat}')
  image_ids = set()
  for img in dataset['images']:
    _require(isinstance(img, dict) and all(k in img for k in ('id', 'file_name', 'height', 'width')), path,
             f'image entry needs id, file_name, height and width: {img}')
    _require(_is_int(img['id']) and isinstance(img['file_name'], str), path,
             f'image entry needs an integer id and a string file_name: {img}')
    _require(img['id'] not in image_ids, path, f'duplicate image id {img["id"]}.')
    _require(_is_int(img['height']) and _is_int(img['width']) and img['height'] > 0 and img['width'] > 0, path,
             f'image {img["id"]} has size {img["height"]!r}x{img["width"]!r} (expected positive integers).')
    image_ids.add(img['id'])
  for ann in dataset['annotations']:
    _require(isinstance(ann, dict) and all(k in ann for k in ('id', 'image_id', 'category_id', 'bbox')), path,
             f'annotation needs id, image_id, category_id and bbox: {ann}')
    bbox = ann['bbox']
    _require(isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox), path,
             f'annotation {ann["id"]} has bbox {bbox}.')


def unknown_references(dataset):
  """Annotations of a structurally valid COCO dict (see `check_structure`) that name an image or category id the
  file does not define: a list of (annotation, 'image_id' or 'category_id')."""
  known = {'image_id': {img['id'] for img in dataset['images']},
           'category_id': {cat['id'] for cat in dataset['categories']}}
  return [(ann, key) for ann in dataset['annotations'] for key in ('image_id', 'category_id')
          if ann[key] not in known[key]]


def _require_known_references(dataset, path):
  for ann, key in unknown_references(dataset)[:1]:
    raise errors.DataError(f'{path}: annotation {ann["id"]} names unknown {key} {ann[key]}.')


def load_annotations(path):
  """The COCO annotation dict of the json file `path`, its structure validated (see `check_structure`)."""
  if not os.path.exists(path):
    raise errors.MissingFileError(f'No annotation file {path}.')
  try:
    with open(path) as f:
      dataset = json.load(f)
  except json.JSONDecodeError as e:
    raise errors.DataError(f'{path}: invalid JSON ({e}).') from e
  check_structure(dataset, path)
  return dataset


def _quiet_coco(dataset):
  """A pycocotools COCO object over an in-memory annotation dict, without its prints."""
  gt = coco_api.COCO()
  gt.dataset = dataset
  with contextlib.redirect_stdout(io.StringIO()):
    gt.createIndex()
  return gt


def split_paths(root, split, images='', annotations=''):
  """(image folder, annotation file) of `split`: `images` and `annotations` where given (relative paths under
  `root`), else the COCO layout, root/{split}/ and root/annotations/instances_{split}.json."""
  annotations = annotations or os.path.join('annotations', f'instances_{split}.json')
  return os.path.join(root, images or split), os.path.join(root, annotations)


class FolderSource:
  """COCO-format annotation files and image folders; image paths are the folder joined with each `file_name`
  (sub-folders included). `layout` maps a split to its (images, annotations) paths as `split_paths` takes them;
  other splits use the COCO layout under `root`."""

  def __init__(self, root, skip_bad_images=False, layout=None):
    self.root = root
    self.skip_bad_images = skip_bad_images
    self.layout = dict(layout or {})
    self._splits = {}

  def _load(self, split):
    """Parses and validates the json of `split` once; returns (COCO, Index, category ids, missing files)."""
    if split in self._splits:
      return self._splits[split]
    path = self.annotation_path(split)
    dataset = load_annotations(path)
    _require_known_references(dataset, path)
    gt = _quiet_coco(dataset)
    category_ids = tuple(sorted(gt.cats))
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    files, ids, sizes, boxes, labels, missing, dropped = [], [], [], [], [], [], []
    for img in dataset['images']:
      file = self.image_path(split, img['file_name'])
      if not os.path.exists(file):
        missing.append((file, img['id']))
        continue
      anns = gt.imgToAnns[img['id']]
      xyxy, kept = clean_boxes([a['bbox'] for a in anns], [a.get('iscrowd', 0) for a in anns], img['height'],
                               img['width'])
      dropped += [a['id'] for a, k in zip(anns, kept) if not k and not a.get('iscrowd', 0)]
      files.append(file)
      ids.append(img['id'])
      sizes.append((img['height'], img['width']))
      boxes.append(xyxy)
      labels.append(np.array([label_of[a['category_id']] for a, k in zip(anns, kept) if k], np.int32))
    names = [file for file, _ in missing]
    if missing and not self.skip_bad_images:
      raise errors.MissingFileError(f'{path}: {len(missing)} image file(s) missing: {_listing(names)}')
    if missing:
      logging.warning('%s: skipping %d missing image file(s): %s', path, len(missing), _listing(names))
    if dropped:
      logging.warning('%s: dropped %d box(es) with no area (w <= 0 or h <= 0, or outside the image): annotation '
                      'ids %s', path, len(dropped), _listing(dropped))
    _require(files, path, 'no readable images.')
    index = Index(np.array(files), np.array(ids, np.int64), np.array(sizes, np.int32).reshape(-1, 2),
                  tuple(boxes), tuple(labels))
    self._splits[split] = gt, index, category_ids, tuple(missing)
    return self._splits[split]

  def annotation_path(self, split):
    """The COCO json of `split`."""
    return split_paths(self.root, split, *self.layout.get(split, ('', '')))[1]

  def image_path(self, split, file_name):
    """The file of an image of `split`, from its json `file_name`."""
    return os.path.join(split_paths(self.root, split, *self.layout.get(split, ('', '')))[0], file_name)

  def index(self, split):
    return self._load(split)[1]

  def missing(self, split):
    """(file, image id) of each image of `split` whose file is missing (skipped: data.skip_bad_images)."""
    return self._load(split)[3]

  def category_ids(self, split):
    """COCO category id of each label: label i <-> category_ids[i]."""
    return self._load(split)[2]

  def class_names(self, split):
    """Name of each label, from the json's categories."""
    gt, _, category_ids, _ = self._load(split)
    return tuple(str(gt.cats[c].get('name', c)) for c in category_ids)

  def process_rows(self, split, process_index=0, process_count=1, with_boxes_only=False):
    """Rows of `index(split)` that `records` gives this process (only those with boxes if asked), in index order.

    Images are sorted by orientation before being dealt out, so every process gets its share of both orientations.
    """
    index = self.index(split)
    rows = np.arange(len(index))
    if with_boxes_only:
      rows = rows[[len(b) > 0 for b in index.labels]]
    rows = rows[np.argsort(index.sizes[rows, 0] > index.sizes[rows, 1], kind='stable')]
    return np.sort(rows[process_index::process_count])

  def coco_gt(self, split):
    """Ground truth of `split` as parsed from its json (all images and annotations, crowd included)."""
    return self._load(split)[0]

  def records(self, split, process_index=0, process_count=1, seed=None, with_boxes_only=False):
    """This process's share of the images of `split` (see `process_rows`): once in index order, or with `seed`
    endlessly, each epoch reshuffled (see `Index.records`)."""
    rows = self.process_rows(split, process_index, process_count, with_boxes_only)
    return self.index(split).select(rows).records(seed)

  def read(self, record):
    """Encoded bytes of the image of `record` (a string tensor)."""
    return tf.io.read_file(record['file'])


class TfdsSource:
  """TFDS `coco/2017` (or any dataset with its features) prepared in `data_dir`; never downloads."""

  def __init__(self, name, data_dir):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._tfds = tfds
    self.builder = tfds.builder(name, data_dir=data_dir or None)
    num_classes = self.builder.info.features['objects']['label'].num_classes
    if num_classes != len(COCO_CATEGORY_IDS):
      raise errors.DataError(f'TFDS {name}: {num_classes} classes, expected the 80 COCO classes.')
    self._scans = {}

  def _split_name(self, split):
    return _TFDS_SPLITS.get(split, split)

  def _raw(self, split, shuffle_seed=None):
    """Examples with the image left encoded, plus `orig_size` read from the image header."""
    tfds = self._tfds
    # Shuffled reads take their records from 16 files at once, one at a time, so that consecutive records come from
    # different files: with the files reshuffled every epoch, this is the only shuffling (no buffer to checkpoint).
    read_config = (tfds.ReadConfig() if shuffle_seed is None else
                   tfds.ReadConfig(shuffle_seed=shuffle_seed, interleave_cycle_length=16, interleave_block_length=1))
    ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
                                 decoders={'image': tfds.decode.SkipDecoding()})

    @tf.autograph.experimental.do_not_convert  # Plain TF ops: skip autograph's slow source conversion.
    def add_size(ex):
      encoded = ex['image']
      size = tf.cond(tf.io.is_jpeg(encoded), lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                     lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))[:2])
      return {**ex, 'orig_size': tf.cast(size, tf.int32)}

    return ds.map(add_size, num_parallel_calls=tf.data.AUTOTUNE)

  def records(self, split, process_index=0, process_count=1, seed=None, with_boxes_only=False):
    """Records of this process's even share of `split` (only images with boxes if asked): once in order, or with
    `seed` endlessly, the files reshuffled every epoch and read 16 at a time, record by record."""
    split = self._split_name(split)
    if process_count > 1:
      split = self._tfds.even_splits(split, n=process_count)[process_index]

    @tf.autograph.experimental.do_not_convert
    def to_record(ex):
      h, w = tf.unstack(tf.cast(ex['orig_size'], tf.float32))
      objects = ex['objects']
      ymin, xmin, ymax, xmax = tf.unstack(objects['bbox'], axis=-1)
      xyxy = tf.stack([xmin * w, ymin * h, xmax * w, ymax * h], axis=-1)
      xyxy = tf.clip_by_value(xyxy, 0.0, tf.stack([w, h, w, h]))
      kept = ~objects['is_crowd'] & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
      return {'file': ex['image/filename'], 'image_id': tf.cast(ex['image/id'], tf.int32),
              'orig_size': ex['orig_size'], 'boxes': tf.boolean_mask(xyxy, kept),
              'labels': tf.cast(tf.boolean_mask(objects['label'], kept), tf.int32), 'encoded': ex['image']}

    records = self._raw(split, seed).map(to_record, num_parallel_calls=tf.data.AUTOTUNE)
    if with_boxes_only:
      records = records.filter(lambda r: tf.size(r['labels']) > 0)
    return records if seed is None else records.repeat()

  def read(self, record):
    """Encoded bytes of the image of `record`, which carries them."""
    return record['encoded']

  def _scan(self, split):
    """One pass over `split` (images not decoded): (Index, COCO ground truth), cached."""
    if split in self._scans:
      return self._scans[split]
    images, annotations, files, ids, sizes, boxes, labels = [], [], [], [], [], [], []
    for ex in self._raw(self._split_name(split)).as_numpy_iterator():
      h, w = (int(v) for v in ex['orig_size'])
      objects = ex['objects']
      ymin, xmin, ymax, xmax = objects['bbox'].T
      xywh = np.stack([xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h], axis=1)
      image_id = int(ex['image/id'])
      images.append({'id': image_id, 'file_name': ex['image/filename'].decode(), 'height': h, 'width': w})
      for box, label, crowd, area in zip(xywh, objects['label'], objects['is_crowd'], objects['area']):
        annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'bbox': [float(v) for v in box],
                            'category_id': COCO_CATEGORY_IDS[label], 'iscrowd': int(crowd),
                            'area': float(area)})  # The mask area, which COCOeval's size ranges use.
      xyxy, kept = clean_boxes(xywh, objects['is_crowd'], h, w)
      files.append(images[-1]['file_name'])
      ids.append(image_id)
      sizes.append((h, w))
      boxes.append(xyxy)
      labels.append(objects['label'][kept].astype(np.int32))
    names = self.builder.info.features['objects']['label'].names
    categories = [{'id': cid, 'name': name} for cid, name in zip(COCO_CATEGORY_IDS, names)]
    gt = _quiet_coco({'images': images, 'annotations': annotations, 'categories': categories})
    index = Index(np.array(files), np.array(ids, np.int64), np.array(sizes, np.int32).reshape(-1, 2), tuple(boxes),
                  tuple(labels))
    self._scans[split] = index, gt
    return self._scans[split]

  def index(self, split):
    return self._scan(split)[0]

  def category_ids(self, split):
    del split
    return COCO_CATEGORY_IDS

  def class_names(self, split):
    del split
    return tuple(self.builder.info.features['objects']['label'].names)

  def num_images(self, split):
    """Images in `split`, from the dataset's metadata."""
    return self.builder.info.splits[self._split_name(split)].num_examples

  def missing(self, split):
    """No files to miss: the images are inside the dataset."""
    del split
    return ()

  def coco_gt(self, split):
    """Ground truth of `split` built in memory from one pass over the dataset (crowd boxes kept, as in COCO)."""
    return self._scan(split)[1]


def _tail_contains(tail, marker):
  """Whether the bytes `tail` (uint8 [n]) contain `marker` (bytes) anywhere."""
  n, m = tf.shape(tail)[0], len(marker)
  found = tf.ones([tf.maximum(n - m + 1, 0)], bool)
  for j, byte in enumerate(marker):
    found &= tf.equal(tail[j:n - m + 1 + j], byte)
  return tf.reduce_any(found)


def integrity_problem(encoded):
  """Why encoded image bytes cannot be decoded, '' when they look whole (a string tensor).

  Checked before decoding because a decode error inside tf.data cannot name the file. Catches empty files, unknown
  formats and truncated JPEG/PNG files; damage that keeps the file's structure is left to the decoder.
  """
  n = tf.strings.length(encoded)
  head = lambda k: tf.strings.substr(encoded, 0, k)  # pylint: disable=unnecessary-lambda-assignment
  is_jpeg = tf.equal(head(3), b'\xff\xd8\xff')
  is_png = tf.equal(head(8), b'\x89PNG\r\n\x1a\n')
  known = is_jpeg | is_png | tf.equal(head(4), b'GIF8') | tf.equal(head(2), b'BM') | (
      tf.equal(head(4), b'RIFF') & tf.equal(tf.strings.substr(encoded, tf.minimum(n, 8), 4), b'WEBP'))
  tail = tf.io.decode_raw(tf.strings.substr(encoded, tf.maximum(n - 1024, 0), 1024), tf.uint8)
  problems = [  # The first that applies is reported.
      (n == 0, 'empty file'),
      (~known, 'not a JPEG, PNG, GIF, BMP or WebP image'),
      (is_jpeg & ~_tail_contains(tail, b'\xff\xd9'), 'truncated JPEG (no end-of-image marker)'),
      (is_png & ~_tail_contains(tail[-64:], b'IEND'), 'truncated PNG (no IEND chunk)'),
  ]
  problem = tf.constant('')
  for applies, reason in reversed(problems):
    problem = tf.where(applies, reason, problem)
  return problem


def unreadable(record, encoded):
  """'' when the `encoded` bytes of `record`'s image look whole, else 'FILE (image_id N): why' (a string tensor)."""
  problem = integrity_problem(encoded)
  what = tf.strings.join([record['file'], ' (image_id ', tf.strings.as_string(record['image_id']), '): ', problem])
  return tf.where(tf.equal(problem, ''), '', what)


def decode_pixels(encoded):
  """Encoded image bytes (a string tensor) -> uint8 RGB [h, w, 3], the pixels PaddleDetection's `Decode` (OpenCV)
  gets: JPEGs with libjpeg's accurate integer IDCT (TensorFlow's default, the fast one, is up to 7 levels off on
  photos; `decode_image` cannot choose), other formats by `decode_image`. Gray is repeated, alpha dropped, CMYK
  converted."""
  return tf.cond(tf.io.is_jpeg(encoded),
                 lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method='INTEGER_ACCURATE'),
                 lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def decode(record, encoded, skip_bad=False):
  """Canonical example of `record` from its `encoded` bytes -> (example, problem: `unreadable`'s message).

  A damaged image (see `integrity_problem`) raises an error naming the file or, with `skip_bad`, comes back as a
  zero image of the annotated size with its problem for the caller to handle. A decoded size different from
  `orig_size` (the annotation's) is always an error.
  """
  problem = unreadable(record, encoded)
  ok = tf.equal(problem, '')
  checks = [] if skip_bad else [tf.debugging.Assert(ok, [tf.strings.join(['Unreadable image ', problem])])]
  with tf.control_dependencies(checks):
    image = tf.cond(ok, lambda: decode_pixels(encoded),
                    lambda: tf.zeros(tf.concat([record['orig_size'], [3]], 0), tf.uint8))
  size = tf.shape(image)[:2]
  size_msg = tf.strings.join(['Image ', record['file'], ' is ', tf.strings.as_string(size[0]), 'x',
                              tf.strings.as_string(size[1]), ' but its annotation says ',
                              tf.strings.reduce_join(tf.strings.as_string(record['orig_size']), separator='x')])
  with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(tf.equal(size, record['orig_size'])), [size_msg])]):
    image = tf.identity(image)
  example = {k: record[k] for k in ('file', 'image_id', 'orig_size', 'boxes', 'labels')}
  return {**example, 'image': image}, problem


def label_to_category(class_names, categories):
  """The dataset's category id of each of a model's classes, matched by name -> tuple [len(class_names)] of ints,
  -1 where the dataset has no category of that name (a dataset may have fewer; those detections are not scored).

  `class_names`: the model's class names in label order; `categories`: the dataset's COCO category dicts ('id',
  'name'). A dataset category the model does not know, or a name given twice, raises ValueError listing them all.
  """
  names = [str(c.get('name', '')) for c in categories]
  problems = []
  for what, listed in (('model class', list(class_names)), ('dataset category', names)):
    twice = sorted({n for n in listed if listed.count(n) > 1})
    if twice:
      problems.append(f'{what} names given more than once: {_listing(twice)}')
  unknown = [f'{c["id"]} {str(c.get("name", ""))!r}' for c in categories if str(c.get('name', '')) not in class_names]
  if unknown:
    problems.append(f'dataset categories the model does not know ({len(unknown)}): {_listing(unknown)}; the model '
                    f'knows: {_listing(list(class_names), 20)}')
  if problems:
    raise errors.DataError('The dataset\'s categories do not match the model\'s classes by name:\n  '
                           + '\n  '.join(problems))
  category_of = {str(c['name']): c['id'] for c in categories}
  return tuple(int(category_of.get(name, -1)) for name in class_names)
