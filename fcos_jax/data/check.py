"""Dataset check: reads a split's annotations (a COCO-format, Pascal VOC or YOLO folder) and every image header and
prints what a user should know before a long run; exits non-zero when something would stop training.

    fcos-check-data ROOT [--split train2017 ...]       # default: every split of ROOT (layout detected)
    fcos-check-data --config=r50_1x --config.data.root=/data/coco   # the config's train and val splits

Images are opened lazily with Pillow (header only: size, mode, EXIF orientation) by a thread pool; their first and
last bytes go through the input pipeline's own integrity check (`decoding.integrity_problem`), so a file reported
readable here passes the same test in training. Pixels are not decoded: damage inside a file that keeps its
structure is found only by the decoder.
"""

import collections
import concurrent.futures
import dataclasses
import os
import sys
import time
from typing import NamedTuple

import numpy as np
from PIL import Image
import tensorflow as tf

from fcos_jax import config as config_lib
from fcos_jax import errors
from fcos_jax.data import annotations, decoding, sources, synthetic

_HEAD, _TAIL = 16, 1024  # Bytes that `decoding.integrity_problem` looks at: the format magic and the end markers.
_CHUNK = 4096  # Images inspected per round (bounds the memory of the byte snippets).
_EXIF_ORIENTATION = 0x0112
_ROTATED_90 = (5, 6, 7, 8)  # EXIF orientations that swap width and height.


@dataclasses.dataclass(frozen=True)
class Kind:
  """A kind of finding: `fatal` ones stop training."""
  key: str
  title: str
  fatal: bool


KINDS = (
    Kind('missing', 'missing image files', True),
    Kind('unreadable', 'unreadable or truncated images', True),
    Kind('size_mismatch', 'image size in the json differs from the file', True),
    Kind('unknown_image', 'annotations naming an image id the json does not define', True),
    Kind('unknown_category', 'annotations naming a category id the json does not define', True),
    Kind('exif_rotated', 'EXIF-rotated images (orientation != 1): decoded as stored, not rotated (PaddleDetection '
         "rotates them: OpenCV's decode applies the orientation)", False),
    Kind('grayscale', 'grayscale images: decoded to 3 equal channels', False),
    Kind('cmyk', 'CMYK images: converted to RGB', False),
    Kind('alpha', 'images with transparency: the alpha channel is dropped', False),
    Kind('palette', 'palette images: expanded to RGB', False),
    Kind('degenerate_box', 'boxes without area (w <= 0 or h <= 0): dropped', False),
    Kind('box_outside', 'boxes reaching outside the image: clipped, dropped if nothing remains', False),
    Kind('crowd_box', 'crowd boxes: ignored in training', False),
    Kind('no_boxes', 'images without usable boxes: skipped in training, kept in evaluation', False),
    Kind('no_label_file', 'images without a label file: no objects (YOLO background images)', False),
)


class DatasetProblems(errors.ConfigError):
  """Raised by `stop_on_problems` after it printed the report; the message names the splits and counts. A
  ConfigError: the commands print it as a user error, one line under the report, without a traceback."""


@dataclasses.dataclass
class Report:
  """What the check found in one split. `findings[kind]` lists one line per image or annotation;
  `categories` rows are (id, name, images, boxes, crowd boxes), boxes counting those training uses."""
  split: str
  annotation_path: str
  num_images: int = 0
  num_annotations: int = 0
  findings: dict = dataclasses.field(default_factory=lambda: {k.key: [] for k in KINDS})
  categories: list = dataclasses.field(default_factory=list)

  def add(self, kind, what):
    self.findings[kind].append(what)

  @property
  def fatal(self):
    """Number of findings that would stop training."""
    return sum(len(self.findings[k.key]) for k in KINDS if k.fatal)

  def format(self, examples=5):
    """The report as a table: findings (with up to `examples` names each), then per-category counts."""
    lines = [f'== split {self.split}: {self.annotation_path}',
             f'   {self.num_images} images, {self.num_annotations} annotations, {len(self.categories)} categories']
    for fatal, heading in ((True, 'Problems that stop training'), (False, 'Warnings')):
      rows = [(k, self.findings[k.key]) for k in KINDS if k.fatal == fatal and self.findings[k.key]]
      lines.append(f'   {heading}: {"none" if not rows else ""}'.rstrip())
      for kind, items in rows:
        lines.append(f'   {len(items):>8}  {kind.title}')
        lines += [f'{"":>13}{item}' for item in items[:examples]]
        if len(items) > examples:
          lines.append(f'{"":>13}... and {len(items) - examples} more')
    width = max([len('name')] + [len(str(name)) for _, name, *_ in self.categories])
    lines.append(f'   {"id":>6}  {"name":<{width}}  {"images":>8}  {"boxes":>9}  {"crowd":>7}')
    for cid, name, images, boxes, crowd in self.categories:
      lines.append(f'   {cid:>6}  {name:<{width}}  {images:>8}  {boxes:>9}  {crowd:>7}')
    verdict = (f'FAILED: {self.fatal} problem(s) would stop training' if self.fatal else
               'OK: nothing stops training')
    lines.append(f'   {verdict}')
    return '\n'.join(lines)


