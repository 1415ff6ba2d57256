"""tf.data assembly: training and evaluation batches per process and canvas buckets.

Batch contract (NumPy dicts; B = batch size per process, G = data.max_boxes, (H, W) one canvas per batch):
  image [B, H, W, 3] uint8 (zero padded), boxes [B, G, 4] float32 xyxy canvas pixels (padded slots zero),
  labels [B, G] int32 (padded -1), valid [B, G] bool, image_id [B] int32, scale [B, 2] float32 (sy, sx),
  orig_size [B, 2] int32 (h, w), size [B, 2] int32 (resized h, w); evaluation adds mask [B] bool (an image to
  predict on) and unreadable [B] bool (an image of the split that could not be read: no predictions, but counted).
When the device resizes (data.resize_on, see fcos_jax.resize.side) the host only decodes: image is [B, h_s, w_s, 3],
each decoded image as it is at the top left, zero padded to the largest original size of the bucket
(`source_canvases`), and the batch adds flip [B] bool and canvas [B, 2] int32 (H, W); everything else is as above,
and fcos_jax.resize makes the canvases.

Every step, all processes yield the same canvas: buckets are drawn from one seeded schedule (training) or come in a
fixed order with the same number of batches per process (evaluation), so the global batch has one shape.
"""

import dataclasses
import logging
import math
import os
import queue
import re
import threading
import time

import numpy as np
import tensorflow as tf

from fcos_jax import config as config_lib
from fcos_jax import resize
from fcos_jax.data import coco
from fcos_jax.data import synthetic
from fcos_jax.data import transforms

_ESTIMATE_IMAGES = 1000  # Images whose orientation estimates the bucket mix of a TFDS training split.
_SOURCES = {}  # Sources by their config, so that periodic evaluations parse the json / scan TFDS only once.


def make_source(config):
  """The data source named by `config.data` (checked by `config.validate`); generates the synthetic dataset first
  when asked and missing."""
  d = config.data
  if d.source == 'tfds':
    key = ('tfds', d.tfds_name, d.tfds_data_dir)
    if key not in _SOURCES:
      _SOURCES[key] = coco.TfdsSource(d.tfds_name, d.tfds_data_dir)
    return _SOURCES[key]
  layout = {d.train_split: (d.train_images, d.train_annotations), d.val_split: (d.val_images, d.val_annotations)}
  jsons = [coco.split_paths(d.root, split, *paths)[1] for split, paths in layout.items()]
  if d.generate_synthetic and not all(os.path.exists(path) for path in jsons):
    logging.info('Generating the synthetic dataset in %s', d.root)
    synthetic.generate(d.root, seed=config.seed)
  key = ('folder', os.path.abspath(d.root), d.skip_bad_images, tuple(sorted(layout.items())))
  if key not in _SOURCES:
    _SOURCES[key] = coco.FolderSource(d.root, skip_bad_images=d.skip_bad_images, layout=layout)
  return _SOURCES[key]


_SUMMARY_FILES = 5  # Files named in a summary of the skipped ones.


@dataclasses.dataclass
class InputStats:
  """What the input dropped instead of failing, so training and evaluation can report it."""
  images_over_max_boxes: int = 0  # Images with more GT boxes than data.max_boxes.
  dropped_boxes: int = 0  # Their smallest boxes, dropped.
  skipped: dict = dataclasses.field(default_factory=dict)  # 'FILE (image_id N): why' -> None, in order seen.

  @property
  def skipped_images(self):
    """Unreadable or missing images skipped (data.skip_bad_images), each counted once however often it came."""
    return len(self.skipped)

  def skip(self, messages, warn=True):
    """Counts the images of `messages` ('FILE (image_id N): why'; '' ignored); warns once per new one."""
    for message in messages:
      if message and message not in self.skipped:
        self.skipped[message] = None
        if warn:
          logging.warning('Skipping unreadable image %s', message)

  def summary(self):
    """{'skipped_images': count, 'skipped_files': the first few messages} for metrics files."""
    return {'skipped_images': self.skipped_images, 'skipped_files': list(self.skipped)[:_SUMMARY_FILES]}

  def summary_line(self):
    """One line for the end of a run, '' when nothing was skipped."""
    if not self.skipped:
      return ''
    first = list(self.skipped)[:_SUMMARY_FILES]
    return (f'Skipped {self.skipped_images} unreadable image(s) (data.skip_bad_images): ' + '; '.join(first)
            + ('; ...' if self.skipped_images > len(first) else ''))


