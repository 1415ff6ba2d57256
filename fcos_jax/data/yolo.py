"""Ultralytics YOLO folders read into an in-memory COCO annotation dict, so that they go through the same index,
training input, dataset check and evaluation as a COCO-format folder.

Layout under the root: images in `images/{split}/` (sub-folders included; or the folder the config names), labels
in the same place with the last `images` path component replaced by `labels` (Ultralytics' rule), `NAME.txt` for
`NAME.jpg`: one line per object, `class cx cy w h`, normalised to [0, 1]. Class names: `data.yaml`'s `names` (a
list, or a dict {index: name}), else `classes.txt` (one per line). An image without a label file has no objects
(a background image, as Ultralytics reads it). Image sizes come from the file headers (as stored: EXIF orientation
is not applied, as the decoder does not apply it).

Boxes are x1 = (cx - w / 2) * width, ... in float64, then follow the COCO folder's rules (`annotations.clean_boxes`:
clipped to the image, dropped without area). Category id of class k: k + 1; image id: the position in the sorted
file list + 1. Plain Python (no TensorFlow), like `annotations`.
"""

import os

from PIL import Image
import yaml

from fcos_jax import errors

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')  # What the input pipeline decodes.
MAX_PROBLEMS = 20  # Problems listed in one error.


def image_folder(root, split, images=''):
  """The image folder of `split`: `images` (relative to `root`) when given, else images/{split}."""
  return os.path.join(root, images or os.path.join('images', split))


def label_folder(folder):
  """The label folder of an image folder: its last `images` component replaced by `labels` (Ultralytics' rule);
  the image folder itself when it has none (labels beside the images)."""
  parts = os.path.normpath(folder).split(os.sep)
  if 'images' not in parts:
    return folder
  k = len(parts) - 1 - parts[::-1].index('images')
  return os.sep.join(parts[:k] + ['labels'] + parts[k + 1:])


def split_names(root):
  """The splits of a YOLO folder: the sub-folders of images/."""
  folder = os.path.join(root, 'images')
  if not os.path.isdir(folder):
    return []
  return sorted(f for f in os.listdir(folder) if os.path.isdir(os.path.join(folder, f)))


def class_names(root):
  """The class names of a YOLO folder, from data.yaml's `names` or classes.txt; a DataError naming the file when
  they are unusable, a MissingFileError when neither file is there."""
  path = os.path.join(root, 'data.yaml')
  if os.path.isfile(path):
    try:
      with open(path) as f:
        names = (yaml.safe_load(f) or {}).get('names')
    except (yaml.YAMLError, AttributeError) as e:
      raise errors.DataError(f'{path}: not a YAML mapping ({e}).') from e
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
      names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
      raise errors.DataError(f'{path}: `names` must be a list of class names or a dict {{0: name, 1: name, ...}} '
                             f'(got {names!r}).')
    return [str(n) for n in names]
  path = os.path.join(root, 'classes.txt')
  if os.path.isfile(path):
    with open(path) as f:
      names = [line.strip() for line in f if line.strip()]
    if not names:
      raise errors.DataError(f'{path}: no class names.')
    return names
  raise errors.MissingFileError(f'No class names for the YOLO folder {root}: add {root}/data.yaml with `names` or '
                                f'{root}/classes.txt.')


def _image_files(folder):
  """Image files under `folder` (IMAGE_EXTENSIONS; relative paths, sorted)."""
  return sorted(os.path.relpath(os.path.join(directory, name), folder) for directory, _, files in os.walk(folder)
                for name in files if name.lower().endswith(IMAGE_EXTENSIONS))


def _objects(path, num_classes):
  """The (class, cx, cy, w, h) rows of a label file, or a list of problem strings."""
  rows, problems = [], []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      where = f'{path} line {number}'
      try:
        values = [float(v) for v in fields]
      except ValueError:
        problems.append(f'{where}: not numbers: {line.strip()!r}')
        continue
      if len(values) != 5:
        problems.append(f'{where}: expected 5 numbers "class cx cy w h", got {len(values)}: {line.strip()!r}')
      elif values[0] != int(values[0]) or not 0 <= values[0] < num_classes:
        problems.append(f'{where}: class {fields[0]}, but there are {num_classes} class names (0 to '
                        f'{num_classes - 1})')
      elif not all(0 <= v <= 1 for v in values[1:]):
        problems.append(f'{where}: cx cy w h must be normalised to [0, 1], got {" ".join(fields[1:])}')
      else:
        rows.append((int(values[0]), *values[1:]))
  return problems or rows


def read_split(root, split, images=''):
  """The split of a YOLO folder as (COCO annotation dict, label folder, notes).

  Image `file_name`s are relative to the split's image folder (`image_folder`). `notes`: (kind, message) findings
  as in `fcos_jax.data.check`: 'no_label_file' per image without one, 'unreadable' per image whose header Pillow
  cannot read (left out of the dict: a source stops on them unless data.skip_bad_images). Every bad label line: one
  DataError listing them, one line each.
  """
  folder = image_folder(root, split, images)
  labels = label_folder(folder)
  if not os.path.isdir(folder):
    raise errors.MissingFileError(f'No image folder {folder} (YOLO folder {root}, split {split!r}).')
  names = class_names(root)
  files = _image_files(folder)
  if not files:
    raise errors.DataError(f'{folder}: no images ({", ".join(IMAGE_EXTENSIONS)}).')
  images_, anns, notes, problems = [], [], [], []
  for i, file in enumerate(files):
    try:
      with Image.open(os.path.join(folder, file)) as opened:
        w, h = opened.size
    except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types for bad files)
      notes.append(('unreadable', f'{os.path.join(folder, file)}: {type(e).__name__}: {e}'))
      continue
    images_.append({'id': i + 1, 'file_name': file, 'height': h, 'width': w})
    label = os.path.join(labels, os.path.splitext(file)[0] + '.txt')
    if not os.path.isfile(label):
      notes.append(('no_label_file', f'{os.path.join(folder, file)}: no {label}'))
      continue
    rows = _objects(label, len(names))
    if rows and isinstance(rows[0], str):
      problems += rows
      continue
    for k, cx, cy, bw, bh in rows:
      x1, y1 = (cx - bw / 2) * w, (cy - bh / 2) * h
      box = [x1, y1, (cx + bw / 2) * w - x1, (cy + bh / 2) * h - y1]
      anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': k + 1, 'bbox': box,
                   'area': box[2] * box[3], 'iscrowd': 0})
  if problems:
    more = f'\n  ... and {len(problems) - MAX_PROBLEMS} more' if len(problems) > MAX_PROBLEMS else ''
    raise errors.DataError(f'YOLO split {split!r} ({labels}): {len(problems)} problem(s):\n  '
                           + '\n  '.join(problems[:MAX_PROBLEMS]) + more)
  categories = [{'id': k + 1, 'name': name} for k, name in enumerate(names)]
  return {'images': images_, 'annotations': anns, 'categories': categories}, labels, notes
