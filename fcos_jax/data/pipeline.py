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

import numpy as np
import tensorflow as tf

from fcos_jax import errors
from fcos_jax.data import annotations, augment, decoding, iterator, sources, transforms

_ESTIMATE_IMAGES = 1000  # Images whose orientation estimates the bucket mix of a TFDS training split.


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


_FILES, _AUGMENT, _SCHEDULE, _AUGMENT_OPS, _AUGMENT_MIX = 0, 2, 3, 4, 5  # What a derived seed is for.


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
    raise errors.ConfigError(
        f'Split {split!r} has {n} categories ({annotations.listing(list(source.class_names(split)), 20)}) but '
        f'model.num_classes is {config.model.num_classes}: set --config.model.num_classes={n}.')


def _label_to_category(source, split, config, class_names):
  """The category id of `split` for each model label: matched by name when the model's `class_names` are known
  (the split may order its categories otherwise or lack some: -1, not scored), else by position in the sorted ids
  (the split must then have model.num_classes categories). Mismatches are a ConfigError listing them all."""
  if class_names is None:
    _check_classes(source, split, config)
    return tuple(source.category_ids(split))
  if len(class_names) != config.model.num_classes:
    raise errors.ConfigError(
        f'The model has {len(class_names)} classes ({annotations.listing(list(class_names), 20)}: the categories of '
        f'its training split {config.data.train_split!r}, or of its checkpoint) but model.num_classes is '
        f'{config.model.num_classes}: set --config.model.num_classes={len(class_names)}.')
  categories = [{'id': i, 'name': n} for i, n in zip(source.category_ids(split), source.class_names(split))]
  try:
    return annotations.label_to_category(class_names, categories)
  except ValueError as e:
    raise errors.ConfigError(f'Split {split!r}: {e}') from e


def _bucket_weights(source, config, split, process_count):
  """Fraction of the training images (with boxes) in each canvas bucket, the same on every process."""
  canvases = config.data.canvases
  ops = augment.make_ops(config.data.augment)
  if ops:  # The buckets of the augmented sizes, estimated on a stream of drawn records (8 draws per image or fewer).
    records = source.records(split, seed=_seed(config.seed, _AUGMENT_MIX), with_boxes_only=True)
    draws = (min(_ESTIMATE_IMAGES, 8 * len(source.index(split))) if isinstance(source, sources.FolderSource)
             else _ESTIMATE_IMAGES)
    records = _planned(records, ops, _seed(config.seed, _AUGMENT_MIX, 1, words=2)).take(draws)
    sizes = np.array(list(records.map(lambda r: r['augment']['size']).as_numpy_iterator())).reshape(-1, 2)
  elif isinstance(source, sources.FolderSource):
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
  """Whether the train and eval steps resize this input (data.resize_on), so that the host only decodes (never with
  data.augment, which changes the image sizes)."""
  side = config.data.resize_on
  if config.data.augment:
    return False
  if side == 'auto':
    from fcos_jax import resize  # pylint: disable=g-import-not-at-top  (only 'auto' needs JAX: its backend decides)
    side = resize.side(side)
  return side == 'device'


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


def _element(source, record, config, canvas, short, flip, skip_bad=False, ops=()):
  """Decoded, transformed element for `canvas`, and its `decoding.unreadable` message ('' if readable); a record
  planned with the augmentation `ops` (`_planned`) is augmented before the flip and resize."""
  d = config.data
  example, problem = decoding.decode(record, source.read(record), skip_bad)
  if ops:
    example = augment.apply(ops, example, record['augment'])
  on_host = not _on_device(config)
  element = transforms.prepare(example, short, d.max_size, flip, canvas, d.max_boxes, d.resize_mode,
                               resize_image=on_host)
  if not on_host:
    element['canvas'] = tf.constant(canvas, tf.int32)
  return element, problem