class Header(NamedTuple):
  """What the check reads of one image file."""
  size: tuple  # (h, w), None if Pillow could not open the file.
  mode: str  # Pillow's mode: 'RGB', 'L', 'CMYK', 'RGBA', 'P', ...
  transparent: bool  # A transparency entry besides the mode (palette or grey PNGs).
  orientation: int  # EXIF orientation, 1 when absent.
  snippet: bytes  # The first `_HEAD` and last `_TAIL` bytes (the whole file when smaller).
  error: str  # Why the file could not be read or opened; '' when it could.


def _read_header(path):
  """The `Header` of the image file `path`, None if the file does not exist."""
  try:
    with open(path, 'rb') as f:
      length = f.seek(0, os.SEEK_END)
      f.seek(0)
      if length <= _HEAD + _TAIL:
        snippet = f.read()
      else:
        head = f.read(_HEAD)
        f.seek(length - _TAIL)
        snippet = head + f.read()
  except FileNotFoundError:
    return None
  except OSError as e:
    return Header(None, '', False, 1, b'', f'cannot read: {e}')
  try:
    with Image.open(path) as image:
      orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
      transparent = 'transparency' in image.info
      return Header((image.size[1], image.size[0]), image.mode, transparent, orientation, snippet, '')
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types for bad files; all are reported)
    return Header(None, '', False, 1, snippet, f'{type(e).__name__}: {e}')


