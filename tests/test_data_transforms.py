"""Transforms: the resize rule against NumPy, boxes moving with the pixels, flip, canvases and GT padding."""

import math

import numpy as np
import pytest
import tensorflow as tf

from fcos_jax.data import transforms
import opencv_linear

pytestmark = pytest.mark.fast

tf.config.set_visible_devices([], 'GPU')


def python_resize_rule(h, w, short, max_size, mode):
  """PaddleDetection's Resize (keep_ratio, target [short, max_size]) and torchvision's transform, in Python floats:
  (new size, scale (sy, sx)). Python's round() rounds halves to even, as OpenCV's cvRound does. A side that would
  be 0 pixels (both references fail there) is 1."""
  s = min(short / min(h, w), max_size / max(h, w))
  if mode == 'paddle':
    return (max(round(s * h), 1), max(round(s * w), 1)), (s, s)
  new = (max(math.floor(s * h), 1), max(math.floor(s * w), 1))
  return new, (new[0] / h, new[1] / w)


SIZES = [[480, 640], [427, 640], [640, 359], [1, 1000], [333, 500], [500, 333], [800, 1333], [600, 512], [426, 640]]


@pytest.mark.parametrize('mode', ['paddle', 'torchvision'])
@pytest.mark.parametrize('short,max_size', [(800, 1333), (640, 1333), (320, 512), (736, 1333)])
def test_resized_size_matches_the_references_rule(short, max_size, mode):
  rng = np.random.default_rng(0)
  sizes = np.concatenate([rng.integers(1, 1500, size=(300, 2)), SIZES])
  for h, w in sizes:
    new, scale, extent = transforms.resized_size(tf.constant([h, w]), short, max_size, mode)
    want_new, want_scale = python_resize_rule(int(h), int(w), short, max_size, mode)
    assert tuple(new.numpy()) == want_new, (h, w)
    np.testing.assert_array_equal(scale.numpy(), np.float32(want_scale), err_msg=str((h, w)))
    want_extent = np.array([h, w]) * want_scale[0] if mode == 'paddle' else want_new
    np.testing.assert_array_equal(extent.numpy(), np.float32(want_extent))


def test_paddle_size_rounds_halves_to_even():
  """640 x 850 and 640 x 854 to short side 800 (s = 1.25): 1062.5 -> 1062 and 1067.5 -> 1068, as cv2.resize's
  cvRound does (OpenCV 4.11 gives 532 for 426 * 1.25 and 538 for 430 * 1.25); floor(x + 0.5) would give 1063."""
  for w, want in ((850, 1062), (854, 1068)):
    new, scale, _ = transforms.resized_size(tf.constant([640, w]), 800, 1333, 'paddle')
    assert tuple(new.numpy()) == (800, want) and tuple(scale.numpy()) == (1.25, 1.25)


def test_resize_moves_boxes_with_the_pixels():
  image = np.zeros((100, 160, 3), np.uint8)
  image[20:60, 40:120] = 255
  boxes = tf.constant([[40., 20., 120., 60.], [150., 90., 170., 110.]])  # The second sticks out of the image.
  resized, out, scale = transforms.resize(tf.constant(image), boxes, 200, 1000, 'paddle')
  assert resized.dtype == tf.uint8 and resized.shape == (200, 320, 3)
  np.testing.assert_allclose(scale.numpy(), [2.0, 2.0])
  np.testing.assert_allclose(out.numpy(), [[80, 40, 240, 120], [300, 180, 320, 200]])
  ys, xs = np.nonzero(resized.numpy()[..., 0] > 127)
  assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (80, 40, 240, 120)


def test_paddle_boxes_scale_by_s_and_clip_to_s_times_the_size():
  """600x512 to short side 800: s = 1.5625, the image 938 (937.5 rounded to even) x 800, boxes times s on both axes
  and clipped at s * 600 = 937.5, as PaddleDetection's Resize does (not at 938, and not by 938 / 600)."""
  boxes = tf.constant([[10., 100., 500., 600.]])
  resized, out, scale = transforms.resize(tf.zeros([600, 512, 3], tf.uint8), boxes, 800, 1333, 'paddle')
  assert resized.shape == (938, 800, 3)
  np.testing.assert_array_equal(scale.numpy(), [1.5625, 1.5625])
  np.testing.assert_array_equal(out.numpy(), [[15.625, 156.25, 781.25, 937.5]])


