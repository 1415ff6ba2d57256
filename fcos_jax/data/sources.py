"""Sources of images and boxes: a COCO-format folder, a Pascal VOC or YOLO folder (read into the same COCO
annotation dict: `voc`, `yolo`), or TFDS `coco/2017`.

Every source gives, per split, an `Index` (everything but pixels), a tf.data stream of records (one per image) and a
`pycocotools.coco.COCO` ground truth for evaluation. A record holds `file` (string, for messages), `image_id` int32,
`orig_size` int32 [2] (h, w), `boxes` float32 [N, 4] and `labels` int32 [N]; `source.read(record)` gives its encoded
bytes and `decoding.decode` the canonical example, which adds `image` uint8 [h, w, 3] (RGB).

Boxes pass `annotations.clean_boxes`. Label = position of the category id in the sorted category ids of the split.
A source parses its annotations once and keeps them: build one per run (`make_source`) and pass it on.
"""

import collections
import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from fcos_jax import errors
from fcos_jax.data import annotations, voc, yolo
from fcos_jax.data.categories import COCO_CATEGORY_IDS  # TFDS label i is the i-th of them.

_TFDS_SPLITS = {'train2017': 'train', 'val2017': 'validation'}  # COCO folder names -> TFDS split names.


def make_source(config):
  """The data source named by `config.data` (checked by `config.validate`): a `FolderSource` (or its VOC / YOLO
  kind) or a `TfdsSource`."""
  d = config.data
  if d.source == 'tfds':
    return TfdsSource(d.tfds_name, d.tfds_data_dir)
  return FOLDER_KINDS[d.source](d.root, skip_bad_images=d.skip_bad_images, layout=annotations.split_layout(d))


def detect_layout(root):
  """The `data.source` of the folder `root` by what it holds: 'voc' (Annotations/, ImageSets/ or a class-name
  file), 'yolo' (images/ beside labels/, data.yaml or classes.txt), else 'folder' (COCO)."""
  has = lambda name: os.path.exists(os.path.join(root, name))  # noqa: E731
  if has('annotations') or not os.path.isdir(root):
    return 'folder'
  if has('Annotations') or has('ImageSets') or any(has(f) for f in voc.LABEL_FILES):
    return 'voc'
  if has('images') and (has('labels') or has('data.yaml') or has('classes.txt')):
    return 'yolo'
  return 'folder'


@dataclasses.dataclass(frozen=True)
class Index:
  """Metadata of the images of one split, in the order of `records`; row i is image i."""
  files: np.ndarray  # [N] str: image paths (folder) or file names (TFDS).
  image_ids: np.ndarray  # [N] int64.
  sizes: np.ndarray  # [N, 2] int32 (h, w).
  boxes: tuple  # N arrays [n_i, 4] float32, xyxy pixels after `annotations.clean_boxes`.
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


class FolderSource:
  """COCO-format annotation files and image folders; image paths are the folder joined with each `file_name`
  (sub-folders included). `layout` maps a split to its (images, annotations) paths as `split_paths` takes them;
  other splits use the COCO layout under `root`."""

  def __init__(self, root, skip_bad_images=False, layout=None):
    self.root = root
    self.skip_bad_images = skip_bad_images
    self.layout = dict(layout or {})
    self._splits = {}

  def read_dataset(self, split):
    """(COCO annotation dict of `split`, its structure validated; notes: (kind, message) findings made while
    reading it, kinds as in `fcos_jax.data.check`)."""
    return annotations.load_annotations(self.annotation_path(split)), []

  def _load(self, split):
    """Parses and validates the annotations of `split` once; returns (COCO, Index, category ids, missing files)."""
    if split in self._splits:
      return self._splits[split]
    path = self.annotation_path(split)
    dataset, notes = self.read_dataset(split)
    annotations.require_known_references(dataset, path)
    _report_notes(path, notes, self.skip_bad_images)
    gt = annotations.quiet_coco(dataset)
    category_ids = tuple(sorted(gt.cats))
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    files, ids, sizes, boxes, labels, missing, dropped = [], [], [], [], [], [], []
    for img in dataset['images']:
      file = self.image_path(split, img['file_name'])
      if not os.path.exists(file):
        missing.append((file, img['id']))
        continue
      anns = gt.imgToAnns[img['id']]
      xyxy, kept = annotations.clean_boxes([a['bbox'] for a in anns], [a.get('iscrowd', 0) for a in anns],
                                           img['height'], img['width'])
      dropped += [a['id'] for a, k in zip(anns, kept) if not k and not a.get('iscrowd', 0)]
      files.append(file)
      ids.append(img['id'])
      sizes.append((img['height'], img['width']))
      boxes.append(xyxy)
      labels.append(np.array([label_of[a['category_id']] for a, k in zip(anns, kept) if k], np.int32))
    names = [file for file, _ in missing]
    if missing and not self.skip_bad_images:
      raise errors.MissingFileError(f'{path}: {len(missing)} image file(s) missing: {annotations.listing(names)}')
    if missing:
      logging.warning('%s: skipping %d missing image file(s): %s', path, len(missing), annotations.listing(names))
    if dropped:
      logging.warning('%s: dropped %d box(es) with no area (w <= 0 or h <= 0, or outside the image): annotation '
                      'ids %s', path, len(dropped), annotations.listing(dropped))
    if not files:
      raise errors.DataError(f'{path}: no readable images.')
    index = Index(np.array(files), np.array(ids, np.int64), np.array(sizes, np.int32).reshape(-1, 2),
                  tuple(boxes), tuple(labels))
    self._splits[split] = gt, index, category_ids, tuple(missing)
    return self._splits[split]

  def annotation_path(self, split):
    """The COCO json of `split`."""
    return annotations.split_paths(self.root, split, *self.layout.get(split, ('', '')))[1]

  def image_path(self, split, file_name):
    """The file of an image of `split`, from its json `file_name`."""
    return os.path.join(annotations.split_paths(self.root, split, *self.layout.get(split, ('', '')))[0], file_name)

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