def _images_per_bucket(source, split, canvases, process_index, process_count):
  """This process's training images in each canvas bucket, per epoch: [len(canvases)] ints, exact for a folder,
  for TFDS an upper bound (the process's share of the whole split)."""
  if isinstance(source, sources.FolderSource):
    rows = source.process_rows(split, process_index, process_count, with_boxes_only=True)
    return np.bincount(transforms.canvas_index(source.index(split).sizes[rows], canvases), minlength=len(canvases))
  return np.full(len(canvases), -(-source.num_images(split) // process_count))


def _planned(records, ops, seed):
  """`records` (an endless stream) planned by the augmentation `ops` (`augment.plan`): the j-th record of the
  stream, i.e. a given (epoch, image) of it, draws from fold_in(`seed` [2], j)."""
  seed = tf.constant(seed)

  @tf.autograph.experimental.do_not_convert
  def draw(j, record):
    return augment.plan(ops, tf.random.experimental.stateless_fold_in(seed, j), record)

  return records.enumerate().map(draw, num_parallel_calls=tf.data.AUTOTUNE)


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
    return {**record, 'problem': decoding.unreadable(record, source.read(record))}

  @tf.autograph.experimental.do_not_convert
  def step(state, record):
    run, pending = state
    problem = record['problem']
    record = {k: v for k, v in record.items() if k != 'problem'}
    bad = tf.not_equal(problem, '')
    run = tf.where(bad, run + 1, 0)
    seen = tf.unique(tf.concat([pending, [problem]], 0)).y
    found = tf.strings.reduce_join(seen[:iterator.SUMMARY_FILES], separator='; ')
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


def make_train_dataset(config, process_index=0, process_count=1, stop=None, source=None):
  """Infinite, shuffled, deterministic training batches of `train.batch_size // process_count` images: Batches.

  Each process reads its own share of the images as an endless shuffled stream; each canvas bucket takes its
  images from it, and a schedule seeded by `config.seed` (the same on every process) picks the bucket of every batch.
  With data.skip_bad_images, unreadable images are dropped (and reported once each); a bucket with no readable image
  is an error. `stop`: see `iterator.Batches`. `source`: the run's `sources.make_source(config)` (default: a new
  one, which parses the annotations again).
  """
  d = config.data
  batch = _local_batch(config.train.batch_size, process_count, 'train.batch_size')
  source = source or sources.make_source(config)
  _check_classes(source, d.train_split, config)
  stats = iterator.InputStats()
  stats.skip((f'{file} (image_id {image_id}): missing' for file, image_id in source.missing(d.train_split)), warn=False)
  weights = _bucket_weights(source, config, d.train_split, process_count)
  ops = augment.make_ops(d.augment)
  if d.skip_bad_images:
    per_bucket = _images_per_bucket(source, d.train_split, d.canvases, process_index, process_count)
  records = source.records(d.train_split, process_index, process_count, seed=_seed(config.seed, _FILES, process_index),
                           with_boxes_only=True)
  if ops:  # Planned before the buckets are chosen, since the ops change the sizes; unreadable images dropped first.
    if d.skip_bad_images:
      images = (per_bucket.sum() if isinstance(source, sources.FolderSource) else per_bucket.max())
      what = f'split {d.train_split}' + (f' on process {process_index}' if process_count > 1 else '')
      records = _readable_only(source, records, images, what)
    records = _planned(records, ops, _seed(config.seed, _AUGMENT_OPS, process_index, words=2))

  @tf.autograph.experimental.do_not_convert
  def size_of(record):  # Of the image that is resized.
    return record['augment']['size'] if ops else record['orig_size']

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
      element, _ = _element(source, record, config, canvas, short, flip, ops=ops)
      return {**element, **({'skipped': record['skipped']} if 'skipped' in record else {})}

    stream = records.filter(lambda r, k=k: tf.equal(transforms.canvas_index(size_of(r), d.canvases), k))
    if d.skip_bad_images and not ops:
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
  return iterator.Batches(_options(dataset.prefetch(tf.data.AUTOTUNE), config), stats, stop=stop)


def _padding_element(max_boxes, canvas=None):
  """An all-zero element (mask and unreadable False) that fills the last batch of a bucket; with `canvas` (the
  device path) it also says flip False and names its canvas."""
  device = {} if canvas is None else {'flip': tf.constant(False), 'canvas': tf.constant(canvas, tf.int32)}
  return {**device, 'image': tf.zeros([0, 0, 3], tf.uint8), 'boxes': tf.zeros([max_boxes, 4], tf.float32),
          'labels': -tf.ones([max_boxes], tf.int32), 'valid': tf.zeros([max_boxes], bool),
          'image_id': tf.constant(-1, tf.int32), 'scale': tf.ones([2], tf.float32),
          'orig_size': tf.zeros([2], tf.int32), 'size': tf.zeros([2], tf.int32), 'mask': tf.constant(False),
          'unreadable': tf.constant(False), 'problem': tf.constant('')}


def make_eval_dataset(config, split=None, process_index=0, process_count=1, stop=None, class_names=None,
                      source=None):
  """Every image of `split` (default data.val_split) once, in batches of `eval.batch_size // process_count`.

  Buckets come one after the other; each process gets every `process_count`-th image of a bucket and the same number
  of batches, the last of a bucket padded with `mask` False. `eval.max_images` > 0 keeps only the first images.
  With data.skip_bad_images an unreadable image stays in its batch with `mask` False and `unreadable` True (a zero
  image; its ground truth still counts, as missed) and is reported once. `stop`: see `iterator.Batches`.
  `class_names`: the model's, in label order, to map its labels to the split's categories by name (see
  `_label_to_category`). `source`: as for `make_train_dataset`. Returns (iterator.Batches, EvalInfo); the batches
  can be iterated again for another evaluation.
  """
  d = config.data
  split = split or d.val_split
  batch = _local_batch(config.eval.batch_size, process_count, 'eval.batch_size')
  source = source or sources.make_source(config)
  label_to_category = _label_to_category(source, split, config, class_names)
  stats = iterator.InputStats()
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
      del element['dropped_boxes']  # Scored against the whole ground truth: the box slots do not limit it.
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
  return iterator.Batches(_options(dataset.prefetch(tf.data.AUTOTUNE), config), stats, num_batches, stop), info