# (h, w, short, max_size): up- and down-scaling, sizes whose s * dim ends in .5 (rounded to even) or just off it,
# the long side capping the scale, one pixel high.
RESIZES = [(480, 640, 800, 1333), (427, 640, 800, 1333), (600, 512, 800, 1333), (640, 426, 800, 1333),
           (333, 500, 640, 1333), (1000, 1500, 500, 1333), (900, 701, 549, 1333), (47, 33, 64, 2000),
           (37, 301, 100, 120), (1, 90, 320, 480), (211, 157, 97, 1333)]


@pytest.mark.parametrize('h,w,short,max_size', RESIZES)
def test_resize_is_opencv_linear_with_the_scale_itself(h, w, short, max_size):
  """OpenCV's INTER_LINEAR bit for bit (its fixed-point arithmetic re-derived in NumPy) at cv2.resize's size for
  fx = fy = s; sampling with new / old instead is up to 77 levels off on this noise (600x512)."""
  image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
  resized, _, scale = transforms.resize(tf.constant(image), tf.zeros([0, 4]), short, max_size, 'paddle')
  s = min(short / min(h, w), max_size / max(h, w))
  want = opencv_linear.resize(image, opencv_linear.output_size(h, w, s), (s, s))
  np.testing.assert_array_equal(resized.numpy(), want)


@pytest.mark.parametrize('h,w,short,max_size', RESIZES[:4])
def test_torchvision_mode_samples_with_new_over_old(h, w, short, max_size):
  """torchvision's interpolate (recompute_scale_factor): the grid (o + 0.5) * old / new - 0.5 per axis, at the
  floored size, which is what OpenCV's arithmetic computes with that scale per axis."""
  image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
  resized, _, scale = transforms.resize(tf.constant(image), tf.zeros([0, 4]), short, max_size, 'torchvision')
  new, _ = python_resize_rule(h, w, short, max_size, 'torchvision')
  want = opencv_linear.resize(image, new, (new[0] / h, new[1] / w))
  np.testing.assert_array_equal(resized.numpy(), want)


def test_resize_caps_the_long_side():
  resized, _, scale = transforms.resize(tf.zeros([100, 400, 3], tf.uint8), tf.zeros([0, 4]), 800, 1333, 'paddle')
  assert resized.shape == (333, 1333, 3)  # 99.99 x 1333.
  np.testing.assert_array_equal(scale.numpy(), np.float32([3.3325, 3.3325]))


def test_hflip_mirrors_pixels_and_boxes():
  image = np.zeros((10, 20, 3), np.uint8)
  image[2:5, 3:8] = 200
  flipped, boxes = transforms.hflip(tf.constant(image), tf.constant([[3., 2., 8., 5.]]))
  np.testing.assert_allclose(boxes.numpy(), [[12., 2., 17., 5.]])
  ys, xs = np.nonzero(flipped.numpy()[..., 0])
  assert (xs.min(), xs.max() + 1) == (12, 17)
  again, back = transforms.hflip(flipped, boxes)
  np.testing.assert_array_equal(again.numpy(), image)
  np.testing.assert_allclose(back.numpy(), [[3., 2., 8., 5.]])


def test_random_short_side_is_seeded_and_covers_all_sizes():
  sizes = (640, 672, 704, 736, 768, 800)
  draws = [int(transforms.random_short_side(sizes, tf.constant([3, i]))) for i in range(200)]
  assert set(draws) == set(sizes)
  assert draws == [int(transforms.random_short_side(sizes, tf.constant([3, i]))) for i in range(200)]


def test_canvas_by_orientation():
  canvases = ((896, 1408), (1408, 896))
  assert transforms.canvas_choice(canvases) == (0, 1)
  sizes = np.array([[480, 640], [640, 480], [500, 500]])
  np.testing.assert_array_equal(transforms.canvas_index(sizes, canvases), [0, 1, 0])
  np.testing.assert_array_equal(transforms.canvas_index(tf.constant(sizes), canvases).numpy(), [0, 1, 0])
  assert transforms.canvas_choice(((640, 640),)) == (0, 0)  # One square canvas takes both orientations.


