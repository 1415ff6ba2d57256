"""Encoded image bytes -> pixels, as PaddleDetection's reader decodes them, with the integrity check that lets a
damaged file be named (or skipped) instead of failing deep inside tf.data."""

import tensorflow as tf


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