class Interrupted(Exception):
  """A stop was requested (e.g. SIGTERM) before or while waiting for a batch: the iterator's position is that of the
  last batch returned, unless its `stuck` is set (see BatchIterator)."""


_POLL_S = 0.2  # How often a wait for input checks for a stop request.
_GRACE_S = 5  # After a stop request, how long a batch being read may take before the wait gives up.


class Batches:
  """Iterable of NumPy batches from a tf.data pipeline; `stats` counts what the input dropped.

  `dataset` is the underlying tf.data.Dataset; `len()` is the number of batches (evaluation only). Iterators are
  checkpointable: `tf.train.Checkpoint(iterator=iter(batches))` saves and restores the position. `stop` (a callable)
  is asked before each batch and polled while waiting for one: once it returns True, `next()` raises Interrupted.
  """

  def __init__(self, dataset, stats, num_batches=None, stop=None):
    self.dataset = dataset
    self.stats = stats
    self.num_batches = num_batches
    self.stop = stop or (lambda: False)

  def __len__(self):
    if self.num_batches is None:
      raise TypeError('The training dataset is infinite.')
    return self.num_batches

  def __iter__(self):
    return BatchIterator(self.dataset, self.stats, self.stop)


class BatchIterator(tf.Module):
  """Iterator over NumPy batch dicts; a tf.Module so that tf.train.Checkpoint tracks the tf.data iterator inside.

  A worker thread runs the tf.data `next()` (C++, where Python signal handlers cannot run) one batch per request,
  and the caller waits for it in short slices: Ctrl-C raises at once and `stop` is honoured within _POLL_S, or, if a
  batch is being read, when it arrives or after _GRACE_S (then `stuck` is True: the read never ended, and the
  position must not be saved, as the iterator is busy).
  """

  def __init__(self, dataset, stats, stop):
    super().__init__()
    self._iterator = iter(dataset)
    self._stats = stats
    self._stop = stop
    self._requests, self._results = queue.SimpleQueue(), queue.SimpleQueue()
    self._worker = None
    self.stuck = False  # A read outlived a stop request by _GRACE_S.
    self._waiting = False  # A request is out and its batch not yet handed out.

  def __iter__(self):
    return self

  def _work(self):
    """Worker thread: one batch per request; exceptions are handed over."""
    while self._requests.get():
      try:
        self._results.put({k: v.numpy() for k, v in next(self._iterator).items()})
      except BaseException as e:  # pylint: disable=broad-except  (re-raised in the caller's thread)
        self._results.put(e)
        return

  def __next__(self):
    if not self._waiting:
      if self._stop():
        raise Interrupted('Stop requested.')
      if self._worker is None:
        self._worker = threading.Thread(target=self._work, name='input', daemon=True)
        self._worker.start()
      self._requests.put(True)
      self._waiting = True
    deadline = None
    while True:
      try:
        batch = self._results.get(timeout=_POLL_S)
        break
      except queue.Empty:
        if deadline is None and self._stop():
          deadline = time.monotonic() + _GRACE_S
        if deadline is not None and time.monotonic() > deadline:
          self.stuck = True
          raise Interrupted(f'Stop requested; the input has been stuck for {_GRACE_S} s since.') from None
    self._waiting = False
    if isinstance(batch, StopIteration):
      raise StopIteration
    if isinstance(batch, tf.errors.OpError):
      found = re.search(r'assertion failed: \[(.*?)\]', batch.message, re.S)
      raise ValueError(f'Input pipeline: {found.group(1) if found else batch.message}') from None
    if isinstance(batch, BaseException):
      raise batch
    for key in ('skipped', 'problem'):  # Messages of unreadable images: [B, K] (training) or [B] (evaluation).
      if key in batch:
        self._stats.skip(m.decode() for m in np.ravel(batch.pop(key)))
    dropped = batch.pop('dropped_boxes')
    if dropped.any():
      self._stats.images_over_max_boxes += int(np.sum(dropped > 0))
      self._stats.dropped_boxes += int(dropped.sum())
      logging.warning('Images %s have more GT boxes than data.max_boxes; dropped their %d smallest boxes.',
                      batch['image_id'][dropped > 0].tolist(), int(dropped.sum()))
    return batch