def _integrity_problems(snippets):
  """`decoding.integrity_problem` of each byte snippet (a list of bytes) -> list of str ('' for whole files)."""
  if not snippets:
    return []
  dataset = tf.data.Dataset.from_tensor_slices(tf.constant(snippets, tf.string))
  dataset = dataset.map(decoding.integrity_problem, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  return [p.decode() for batch in dataset.as_numpy_iterator() for p in batch]


def _check_image(report, img, path, header, problem):
  """Adds the findings of one image (json entry `img`, its file `path`) from its `Header` (None: missing) and
  `problem` (`decoding.integrity_problem` of its snippet)."""
  where = f'{path} (image_id {img["id"]})'
  if header is None:
    report.add('missing', where)
    return
  if header.error or problem:
    report.add('unreadable', f'{where}: {problem or header.error}')
    return
  size, mode, orientation = header.size, header.mode, header.orientation
  expected = (img['height'], img['width'])
  if size != expected:
    note = ''
    if orientation in _ROTATED_90 and size[::-1] == expected:
      note = '; the json has the EXIF-rotated size, training decodes the stored pixels'
    report.add('size_mismatch', f'{where}: file {size[1]}x{size[0]}, json {expected[1]}x{expected[0]} (width x '
               f'height){note}')
  if orientation != 1:
    report.add('exif_rotated', f'{where}: orientation {orientation}')
  if mode in ('1', 'L', 'LA', 'F') or mode.startswith('I'):
    report.add('grayscale', f'{where}: mode {mode}')
  if mode == 'CMYK':
    report.add('cmyk', where)
  if mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or header.transparent:
    report.add('alpha', f'{where}: mode {mode}')
  if mode in ('P', 'PA'):
    report.add('palette', where)


def _check_boxes(report, dataset):
  """Box findings and per-category counts, with the filters training applies (`annotations.clean_boxes`)."""
  images = {img['id']: img for img in dataset['images']}
  names = {cat['id']: str(cat.get('name', cat['id'])) for cat in dataset['categories']}
  by_image = collections.defaultdict(list)
  unknown = set()
  for ann, key in annotations.unknown_references(dataset):
    report.add(f'unknown_{key[:-3]}', f'annotation {ann["id"]}: {key} {ann[key]}')
    unknown.add(id(ann))
  for ann in dataset['annotations']:
    if id(ann) not in unknown:
      by_image[ann['image_id']].append(ann)
  counts = {cid: [set(), 0, 0] for cid in names}  # category -> [image ids, boxes, crowd boxes]
  for image_id, img in images.items():
    anns = by_image[image_id]
    xywh = np.array([a['bbox'] for a in anns], np.float64).reshape(-1, 4)
    crowd = np.array([bool(a.get('iscrowd', 0)) for a in anns], bool)
    _, kept = annotations.clean_boxes(xywh, crowd, img['height'], img['width'])
    degenerate = ~crowd & ((xywh[:, 2] <= 0) | (xywh[:, 3] <= 0))
    outside = ~crowd & ~degenerate & ((xywh[:, 0] < 0) | (xywh[:, 1] < 0) | (xywh[:, 0] + xywh[:, 2] > img['width'])
                                      | (xywh[:, 1] + xywh[:, 3] > img['height']))
    for i, ann in enumerate(anns):
      where = f'annotation {ann["id"]} (image_id {image_id}): bbox {ann["bbox"]}'
      if degenerate[i]:
        report.add('degenerate_box', where)
      if outside[i]:
        dropped = '' if kept[i] else ', dropped'
        report.add('box_outside', f'{where} in a {img["width"]}x{img["height"]} image{dropped}')
      if crowd[i]:
        report.add('crowd_box', where)
        counts[ann['category_id']][2] += 1
      if kept[i]:
        counts[ann['category_id']][0].add(image_id)
        counts[ann['category_id']][1] += 1
    if not kept.any():
      report.add('no_boxes', f'{img["file_name"]} (image_id {image_id})')
  report.categories = [(cid, names[cid], len(c[0]), c[1], c[2]) for cid, c in sorted(counts.items())]


def check_split(source, split, threads=16, progress=None):
  """The `Report` of `split` of a `sources.FolderSource` (COCO, VOC or YOLO). The annotations must be readable (a
  valid json structure, well-formed XML or label files: else a DataError naming each problem); everything else is
  reported. `progress`: a file for progress lines on long checks."""
  path = source.annotation_path(split)
  dataset, notes = source.read_dataset(split)
  report = Report(split, path, len(dataset['images']), len(dataset['annotations']))
  for kind, message in notes:  # What reading VOC or YOLO annotations found (VOC boxes are clipped as read).
    report.add(kind, message)
  _check_boxes(report, dataset)
  entries = dataset['images']
  started = last = time.monotonic()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for start in range(0, len(entries), _CHUNK):
      chunk = entries[start:start + _CHUNK]
      paths = [source.image_path(split, img['file_name']) for img in chunk]
      headers = list(pool.map(_read_header, paths))
      opened = [h is not None and not h.error for h in headers]
      problems = iter(_integrity_problems([h.snippet for h, ok in zip(headers, opened) if ok]))
      for img, file, header, ok in zip(chunk, paths, headers, opened):
        problem = next(problems) if ok else ''
        _check_image(report, img, file, header, problem)
      if progress is not None and time.monotonic() - last > 5:
        last = time.monotonic()
        print(f'  {split}: {start + len(chunk)}/{len(entries)} images checked ({last - started:.0f} s)',
              file=progress, flush=True)
  return report


def config_splits(config):
  """The (source, splits) a training run of `config` reads: its train split, and its val split when it evaluates.
  Generates the synthetic dataset first when the config asks for it (as training would)."""
  if config.data.source not in config_lib.FOLDER_SOURCES:
    raise errors.ConfigError(f'The dataset check reads folders (COCO-format, VOC, YOLO); data.source is '
                           f'{config.data.source!r}.')
  splits = [config.data.train_split]
  if config.train.final_eval or config.train.eval_every:
    splits.append(config.data.val_split)
  synthetic.ensure(config)
  return sources.make_source(config), list(dict.fromkeys(splits))


def stop_on_problems(config, out=None, quiet=False):
  """Checks the splits a training run of `config` reads, prints the reports and progress to `out` (default: stdout;
  nothing if `quiet`, as on every process of a run but the first), and raises DatasetProblems if anything would stop
  training."""
  out = None if quiet else out or sys.stdout
  source, splits = config_splits(config)
  reports = [check_split(source, split, progress=out) for split in splits]
  if out is not None:
    print('\n'.join(r.format() for r in reports), file=out, flush=True)
  fatal = {r.split: r.fatal for r in reports if r.fatal}
  if fatal:
    raise DatasetProblems(f'data.check_first: problems that would stop training (see the report above) in split(s) '
                          f'{", ".join(f"{split} ({n})" for split, n in fatal.items())}.')