def test_fit_canvas_names_an_image_that_does_not_fit():
  np.testing.assert_array_equal(transforms.fit_canvas(tf.constant([3, 5]), (3, 8), tf.constant('x.jpg')), [3, 5])
  with pytest.raises(tf.errors.InvalidArgumentError, match='Image big.jpg resized to 5x9 does not fit'):
    transforms.fit_canvas(tf.constant([5, 9]), (8, 8), tf.constant('big.jpg'))


def test_pad_boxes_pads_and_keeps_the_largest():
  boxes = tf.constant([[0., 0., 2., 2.], [0., 0., 10., 10.], [0., 0., 1., 1.], [0., 0., 5., 5.]])
  labels = tf.constant([1, 2, 3, 4])
  out, out_labels, valid, dropped = transforms.pad_boxes(boxes, labels, 6)
  assert out.shape == (6, 4) and int(dropped) == 0
  np.testing.assert_array_equal(out_labels.numpy(), [1, 2, 3, 4, -1, -1])
  np.testing.assert_array_equal(valid.numpy(), [True] * 4 + [False] * 2)
  assert out.numpy()[4:].sum() == 0
  out, out_labels, valid, dropped = transforms.pad_boxes(boxes, labels, 2)
  np.testing.assert_array_equal(out_labels.numpy(), [2, 4])  # The two largest, in their original order.
  assert valid.numpy().all() and int(dropped) == 2
  out, out_labels, valid, dropped = transforms.pad_boxes(tf.zeros([0, 4]), tf.zeros([0], tf.int32), 3)
  assert not valid.numpy().any() and (out_labels.numpy() == -1).all() and int(dropped) == 0


def test_prepare_gives_the_batch_contract():
  example = {'image': tf.zeros([300, 400, 3], tf.uint8), 'boxes': tf.constant([[10., 20., 110., 220.]]),
             'labels': tf.constant([3]), 'image_id': tf.constant(42), 'orig_size': tf.constant([300, 400]),
             'file': tf.constant('a.jpg')}
  out = transforms.prepare(example, 150, 1000, tf.constant(True), (256, 256), 4, 'paddle')
  assert out['image'].shape == (150, 200, 3) and out['image'].dtype == tf.uint8
  np.testing.assert_array_equal(out['size'].numpy(), [150, 200])
  np.testing.assert_allclose(out['scale'].numpy(), [0.5, 0.5])
  np.testing.assert_allclose(out['boxes'].numpy()[0], [200 - 55, 10, 200 - 5, 110])  # Flipped in the resized image.
  assert out['labels'].dtype == tf.int32 and out['valid'].dtype == tf.bool and int(out['dropped_boxes']) == 0
  np.testing.assert_array_equal(out['orig_size'].numpy(), [300, 400])


@pytest.mark.parametrize('on_host', [True, False])
def test_prepare_flips_before_resizing(on_host):
  """PaddleDetection's order, RandomFlip then Resize: the mirrored original at OpenCV's grid, boxes x1' = w - x2,
  then times s. 90x131 to short side 160: s * 131 = 232.9 -> 233 pixels, so mirroring the resized image instead
  would sample other points. Without resizing on the host, the boxes are the same and the image is left as is."""
  image = np.random.default_rng(0).integers(0, 256, (90, 131, 3), dtype=np.uint8)
  boxes = np.array([[10., 20., 70., 80.], [100., 0., 131., 45.]], np.float32)
  example = {'image': tf.constant(image), 'boxes': tf.constant(boxes), 'labels': tf.constant([1, 2]),
             'image_id': tf.constant(1), 'orig_size': tf.constant([90, 131]), 'file': tf.constant('a.jpg')}
  out = transforms.prepare(example, 160, 1000, tf.constant(True), (256, 256), 4, 'paddle', resize_image=on_host)
  s = 160 / 90
  if on_host:
    np.testing.assert_array_equal(out['image'].numpy(), opencv_linear.resize(image[:, ::-1], (160, 233), (s, s)))
  else:
    np.testing.assert_array_equal(out['image'].numpy(), image)
  flipped = np.stack([131 - boxes[:, 2], boxes[:, 1], 131 - boxes[:, 0], boxes[:, 3]], -1)
  np.testing.assert_array_equal(out['boxes'].numpy()[:2], flipped * np.float32(s))
  np.testing.assert_array_equal(out['size'].numpy(), [160, 233])