@dataclasses.dataclass(frozen=True)
class EvalInfo:
  """What evaluation needs beside the batches."""
  num_batches: int  # Batches per process (the same on every process).
  num_images: int  # Images evaluated over all processes.
  label_to_category: tuple  # COCO category id of each model label, -1 for a class the split lacks.
  coco_gt: object  # pycocotools COCO ground truth of the split (all its images; restrict to the evaluated ids).
  missing_image_ids: tuple = ()  # Images whose files are missing (data.skip_bad_images): evaluated as missed.


def _local_batch(batch_size, process_count, what):
  if batch_size % process_count:
    raise ValueError(f'{what}={batch_size} is not divisible by the {process_count} processes.')
  return batch_size // process_count


_FILES, _AUGMENT, _SCHEDULE = 0, 2, 3  # What a derived seed is for.


def _seed(config_seed, purpose, *parts, words=1):
  """Seed(s) for `purpose` derived from the config seed and non-negative ints (process, bucket): 31-bit int, or a
  [words] int64 array for stateless ops."""
  state = np.random.SeedSequence([config_seed, purpose, *parts]).generate_state(words) >> 1
  return int(state[0]) if words == 1 else state.astype(np.int64)


def _options(dataset, config):
  options = tf.data.Options()
  options.deterministic = True
  # Iterator checkpoints keep positions, not prefetched batches (every random draw is keyed by the element's index).
  options.experimental_symbolic_checkpoint = True
  if config.data.threads:
    options.threading.private_threadpool_size = config.data.threads
  return dataset.with_options(options)


def _check_classes(source, split, config):
  n = len(source.category_ids(split))
  if n != config.model.num_classes:
    raise config_lib.ConfigError(f'The {split} split has {n} categories but model.num_classes is '
                                 f'{config.model.num_classes}.')


def _label_to_category(source, split, config, class_names):
  """The category id of `split` for each model label: matched by name when the model's `class_names` are known
  (the split may order its categories otherwise or lack some: -1, not scored), else by position in the sorted ids
  (the split must then have model.num_classes categories). Mismatches are a ConfigError listing them all."""
  if class_names is None:
    _check_classes(source, split, config)
    return tuple(source.category_ids(split))
  if len(class_names) != config.model.num_classes:
    raise config_lib.ConfigError(f'The model has {len(class_names)} class names but model.num_classes is '
                                 f'{config.model.num_classes}.')
  categories = [{'id': i, 'name': n} for i, n in zip(source.category_ids(split), source.class_names(split))]
  try:
    return coco.label_to_category(class_names, categories)
  except ValueError as e:
    raise config_lib.ConfigError(f'Split {split!r}: {e}') from e


def label_to_category(config, class_names, split=None):
  """`_label_to_category` of `split` (default data.val_split) of `config`'s source: lets training check, before it
  starts, the mapping its evaluations will need, rather than hours later at the first one."""
  return _label_to_category(make_source(config), split or config.data.val_split, config, class_names)