def _report_notes(path, notes, skip_bad_images):
  """Logs the findings of reading a VOC or YOLO split, one warning per kind; unreadable images stop it unless
  skipped (data.skip_bad_images)."""
  by_kind = collections.defaultdict(list)
  for kind, message in notes:
    by_kind[kind].append(message)
  unreadable = by_kind.pop('unreadable', [])
  if unreadable and not skip_bad_images:
    raise errors.DataError(f'{path}: {len(unreadable)} unreadable image(s) (data.skip_bad_images=true skips them): '
                           f'{annotations.listing(unreadable, 3)}')
  if unreadable:
    logging.warning('%s: skipping %d unreadable image(s): %s', path, len(unreadable), annotations.listing(unreadable))
  for kind, messages in by_kind.items():
    logging.warning('%s: %d %s: %s', path, len(messages), _NOTE_TITLES[kind], annotations.listing(messages, 3))


_NOTE_TITLES = {'box_outside': 'box(es) reaching outside the image (clipped, dropped if nothing remains)',
                'degenerate_box': 'box(es) without area (dropped)',
                'no_label_file': 'image(s) without a label file (no objects)'}


class VocSource(FolderSource):
  """A Pascal VOC folder at `root` (see `voc`); `layout` {split: (images, split file)}: the split file relative to
  `root` where given (images: unused)."""

  def read_dataset(self, split):
    dataset, _, notes = voc.read_split(self.root, split, self.layout.get(split, ('', ''))[1])
    return dataset, notes

  def annotation_path(self, split):
    """The split file of `split`."""
    return voc.split_file(self.root, split, self.layout.get(split, ('', ''))[1])

  def image_path(self, split, file_name):
    del split
    return os.path.join(self.root, file_name)


class YoloSource(FolderSource):
  """An Ultralytics YOLO folder at `root` (see `yolo`); `layout` {split: (image folder, _)}: the image folder
  relative to `root` where given (its labels: Ultralytics' rule)."""

  def read_dataset(self, split):
    dataset, _, notes = yolo.read_split(self.root, split, self.layout.get(split, ('', ''))[0])
    return dataset, notes

  def annotation_path(self, split):
    """The label folder of `split`."""
    return yolo.label_folder(self._images(split))

  def image_path(self, split, file_name):
    return os.path.join(self._images(split), file_name)

  def _images(self, split):
    return yolo.image_folder(self.root, split, self.layout.get(split, ('', ''))[0])


FOLDER_KINDS = {'folder': FolderSource, 'voc': VocSource, 'yolo': YoloSource}  # data.source -> its class.


class TfdsSource:
  """TFDS `coco/2017` (or any dataset with its features) prepared in `data_dir`; never downloads."""

  def __init__(self, name, data_dir):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (only for this source: slow to import)
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
    images, anns, files, ids, sizes, boxes, labels = [], [], [], [], [], [], []
    for ex in self._raw(self._split_name(split)).as_numpy_iterator():
      h, w = (int(v) for v in ex['orig_size'])
      objects = ex['objects']
      ymin, xmin, ymax, xmax = objects['bbox'].T
      xywh = np.stack([xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h], axis=1)
      image_id = int(ex['image/id'])
      images.append({'id': image_id, 'file_name': ex['image/filename'].decode(), 'height': h, 'width': w})
      for box, label, crowd, area in zip(xywh, objects['label'], objects['is_crowd'], objects['area']):
        anns.append({'id': len(anns) + 1, 'image_id': image_id, 'bbox': [float(v) for v in box],
                     'category_id': COCO_CATEGORY_IDS[label], 'iscrowd': int(crowd),
                     'area': float(area)})  # The mask area, which COCOeval's size ranges use.
      xyxy, kept = annotations.clean_boxes(xywh, objects['is_crowd'], h, w)
      files.append(images[-1]['file_name'])
      ids.append(image_id)
      sizes.append((h, w))
      boxes.append(xyxy)
      labels.append(objects['label'][kept].astype(np.int32))
    names = self.builder.info.features['objects']['label'].names
    categories = [{'id': cid, 'name': name} for cid, name in zip(COCO_CATEGORY_IDS, names)]
    gt = annotations.quiet_coco({'images': images, 'annotations': anns, 'categories': categories})
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
