"""Pascal VOC folders read as PaddleDetection's `VOCDataSet` reads them, into an in-memory COCO annotation dict, so
that they go through the same index, training input, dataset check and evaluation as a COCO-format folder.

Layout under the root: a split file listing the images, one per line, either an ID (`Annotations/ID.xml`, image
`JPEGImages/ID.jpg`, or `JPEGImages/` + the XML's `<filename>` when that is absent) or PaddleDetection's
`image_path annotation_path` (both relative to the root). The split file is `ImageSets/Main/{split}.txt`, else
`{split}.txt` (PaddleDetection's list), or the one the config names. Class names, in label order: `labels.txt` or
`label_list.txt` (one per line), else the sorted names found in the split's XML.

PaddleDetection's rules: coordinates as written (no -1 shift), clipped to [0, width - 1] x [0, height - 1] of the
XML's `<size>`; a box without area after clipping is dropped. `difficult` objects are trained on like the others
and kept in the ground truth with `difficult: 1`; the VOC mAP ignores them (`fcos_jax.voc_map`), the COCO metrics
count them. Category id of label i: i + 1; image id: the line's position + 1.
Plain Python (no TensorFlow), like `annotations`.
"""

import os
import xml.etree.ElementTree as ET

from PIL import Image

from fcos_jax import errors
from fcos_jax.data import annotations

LABEL_FILES = ('labels.txt', 'label_list.txt')
MAX_PROBLEMS = 20  # Problems listed in one error.


def label_file(root):
  """The class-name file of a VOC folder, None without one."""
  return next((os.path.join(root, f) for f in LABEL_FILES if os.path.isfile(os.path.join(root, f))), None)


def read_names(path):
  """Class names of a one-per-line file (blank lines skipped); a name given twice is a DataError."""
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise errors.DataError(f'{path}: class names given more than once: {annotations.listing(twice)}')
  if not names:
    raise errors.DataError(f'{path}: no class names.')
  return names


def split_file(root, split, listed=''):
  """The split file of `split`: `listed` (relative to `root`) when given, else ImageSets/Main/{split}.txt, else
  {split}.txt; a MissingFileError naming them when none exists."""
  candidates = [listed] if listed else [os.path.join('ImageSets', 'Main', f'{split}.txt'), f'{split}.txt']
  for candidate in candidates:
    if os.path.isfile(os.path.join(root, candidate)):
      return os.path.join(root, candidate)
  raise errors.MissingFileError(f'No split file {" or ".join(os.path.join(root, c) for c in candidates)} '
                                f'(Pascal VOC folder {root}, split {split!r}).')


def split_names(root):
  """The splits a VOC folder lists: the stems of ImageSets/Main/*.txt without the per-class ones
  (CLASS_SPLIT.txt), else the root's *.txt besides the class-name files (PaddleDetection's lists)."""
  folder = os.path.join(root, 'ImageSets', 'Main')
  stems = {f[:-4] for f in os.listdir(folder) if f.endswith('.txt')} if os.path.isdir(folder) else set()
  if stems:
    return sorted(s for s in stems if not any(s.endswith('_' + other) for other in stems))
  return sorted(f[:-4] for f in os.listdir(root) if f.endswith('.txt') and f not in LABEL_FILES) if os.path.isdir(
      root) else []


def _entries(root, path):
  """(image path or None for an ID line, XML path) of each line of the split file `path`, and the problems."""
  entries, problems = [], []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      fields = line.split()
      if len(fields) == 1:
        entries.append((None, os.path.join(root, 'Annotations', f'{fields[0]}.xml')))
      elif len(fields) == 2:
        entries.append((os.path.join(root, fields[0]), os.path.join(root, fields[1])))
      elif fields:
        problems.append(f'{path} line {number}: expected an image ID or "image_path annotation_path", got '
                        f'{len(fields)} fields')
  if not entries and not problems:
    problems.append(f'{path}: no images listed (empty split file)')
  return entries, problems


def _number(element, tag):
  """float of the child `tag` of `element`, None if absent or not a number."""
  text = element.findtext(tag) if element is not None else None
  try:
    return float(text)
  except (TypeError, ValueError):
    return None


