"""tf.data assembly: training and evaluation batches per process and canvas buckets.

Batch contract (NumPy dicts; B = batch size per process, G = data.max_boxes, (H, W) one canvas per batch):
  image [B, H, W, 3] uint8 (zero padded), boxes [B, G, 4] float32 xyxy canvas pixels (padded slots zero),
  labels [B, G] int32 (padded -1), valid [B, G] bool, image_id [B] int32, scale [B, 2] float32 (sy, sx),
  orig_size [B, 2] int32 (h, w), size [B, 2] int32 (resized h, w); evaluation adds mask [B] bool.

Every step, all processes yield the same canvas: buckets are drawn from one seeded schedule (training) or come in a
fixed order with the same number of batches per process (evaluation), so the global batch has one shape.
"""

import dataclasses
import logging
import math
import os
import re
import threading

import numpy as np
import tensorflow as tf

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
  jsons = [os.path.join(d.root, 'annotations', f'instances_{split}.json') for split in (d.train_split, d.val_split)]
  if d.generate_synthetic and not all(os.path.exists(path) for path in jsons):
    logging.info('Generating the synthetic dataset in %s', d.root)
    synthetic.generate(d.root, seed=config.seed)
  key = ('folder', os.path.abspath(d.root), d.skip_bad_images)
  if key not in _SOURCES:
    _SOURCES[key] = coco.FolderSource(d.root, skip_bad_images=d.skip_bad_images)
  return _SOURCES[key]


@dataclasses.dataclass
class InputStats:
  """What the input dropped instead of failing, so training can report it."""
  skipped_images: int = 0  # Unreadable images skipped (data.skip_bad_images).
  images_over_max_boxes: int = 0  # Images with more GT boxes than data.max_boxes.
  dropped_boxes: int = 0  # Their smallest boxes, dropped.

  def __post_init__(self):
    self._lock = threading.Lock()

  def skip(self, message):
    """Counts and logs one skipped image (called from the tf.data threads)."""
    with self._lock:
      self.skipped_images += 1
    logging.warning('Skipping unreadable image %s', message)


class Batches:
  """Iterable of NumPy batches from a tf.data pipeline; `stats` counts what the input dropped.

  `dataset` is the underlying tf.data.Dataset; `len()` is the number of batches (evaluation only). Its iterators
  are checkpointable: `tf.train.Checkpoint(iterator=iter(batches))` saves and restores the position.
  """

  def __init__(self, dataset, stats, num_batches=None):
    self.dataset = dataset
    self.stats = stats
    self.num_batches = num_batches

  def __len__(self):
    if self.num_batches is None:
      raise TypeError('The training dataset is infinite.')
    return self.num_batches

  def __iter__(self):
    return BatchIterator(self.dataset, self.stats)


class BatchIterator(tf.Module):
  """Iterator over NumPy batch dicts; a tf.Module so that tf.train.Checkpoint tracks the tf.data iterator inside."""

  def __init__(self, dataset, stats):
    super().__init__()
    self._iterator = iter(dataset)
    self._stats = stats

  def __iter__(self):
    return self

  def __next__(self):
    try:
      batch = {k: v.numpy() for k, v in next(self._iterator).items()}
    except tf.errors.OpError as e:
      found = re.search(r'assertion failed: \[(.*?)\]', e.message, re.S)
      raise ValueError(f'Input pipeline: {found.group(1) if found else e.message}') from None
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
  label_to_category: tuple  # COCO category id of each contiguous label.
  coco_gt: object  # pycocotools COCO ground truth of the split (all its images; restrict to the evaluated ids).


def _local_batch(batch_size, process_count, what):
  if batch_size % process_count:
    raise ValueError(f'{what}={batch_size} is not divisible by the {process_count} processes.')
  return batch_size // process_count


_FILES, _SHUFFLE, _AUGMENT, _SCHEDULE = range(4)  # What a derived seed is for.


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
  # The only external state is the py_function that logs skipped images: it does not affect what comes next.
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  if config.data.threads:
    options.threading.private_threadpool_size = config.data.threads
  return dataset.with_options(options)


def _check_classes(source, split, config):
  n = len(source.category_ids(split))
  if n != config.model.num_classes:
    raise ValueError(f'The {split} split has {n} categories but model.num_classes is {config.model.num_classes}.')


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


def _padded_batch(dataset, batch_size, canvas):
  """Batches of `batch_size`, each image zero padded at the bottom/right to `canvas` (H, W) as it is copied in."""
  shapes = {k: spec.shape for k, spec in dataset.element_spec.items()}
  shapes['image'] = tf.TensorShape([*canvas, 3])
  return dataset.padded_batch(batch_size, shapes, drop_remainder=True)


