"""The input's iterator: NumPy batches out of a tf.data pipeline on a worker thread, so that a stop request (a
signal) is honoured while a read blocks, checkpointable with tf.train.Checkpoint, counting what the input dropped."""

import dataclasses
import logging
import queue
import re
import threading
import time

import numpy as np
import tensorflow as tf

from fcos_jax import errors

SUMMARY_FILES = 5  # Files named in a summary of the skipped ones.

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
    return {'skipped_images': self.skipped_images, 'skipped_files': list(self.skipped)[:SUMMARY_FILES]}

  def summary_line(self):
    """One line for the end of a run, '' when nothing was skipped."""
    if not self.skipped:
      return ''
    first = list(self.skipped)[:SUMMARY_FILES]
    return (f'Skipped {self.skipped_images} unreadable image(s) (data.skip_bad_images): ' + '; '.join(first)
            + ('; ...' if self.skipped_images > len(first) else ''))


class InputError(errors.DataError):
  """The input pipeline failed on a file (unreadable, gone, or a canvas with no readable image): one line naming it.
  The iterator's position is that of the last batch returned: saved, a rerun with the file fixed goes on from it."""


def _input_problem(message):
  """The first line of a tf.data error `message`, without TensorFlow's node and iterator prefixes: the file and
  what is wrong with it."""
  found = re.search(r'assertion failed: \[(.*?)\]', message, re.S)
  if found:
    return found.group(1)
  line = message.strip().splitlines()[0] if message.strip() else message
  line = re.sub(r'^\{\{function_node [^}]*\}\}\s*', '', line)
  return re.sub(r'^Error in user-defined function .*? with iterator: \S+: ', '', line)


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
      raise InputError(f'Input pipeline: {_input_problem(batch.message)}') from None
    if isinstance(batch, BaseException):
      raise batch
    for key in ('skipped', 'problem'):  # Messages of unreadable images: [B, K] (training) or [B] (evaluation).
      if key in batch:
        self._stats.skip(m.decode() for m in np.ravel(batch.pop(key)))
    dropped = batch.pop('dropped_boxes', None)  # Training only: evaluation scores against the whole ground truth.
    if dropped is not None and dropped.any():
      self._stats.images_over_max_boxes += int(np.sum(dropped > 0))
      self._stats.dropped_boxes += int(dropped.sum())
      logging.warning('Images %s have more GT boxes than data.max_boxes; dropped their %d smallest boxes.',
                      batch['image_id'][dropped > 0].tolist(), int(dropped.sum()))
    return batch
