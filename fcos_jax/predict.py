"""Prediction: images (paths, encoded bytes or uint8 arrays of any size) -> detections in original image pixels.

The `Predictor` wraps the inference seam (`fcos_jax.inference.make_detect_fn`, shared with evaluation and the
exports) with what a user needs around it: decoding (gray, RGBA, CMYK -> RGB, as the input pipeline decodes), the
evaluation resize (`fcos_jax.data.transforms.resize`, the same TensorFlow ops, so the same pixels), canvas buckets,
batches padded to a fixed size (one compiled program per canvas, reused), and boxes mapped back to the original
pixels. Images larger than the model's scale can be predicted in tiles (`fcos_jax.slicing`).

`fcos-predict --checkpoint CKPT INPUTS... --out DIR` draws and writes the detections (fcos_jax.commands.predict).
"""

import dataclasses
import os
from typing import Sequence, Union

import jax
import ml_collections
import numpy as np

from fcos_jax import checkpoints, errors, inference
from fcos_jax import config as config_lib
from fcos_jax import slicing as slicing_lib
from fcos_jax.data import categories
from fcos_jax.model import fcos


ImageInput = Union[str, os.PathLike, bytes, np.ndarray]  # A file path, encoded bytes, or a uint8 array.


class UnreadableImageError(ValueError):
  """An input that is not a decodable image; the message names it."""


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (off the export and evaluation step paths)
  return tf


def decode(encoded: bytes, name: str) -> np.ndarray:
  """Encoded image bytes -> uint8 RGB [h, w, 3], decoded as the input pipeline decodes (`decoding.decode_pixels`: JPEGs
  as OpenCV decodes them, gray repeated, alpha dropped, CMYK converted); raises UnreadableImageError naming `name`."""
  tf = _tf()
  from fcos_jax.data import decoding  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  problem = decoding.integrity_problem(tf.constant(encoded)).numpy().decode()
  if problem:
    raise UnreadableImageError(f'{name}: {problem}')
  try:
    return decoding.decode_pixels(tf.constant(encoded)).numpy()
  except tf.errors.OpError as e:
    raise UnreadableImageError(f'{name}: {e.message}') from None