def _element(source, record, config, canvas, short, flip, on_bad):
  """Decoded, transformed element for `canvas`, and whether the image was readable."""
  d = config.data
  example, ok = coco.decode(record, source.read(record), on_bad)
  return transforms.prepare(example, short, d.max_size, flip, canvas, d.max_boxes), ok


def make_train_dataset(config, process_index=0, process_count=1):
  """Infinite, shuffled, deterministic training batches of `train.batch_size // process_count` images -> Batches.

  Each process reads its own share of the images as an endless shuffled stream; each canvas bucket takes its
  images from it, and a schedule seeded by `config.seed` (the same on every process) picks the bucket of every batch.
  """
  d = config.data
  batch = _local_batch(config.train.batch_size, process_count, 'train.batch_size')
  source = make_source(config)
  _check_classes(source, d.train_split, config)
  stats = InputStats()
  on_bad = stats.skip if d.skip_bad_images else None
  weights = _bucket_weights(source, config, d.train_split, process_count)
  records = source.records(d.train_split, process_index, process_count, seed=_seed(config.seed, _FILES, process_index),
                           with_boxes_only=True)
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
      return _element(source, record, config, canvas, short, flip, on_bad)

    stream = records.filter(lambda r, k=k: tf.equal(transforms.canvas_index(r['orig_size'], d.canvases), k))
    stream = stream.shuffle(d.shuffle_buffer, seed=_seed(config.seed, _SHUFFLE, process_index, k)).enumerate()
    stream = stream.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if on_bad:
      stream = stream.filter(lambda element, ok: ok)
    streams.append(_padded_batch(stream.map(lambda element, ok: element), batch, canvas))
  if len(streams) == 1:
    dataset = streams[0]
  else:
    dataset = tf.data.Dataset.sample_from_datasets(streams, [w for w in weights if w],
                                                   seed=_seed(config.seed, _SCHEDULE), stop_on_empty_dataset=True)
  return Batches(_options(dataset.prefetch(tf.data.AUTOTUNE), config), stats)


def _padding_element(max_boxes):
  """An all-zero element (mask False) that fills the last batch of a bucket."""
  return {'image': tf.zeros([0, 0, 3], tf.uint8), 'boxes': tf.zeros([max_boxes, 4], tf.float32),
          'labels': -tf.ones([max_boxes], tf.int32), 'valid': tf.zeros([max_boxes], bool),
          'image_id': tf.constant(-1, tf.int32), 'scale': tf.ones([2], tf.float32),
          'orig_size': tf.zeros([2], tf.int32), 'size': tf.zeros([2], tf.int32),
          'dropped_boxes': tf.constant(0, tf.int32), 'mask': tf.constant(False)}


def make_eval_dataset(config, split=None, process_index=0, process_count=1):
  """Every image of `split` (default data.val_split) once, in batches of `eval.batch_size // process_count`.

  Buckets come one after the other; each process gets every `process_count`-th image of a bucket and the same number
  of batches, the last of a bucket padded with `mask` False. `eval.max_images` > 0 keeps only the first images.
  Returns (Batches, EvalInfo).
  """
  d = config.data
  split = split or d.val_split
  batch = _local_batch(config.eval.batch_size, process_count, 'eval.batch_size')
  source = make_source(config)
  _check_classes(source, split, config)
  stats = InputStats()
  on_bad = stats.skip if d.skip_bad_images else None
  index = source.index(split)
  n = len(index) if config.eval.max_images <= 0 else min(len(index), config.eval.max_images)
  counts = np.bincount(transforms.canvas_index(index.sizes[:n], d.canvases), minlength=len(d.canvases))
  records = source.records(split).take(n)
  parts, num_batches = [], 0
  for k, canvas in enumerate(d.canvases):
    if not counts[k]:
      continue
    canvas = tuple(canvas)
    batches = math.ceil(math.ceil(counts[k] / process_count) / batch)

    @tf.autograph.experimental.do_not_convert
    def load(record, canvas=canvas):
      element, ok = _element(source, record, config, canvas, d.eval_short_size, False, on_bad)
      return {**element, 'mask': tf.constant(True)}, ok

    part = records.filter(lambda r, k=k: tf.equal(transforms.canvas_index(r['orig_size'], d.canvases), k))
    part = part.shard(process_count, process_index).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if on_bad:
      part = part.filter(lambda element, ok: ok)
    part = part.map(lambda element, ok: element)
    part = part.concatenate(tf.data.Dataset.from_tensors(_padding_element(d.max_boxes)).repeat())
    parts.append(_padded_batch(part.take(batches * batch), batch, canvas))
    num_batches += batches
  dataset = parts[0]
  for part in parts[1:]:
    dataset = dataset.concatenate(part)
  info = EvalInfo(num_batches, n, source.category_ids(split), source.coco_gt(split))
  return Batches(_options(dataset.prefetch(tf.data.AUTOTUNE), config), stats, num_batches), info