def _bucket_weights(source, config, split, process_count):
  """Fraction of the training images (with boxes) in each canvas bucket, the same on every process."""
  canvases = config.data.canvases
  if isinstance(source, coco.FolderSource):
    index = source.index(split)
    sizes = index.sizes[[len(b) > 0 for b in index.labels]]
  else:
    records = source.records(split, with_boxes_only=True).take(_ESTIMATE_IMAGES)
    sizes = np.array([s for s in records.map(lambda r: r['orig_size']).as_numpy_iterator()]).reshape(-1, 2)
  counts = np.bincount(transforms.canvas_index(sizes, canvases), minlength=len(canvases))
  for k in np.nonzero((counts > 0) & (counts < process_count))[0]:
    logging.warning('Canvas %s has only %d training images for %d processes; they are not used.', canvases[k],
                    counts[k], process_count)
    counts[k] = 0
  if not counts.sum():
    raise ValueError(f'No training images with boxes in split {split!r}.')
  return counts / counts.sum()


def _on_device(config):
  """Whether the train and eval steps resize this input (data.resize_on), so that the host only decodes."""
  return resize.side(config.data.resize_on) == 'device'


def source_canvases(source, split, canvases):
  """Per canvas bucket, the (h, w) that holds every original image of `split` in it (the largest height and width):
  what the device path pads decoded images to. None for a bucket without images."""
  sizes = source.index(split).sizes
  bucket = transforms.canvas_index(sizes, canvases)
  return [tuple(int(v) for v in sizes[bucket == k].max(axis=0)) if (bucket == k).any() else None
          for k in range(len(canvases))]


def _padded_batch(dataset, batch_size, image_shape):
  """Batches of `batch_size`, each image zero padded at the bottom/right to `image_shape` (H, W) as it is copied
  in (a canvas, or on the device path the bucket's source canvas)."""
  shapes = {k: spec.shape for k, spec in dataset.element_spec.items()}
  shapes['image'] = tf.TensorShape([*image_shape, 3])
  return dataset.padded_batch(batch_size, shapes, drop_remainder=True)


def _element(source, record, config, canvas, short, flip, skip_bad=False):
  """Decoded, transformed element for `canvas`, and its `coco.unreadable` message ('' if readable)."""
  d = config.data
  example, problem = coco.decode(record, source.read(record), skip_bad)
  on_host = not _on_device(config)
  element = transforms.prepare(example, short, d.max_size, flip, canvas, d.max_boxes, d.resize_mode,
                               resize_image=on_host)
  if not on_host:
    element['canvas'] = tf.constant(canvas, tf.int32)
  return element, problem