def as_rgb(array: np.ndarray, name: str) -> np.ndarray:
  """A uint8 array [h, w], [h, w, 1], [h, w, 3] or [h, w, 4] -> RGB [h, w, 3] (gray repeated, alpha dropped, as
  decoding does); other shapes or dtypes raise ValueError naming `name`."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f'{name}: expected a uint8 image array, got {array.dtype}')
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
    raise ValueError(f'{name}: expected an image array [h, w], [h, w, 1], [h, w, 3] or [h, w, 4], got '
                     f'{array.shape}')
  return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else np.ascontiguousarray(array[..., :3])


def load_image(item: ImageInput, name: str | None = None) -> tuple[np.ndarray, str]:
  """An input (path, encoded bytes or uint8 array) -> (uint8 RGB [h, w, 3], name for messages)."""
  if isinstance(item, (str, os.PathLike)):
    name = name or os.fspath(item)
    try:
      with open(item, 'rb') as f:
        encoded = f.read()
    except OSError as e:
      raise UnreadableImageError(f'{name}: {e.strerror}') from None
    return decode(encoded, name), name
  if isinstance(item, (bytes, bytearray)):
    name = name or 'image bytes'
    return decode(bytes(item), name), name
  name = name or 'image array'
  return as_rgb(item, name), name


@dataclasses.dataclass(frozen=True)
class Prediction:
  """Detections of one image, sorted by score. `boxes` [n, 4] float64 xyxy in original image pixels (not clipped
  to the image, like evaluation's), `scores` [n], `classes` [n] int (labels), `class_names` n str, `image_size`
  (h, w) of the original image."""
  boxes: np.ndarray
  scores: np.ndarray
  classes: np.ndarray
  class_names: list
  image_size: tuple


class Predictor:
  """Images -> `Prediction`s with a detector; build it `from_checkpoint(path)` or from (config, variables).

  Resizes like evaluation (short side data.eval_short_size, long side <= data.max_size), puts each image on its
  data.canvases bucket, and runs batches of `batch_size` (default eval.batch_size; the last one padded) through one
  jitted `make_detect_fn`, compiled once per canvas and reused for every later call. With a `slicing_lib.Slicing`,
  the tiles of every image go through the same batches and programs.
  """

  def __init__(self, config: ml_collections.ConfigDict, variables: dict, class_names: Sequence[str] | None = None,
               category_ids: Sequence[int] | None = None, batch_size: int | None = None):
    config_lib.validate(config, num_devices=1, uses='predict')
    num_classes = config.model.num_classes
    self.config = config
    self.class_names, self.category_ids = categories.name_classes(num_classes, class_names, category_ids)
    for what, values in (('class_names', self.class_names), ('category_ids', self.category_ids)):
      if len(values) != num_classes:
        raise ValueError(f'{len(values)} {what} for model.num_classes={num_classes}')
    self.batch_size = batch_size or config.eval.batch_size
    self.canvases = [tuple(int(v) for v in c) for c in config.data.canvases]
    self.model = fcos.build_model(config.model)
    self.variables = jax.device_put(variables, jax.local_devices()[0])
    self._detect = jax.jit(inference.make_detect_fn(self.model, config))
    self._resize = None

  @classmethod
  def from_checkpoint(cls, path: str, config: ml_collections.ConfigDict | None = None,
                      class_names: Sequence[str] | None = None, category_ids: Sequence[int] | None = None,
                      batch_size: int | None = None) -> 'Predictor':
    """A predictor from a checkpoint directory: its config, class names and category ids come from the metadata
    that training and the converters write beside it; `config` (a ConfigDict) overrides the stored one and is
    required for checkpoints without metadata, `class_names` / `category_ids` override the stored ones."""
    metadata = checkpoints.read_metadata(path) or {}
    config = checkpoints.config_from_checkpoint(path, config)
    _, variables = inference.load_detector(path, config)
    return cls(config, variables, class_names or metadata.get('class_names'),
               category_ids or metadata.get('category_ids'), batch_size)

  def resize(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB [h, w, 3] -> (resized uint8 [h', w', 3], scale float32 [2] (sy, sx)), evaluation's resize."""
    if self._resize is None:
      tf = _tf()
      from fcos_jax.data import transforms  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
      d = self.config.data
      self._resize = tf.function(
          lambda img: transforms.resize(img, tf.zeros([0, 4]), d.eval_short_size, d.max_size, d.resize_mode)[::2],
          input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    resized, scale = self._resize(image)
    return resized.numpy(), scale.numpy()

  def canvas_of(self, image_size: tuple[int, int]) -> tuple[int, int]:
    """The canvas (H, W) of an original image size (h, w): the bucket evaluation puts it in."""
    from fcos_jax.data import transforms  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    return self.canvases[int(transforms.canvas_index(np.asarray(image_size), self.canvases))]

  def predict(self, images: Sequence[ImageInput], names: Sequence[str] | None = None,
              slicing: slicing_lib.Slicing | None = None) -> list[Prediction]:
    """Detections of each of `images` (paths, encoded bytes, uint8 arrays; any number), in order; with `slicing`,
    each image is predicted in tiles (see `predict_arrays`).

    Unreadable inputs raise UnreadableImageError naming them (`names[i]` if given); nothing is computed then.
    """
    names = names or [None] * len(images)
    loaded = [load_image(item, name) for item, name in zip(images, names)]
    return self.predict_arrays([image for image, _ in loaded], [name for _, name in loaded], slicing)

  def predict_arrays(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None,
                     slicing: slicing_lib.Slicing | None = None) -> list[Prediction]:
    """`predict` for decoded uint8 RGB arrays [h, w, 3].

    With `slicing` (PaddleDetection's slice_infer): each image is cut into the tiles of `slicing_lib.tile_grid`,
    every tile is predicted as an image of its own (resized to the evaluation scale like any image, on its canvas,
    batched with the other tiles through the same compiled programs), and the tiles' detections, shifted to the
    image's pixels, are combined by `slicing_lib.merge`.
    """
    names = names or [f'image {i}' for i in range(len(images))]
    if slicing is None:
      return [self._prediction(*found, image.shape[:2])
              for image, found in zip(images, self._detect_arrays(images, names))]
    grids = [slicing_lib.tile_grid(*image.shape[:2], slicing.size, slicing.overlap) for image in images]
    tiles = [(image[y0:y1, x0:x1], f'{name} (tile at x={x0}, y={y0})')
             for image, name, grid in zip(images, names, grids) for x0, y0, x1, y1 in grid]
    found, chunk = [], 16 * self.batch_size  # Tiles resized at once: bounds the memory a large raster takes.
    for first in range(0, len(tiles), chunk):
      part = tiles[first:first + chunk]
      found += self._detect_arrays([tile for tile, _ in part], [name for _, name in part])
    results, first = [], 0
    for image, grid in zip(images, grids):
      parts, first = found[first:first + len(grid)], first + len(grid)
      boxes = np.concatenate([b + np.tile(origin[:2], 2) for (b, _, _), origin in zip(parts, grid)])
      scores = np.concatenate([s for _, s, _ in parts])
      classes = np.concatenate([c for _, _, c in parts])
      keep = slicing_lib.merge(boxes, scores, classes, slicing)
      results.append(self._prediction(boxes[keep], scores[keep], classes[keep], image.shape[:2]))
    return results

  def _prediction(self, boxes, scores, classes, image_size):
    return Prediction(boxes, scores, classes, [self.class_names[c] for c in classes], tuple(image_size))

  def _detect_arrays(self, images, names):
    """(boxes float64 [n, 4] in original pixels, scores [n], classes [n]) of each of the uint8 RGB `images`."""
    prepared = []
    for image, name in zip(images, names):
      canvas = self.canvas_of(image.shape[:2])
      resized, scale = self.resize(image)
      if resized.shape[0] > canvas[0] or resized.shape[1] > canvas[1]:
        raise ValueError(f'{name} resized to {resized.shape[0]}x{resized.shape[1]} does not fit its canvas '
                         f'{canvas[0]}x{canvas[1]}; enlarge data.canvases.')
      prepared.append((canvas, resized, scale))
    pending = []  # Every batch is dispatched before any result is fetched: preparing overlaps computing.
    for canvas in self.canvases:
      rows = [i for i, p in enumerate(prepared) if p[0] == canvas]
      for start in range(0, len(rows), self.batch_size):
        batch_rows = rows[start:start + self.batch_size]
        pixels = np.zeros((self.batch_size, *canvas, 3), np.uint8)
        sizes = np.zeros((self.batch_size, 2), np.int32)
        for slot, i in enumerate(batch_rows):
          resized = prepared[i][1]
          pixels[slot, :resized.shape[0], :resized.shape[1]] = resized
          sizes[slot] = resized.shape[:2]
        pending.append((batch_rows, self._detect(self.variables, pixels, sizes)))
    results = [None] * len(images)
    for batch_rows, detections in pending:
      detections = jax.device_get(detections)
      for slot, i in enumerate(batch_rows):
        keep = detections['valid'][slot]
        results[i] = (inference.to_original_pixels(detections['boxes'][slot][keep], prepared[i][2]),
                      detections['scores'][slot][keep], detections['classes'][slot][keep])
    return results


def predict_split(predictor: Predictor, source, split: str, num_images: int,
                  slicing: slicing_lib.Slicing | None = None, skip_bad_images: bool = False):
  """Yields (image_id, `Prediction`) for the first `num_images` images of `split` of a data source
  (`fcos_jax.data.sources`), in its order, predicted in groups (their tiles batched together with `slicing`).

  An unreadable image is a DataError naming its file or, with `skip_bad_images`, yields (image_id,
  UnreadableImageError) in its turn; an image whose size differs from its annotation's is a DataError.
  """
  tf = _tf()
  records = source.records(split).take(num_images).map(
      lambda r: (r['image_id'], r['file'], r['orig_size'], source.read(r)), num_parallel_calls=tf.data.AUTOTUNE)
  group = []

  def flush():
    predictions = predictor.predict_arrays([image for _, _, image in group], [file for _, file, _ in group], slicing)
    done = [(image_id, found) for (image_id, _, _), found in zip(group, predictions)]
    group.clear()
    return done

  for image_id, file, size, encoded in records.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    file, image_id = file.decode(), int(image_id)
    try:
      image = decode(encoded, file)
    except UnreadableImageError as e:
      if not skip_bad_images:
        raise errors.DataError(f'{e} (data.skip_bad_images=true scores unreadable images as missed)') from None
      yield image_id, e
      continue
    if image.shape[:2] != tuple(size):
      raise errors.DataError(f'Image {file} is {image.shape[0]}x{image.shape[1]} but its annotation says '
                             f'{size[0]}x{size[1]}')
    group.append((image_id, file, image))
    if len(group) == 4 * predictor.batch_size:
      yield from flush()
  if group:
    yield from flush()