def _parse(root, xml_path, image, image_id):
  """One XML file -> (image entry, its objects as (name, xmin, ymin, xmax, ymax, difficult)), or a problem string.
  `image`: the image file, None for an ID line (JPEGImages/ID.jpg, else JPEGImages/ + the XML's <filename>)."""
  if not os.path.isfile(xml_path):
    return f'{xml_path}: no annotation file'
  try:
    tree = ET.parse(xml_path)
  except ET.ParseError as e:
    return f'{xml_path}: malformed XML ({e})'
  if image is None:
    image = os.path.join(root, 'JPEGImages', os.path.basename(xml_path)[:-len('.xml')] + '.jpg')
    named = (tree.findtext('filename') or '').strip()
    if named and not os.path.exists(image):
      image = os.path.join(root, 'JPEGImages', named)
  objects = []
  for k, obj in enumerate(tree.findall('object'), 1):
    name = (obj.findtext('name') or '').strip()
    box = [_number(obj.find('bndbox'), tag) for tag in ('xmin', 'ymin', 'xmax', 'ymax')]
    difficult = (obj.findtext('difficult') or '0').strip()
    if not name or None in box or difficult not in ('0', '1'):
      return (f'{xml_path}: object {k} needs a <name>, a <bndbox> with numeric xmin, ymin, xmax, ymax, and '
              '<difficult> 0 or 1 if any')
    objects.append((name, *box, int(difficult)))
  size = tree.find('size')
  w, h = _number(size, 'width'), _number(size, 'height')
  if (w is None or h is None or w <= 0 or h <= 0) and os.path.isfile(image):
    try:
      with Image.open(image) as opened:
        w, h = opened.size  # No usable <size>: the file's header says it.
    except Exception:  # pylint: disable=broad-except  (Pillow raises many types; the check reports the file)
      pass
  if w is None or h is None or w <= 0 or h <= 0 or w != int(w) or h != int(h):
    return f'{xml_path}: <size> needs positive integer width and height (got {w}x{h})'
  return {'id': image_id, 'file_name': os.path.relpath(image, root), 'height': int(h), 'width': int(w)}, objects


def read_split(root, split, listed=''):
  """The split of a VOC folder as (COCO annotation dict, split file path, notes).

  Image `file_name`s are relative to `root`. `notes`: (kind,
  message) findings of the box rules, kinds as in `fcos_jax.data.check` ('box_outside', 'degenerate_box'). Every
  malformed or missing XML, object without a box, unknown class name, bad line of the split file: one DataError
  listing them, one line each.
  """
  path = split_file(root, split, listed)
  entries, problems = _entries(root, path)
  names_file = label_file(root)
  names = read_names(names_file) if names_file else None
  parsed = []
  for i, (image, xml_path) in enumerate(entries):
    result = _parse(root, xml_path, image, i + 1)
    if isinstance(result, str):
      problems.append(result)
    else:
      parsed.append((xml_path, *result))
  if names is None:
    names = sorted({obj[0] for _, _, objects in parsed for obj in objects})
  category_of = {name: i + 1 for i, name in enumerate(names)}
  images, anns, notes = [], [], []
  for xml_path, img, objects in parsed:
    images.append(img)
    w, h = img['width'], img['height']
    for k, (name, x1, y1, x2, y2, difficult) in enumerate(objects, 1):
      if name not in category_of:
        problems.append(f'{xml_path}: object {k} names class {name!r}, which {os.path.basename(names_file)} does '
                        f'not list ({annotations.listing(names, 20)})')
        continue
      where = f'{xml_path}: object {k} ({name}) box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]'
      clipped = max(0., x1), max(0., y1), min(w - 1., x2), min(h - 1., y2)
      kept = clipped[2] > clipped[0] and clipped[3] > clipped[1]
      if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
        notes.append(('box_outside', f'{where} in a {w}x{h} image{"" if kept else ", dropped"}'))
      elif not kept:
        notes.append(('degenerate_box', where))
      if kept:
        x1, y1, x2, y2 = clipped
        anns.append({'id': len(anns) + 1, 'image_id': img['id'], 'category_id': category_of[name],
                     'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1), 'iscrowd': 0,
                     'difficult': difficult})
  if problems:
    more = f'\n  ... and {len(problems) - MAX_PROBLEMS} more' if len(problems) > MAX_PROBLEMS else ''
    raise errors.DataError(f'Pascal VOC split {split!r} ({path}): {len(problems)} problem(s):\n  '
                           + '\n  '.join(problems[:MAX_PROBLEMS]) + more)
  if not names:
    raise errors.DataError(f'{path}: no objects in the split and no {" or ".join(LABEL_FILES)} in {root} to name '
                           'the classes.')
  categories = [{'id': i + 1, 'name': name} for i, name in enumerate(names)]
  return {'images': images, 'annotations': anns, 'categories': categories}, path, notes
