"""COCO annotation files: their schema checks, the box filters training applies, the model-class <-> category
mapping by name, and quiet pycocotools ground truths. Plain Python and NumPy (no TensorFlow), so that evaluation and
the dataset check use it without the input pipeline.

Boxes follow FCOS's reference: crowd annotations dropped, [x, y, w, h] -> [x, y, x + w, y + h] (no -1), clipped to
the image, boxes with no area dropped.
"""

import contextlib
import io
import json
import os

import numpy as np
from pycocotools import coco as coco_api

from fcos_jax import errors


def split_paths(root, split, images='', annotations=''):
  """(image folder, annotation file) of `split`: `images` and `annotations` where given (relative paths under
  `root`), else the COCO layout, root/{split}/ and root/annotations/instances_{split}.json."""
  annotations = annotations or os.path.join('annotations', f'instances_{split}.json')
  return os.path.join(root, images or split), os.path.join(root, annotations)


def split_layout(data_config) -> dict:
  """{split: (images, annotations)} of the train and val splits of a config's `data` section, as `split_paths`
  takes them ('' for the COCO layout)."""
  d = data_config
  return {d.train_split: (d.train_images, d.train_annotations), d.val_split: (d.val_images, d.val_annotations)}


def clean_boxes(xywh, crowd, height, width):
  """COCO [x, y, w, h] boxes [N, 4] without crowd, empty and clipped-away boxes -> (xyxy [M, 4] float32 clipped to
  the image, kept [N] bool)."""
  xywh = np.asarray(xywh, np.float32).reshape(-1, 4)
  xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
  xyxy = np.clip(xyxy, 0, np.array([width, height, width, height], np.float32))
  kept = ~np.asarray(crowd, bool) & (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
  kept &= (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
  return xyxy[kept], kept


def listing(items, limit=10):
  """'a, b, c, ...': the first `limit` items, for messages."""
  return ', '.join(map(str, items[:limit])) + (', ...' if len(items) > limit else '')


def _require(cond, path, message):
  if not cond:
    raise errors.DataError(f'{path}: {message}')


def _is_json_int(value):
  """An integer as JSON gives it (not a bool, which JSON keeps apart but Python's int includes)."""
  return type(value) is int  # pylint: disable=unidiomatic-typecheck


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
    _require(_is_json_int(img['id']) and isinstance(img['file_name'], str), path,
             f'image entry needs an integer id and a string file_name: {img}')
    _require(img['id'] not in image_ids, path, f'duplicate image id {img["id"]}.')
    h, w = img['height'], img['width']
    _require(_is_json_int(h) and _is_json_int(w) and h > 0 and w > 0, path,
             f'image {img["id"]} has size {h!r}x{w!r} (expected positive integers).')
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


def require_known_references(dataset, path):
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


def quiet_coco(dataset):
  """A pycocotools COCO object over an in-memory annotation dict, without its prints."""
  gt = coco_api.COCO()
  gt.dataset = dataset
  with contextlib.redirect_stdout(io.StringIO()):
    gt.createIndex()
  return gt


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
      problems.append(f'{what} names given more than once: {listing(twice)}')
  unknown = [f'{c["id"]} {str(c.get("name", ""))!r}' for c in categories if str(c.get('name', '')) not in class_names]
  if unknown:
    problems.append(f'dataset categories the model does not know ({len(unknown)}): {listing(unknown)}; the model '
                    f'knows: {listing(list(class_names), 20)}')
  if problems:
    raise errors.DataError('The dataset\'s categories do not match the model\'s classes by name:\n  '
                           + '\n  '.join(problems))
  category_of = {str(c['name']): c['id'] for c in categories}
  return tuple(int(category_of.get(name, -1)) for name in class_names)