def _images_per_bucket(source, split, canvases, process_index, process_count):
  """This process's training images in each canvas bucket, per epoch: [len(canvases)] ints, exact for a folder,
  for TFDS an upper bound (the process's share of the whole split)."""
  if isinstance(source, coco.FolderSource):
    rows = source.process_rows(split, process_index, process_count, with_boxes_only=True)
    return np.bincount(transforms.canvas_index(source.index(split).sizes[rows], canvases), minlength=len(canvases))
  return np.full(len(canvases), -(-source.num_images(split) // process_count))


def _readable_only(source, records, num_images, what):
  """`records` (one bucket's endless stream, every image `num_images` times or less per epoch) without the
  unreadable images; each kept record gets `skipped` [K] string, the messages of those dropped since the last one.

  Checked on the record stream (a new permutation every epoch), so that a run of 2 * num_images - 1 unreadable
  records in a row proves that no image is readable (between two passes of a readable image lie at most
  2 * num_images - 2 others): then it stops with an error naming `what` instead of waiting forever for an element.
  """
  limit = 2 * int(num_images) - 1

  @tf.autograph.experimental.do_not_convert
  def check(record):
    return {**record, 'problem': coco.unreadable(record, source.read(record))}

  @tf.autograph.experimental.do_not_convert
  def step(state, record):
    run, pending = state
    problem = record['problem']
    record = {k: v for k, v in record.items() if k != 'problem'}
    bad = tf.not_equal(problem, '')
    run = tf.where(bad, run + 1, 0)
    found = tf.strings.reduce_join(tf.unique(tf.concat([pending, [problem]], 0)).y[:_SUMMARY_FILES], separator='; ')
    message = tf.strings.join([f'No readable image in {what} ({num_images} image(s) or fewer; {limit} unreadable '
                               'in a row): ', found])
    with tf.control_dependencies([tf.debugging.Assert(run < limit, [message])]):
      pending_next = tf.cond(bad, lambda: tf.concat([pending, [problem]], 0), lambda: tf.zeros([0], tf.string))
    return (run, pending_next), ({**record, 'skipped': pending}, bad)

  @tf.autograph.experimental.do_not_convert
  def readable(record, bad):  # pylint: disable=unused-argument
    return ~bad

  @tf.autograph.experimental.do_not_convert
  def without_flag(record, bad):  # pylint: disable=unused-argument
    return record

  initial = (tf.constant(0, tf.int64), tf.zeros([0], tf.string))
  records = records.map(check, num_parallel_calls=tf.data.AUTOTUNE).scan(initial, step)
  return records.filter(readable).map(without_flag)


def make_train_dataset(config, process_index=0, process_count=1, stop=None):
  """Infinite, shuffled, deterministic training batches of `train.batch_size // process_count` images -> Batches.

  Each process reads its own share of the images as an endless shuffled stream; each canvas bucket takes its
  images from it, and a schedule seeded by `config.seed` (the same on every process) picks the bucket of every batch.
  With data.skip_bad_images, unreadable images are dropped (and reported once each); a bucket with no readable image
  is an error. `stop`: see `Batches`.
  """
  d = config.data
  batch = _local_batch(config.train.batch_size, process_count, 'train.batch_size')
  source = make_source(config)
  _check_classes(source, d.train_split, config)
  stats = InputStats()
  stats.skip((f'{file} (image_id {image_id}): missing' for file, image_id in source.missing(d.train_split)), warn=False)
  weights = _bucket_weights(source, config, d.train_split, process_count)
  if d.skip_bad_images:
    per_bucket = _images_per_bucket(source, d.train_split, d.canvases, process_index, process_count)
  records = source.records(d.train_split, process_index, process_count, seed=_seed(config.seed, _FILES, process_index),
                           with_boxes_only=True)
  image_shapes = (source_canvases(source, d.train_split, d.canvases) if _on_device(config)
                  else [tuple(c) for c in d.canvases])
  streams = []
  for k, canvas in enumerate(d.canvases):
    if not weights[k]:
      continue
    base_seed = tf.constant(_seed(config.seed, _AUGMENT, process_index, k, words=2))

    @tf.autograph.experimental.do_not_convert  # Plain TF ops: skip autograph's slow source conversion.
    def load(i, record, canvas=tuple(canvas), base_seed=base_seed):
      seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(base_seed, i), 2)
      short = transforms.random_short_side(tuple(d.short_sizes), seeds[0])
      flip = tf.random.stateless_uniform([], seeds[1]) < 0.5 if d.flip else False
      element, _ = _element(source, record, config, canvas, short, flip)
      return {**element, **({'skipped': record['skipped']} if 'skipped' in record else {})}

    stream = records.filter(lambda r, k=k: tf.equal(transforms.canvas_index(r['orig_size'], d.canvases), k))
    if d.skip_bad_images:
      what = (f'canvas {canvas[0]}x{canvas[1]} of split {d.train_split}'
              + (f' on process {process_index}' if process_count > 1 else ''))
      stream = _readable_only(source, stream, per_bucket[k], what)
    stream = stream.enumerate()  # The records come in a new stateless permutation every epoch: no shuffle buffer.
    stream = stream.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    streams.append(_padded_batch(stream, batch, image_shapes[k]))
  if len(streams) == 1:
    dataset = streams[0]
  else:
    dataset = tf.data.Dataset.sample_from_datasets(streams, [w for w in weights if w],
                                                   seed=_seed(config.seed, _SCHEDULE), stop_on_empty_dataset=True)
  return Batches(_options(dataset.prefetch(tf.data.AUTOTUNE), config), stats, stop=stop)


def _padding_element(max_boxes, canvas=None):
  """An all-zero element (mask and unreadable False) that fills the last batch of a bucket; with `canvas` (the
  device path) it also says flip False and names its canvas."""
  device = {} if canvas is None else {'flip': tf.constant(False), 'canvas': tf.constant(canvas, tf.int32)}
  return {**device, 'image': tf.zeros([0, 0, 3], tf.uint8), 'boxes': tf.zeros([max_boxes, 4], tf.float32),
          'labels': -tf.ones([max_boxes], tf.int32), 'valid': tf.zeros([max_boxes], bool),
          'image_id': tf.constant(-1, tf.int32), 'scale': tf.ones([2], tf.float32),
          'orig_size': tf.zeros([2], tf.int32), 'size': tf.zeros([2], tf.int32),
          'dropped_boxes': tf.constant(0, tf.int32), 'mask': tf.constant(False), 'unreadable': tf.constant(False),
          'problem': tf.constant('')}


def make_eval_dataset(config, split=None, process_index=0, process_count=1, stop=None, class_names=None):
  """Every image of `split` (default data.val_split) once, in batches of `eval.batch_size // process_count`.

  Buckets come one after the other; each process gets every `process_count`-th image of a bucket and the same number
  of batches, the last of a bucket padded with `mask` False. `eval.max_images` > 0 keeps only the first images.
  With data.skip_bad_images an unreadable image stays in its batch with `mask` False and `unreadable` True (a zero
  image; its ground truth still counts, as missed) and is reported once. `stop`: see `Batches`. `class_names`:
  the model's, in label order, to map its labels to the split's categories by name (see `_label_to_category`).
  Returns (Batches, EvalInfo).
  """
  d = config.data
  split = split or d.val_split
  batch = _local_batch(config.eval.batch_size, process_count, 'eval.batch_size')
  source = make_source(config)
  label_to_category = _label_to_category(source, split, config, class_names)
  stats = InputStats()
  index = source.index(split)
  n = len(index) if config.eval.max_images <= 0 else min(len(index), config.eval.max_images)
  counts = np.bincount(transforms.canvas_index(index.sizes[:n], d.canvases), minlength=len(d.canvases))
  records = source.records(split).take(n)
  image_shapes = (source_canvases(source, split, d.canvases) if _on_device(config)
                  else [tuple(c) for c in d.canvases])
  parts, num_batches = [], 0
  for k, canvas in enumerate(d.canvases):
    if not counts[k]:
      continue
    canvas = tuple(canvas)
    batches = math.ceil(math.ceil(counts[k] / process_count) / batch)

    @tf.autograph.experimental.do_not_convert
    def load(record, canvas=canvas):
      element, problem = _element(source, record, config, canvas, d.eval_short_size, False, d.skip_bad_images)
      readable = tf.equal(problem, '')
      return {**element, 'mask': readable, 'unreadable': ~readable, 'problem': problem}

    part = records.filter(lambda r, k=k: tf.equal(transforms.canvas_index(r['orig_size'], d.canvases), k))
    part = part.shard(process_count, process_index).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    padding = _padding_element(d.max_boxes, canvas if _on_device(config) else None)
    part = part.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
    parts.append(_padded_batch(part.take(batches * batch), batch, image_shapes[k]))
    num_batches += batches
  dataset = parts[0]
  for part in parts[1:]:
    dataset = dataset.concatenate(part)
  missing = source.missing(split) if config.eval.max_images <= 0 else ()
  stats.skip((f'{file} (image_id {image_id}): missing' for file, image_id in missing), warn=False)
  info = EvalInfo(num_batches, n + len(missing), label_to_category, source.coco_gt(split),
                  tuple(image_id for _, image_id in missing))
  return Batches(_options(dataset.prefetch(tf.data.AUTOTUNE), config), stats, num_batches, stop), info

