"""Transforms: the resize rule against NumPy, boxes moving with the pixels, flip, canvases and GT padding."""

import numpy as np
import pytest
import tensorflow as tf

from fcos_jax.data import transforms

tf.config.set_visible_devices([], 'GPU')


def numpy_resized_size(h, w, short, max_size):
  scale = min(short / min(h, w), max_size / max(h, w))
  return int(scale * h + 0.5), int(scale * w + 0.5)


@pytest.mark.parametrize('short,max_size', [(800, 1333), (640, 1333), (320, 512), (736, 1333)])
def test_resized_size_matches_python_rule(short, max_size):
  rng = np.random.default_rng(0)
  sizes = np.concatenate([rng.integers(1, 1500, size=(300, 2)), [[480, 640], [427, 640], [640, 359], [1, 1000],
                                                                  [333, 500], [500, 333], [800, 1333]]])
  for h, w in sizes:
    new, scale = transforms.resized_size(tf.constant([h, w]), short, max_size)
    assert tuple(new.numpy()) == numpy_resized_size(int(h), int(w), short, max_size), (h, w)
    np.testing.assert_allclose(scale.numpy(), new.numpy() / np.array([h, w]), rtol=1e-6)


def test_resize_moves_boxes_with_the_pixels():
  image = np.zeros((100, 160, 3), np.uint8)
  image[20:60, 40:120] = 255
  boxes = tf.constant([[40., 20., 120., 60.], [150., 90., 170., 110.]])  # The second sticks out of the image.
  resized, out, scale = transforms.resize(tf.constant(image), boxes, short=200, max_size=1000)
  assert resized.dtype == tf.uint8 and resized.shape == (200, 320, 3)
  np.testing.assert_allclose(scale.numpy(), [2.0, 2.0])
  np.testing.assert_allclose(out.numpy(), [[80, 40, 240, 120], [300, 180, 320, 200]])
  ys, xs = np.nonzero(resized.numpy()[..., 0] > 127)
  assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (80, 40, 240, 120)


@pytest.mark.parametrize('hw,short', [((480, 640), 800), ((427, 640), 512), ((640, 359), 300), ((33, 17), 64)])
def test_resize_is_tf_bilinear_rounded(hw, short):
  image = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
  resized, _, _ = transforms.resize(tf.constant(image), tf.zeros([0, 4]), short=short, max_size=2000)
  want = np.floor(tf.image.resize(image.astype(np.float32), resized.shape[:2], method='bilinear').numpy() + 0.5)
  diff = np.abs(resized.numpy().astype(np.int32) - want)
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # Equal up to float rounding at exact halves.


def test_resize_caps_the_long_side():
  resized, _, scale = transforms.resize(tf.zeros([100, 400, 3], tf.uint8), tf.zeros([0, 4]), 800, 1333)
  assert resized.shape == (333, 1333, 3)
  np.testing.assert_allclose(scale.numpy(), [3.33, 1333 / 400], rtol=1e-6)


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
  out = transforms.prepare(example, 150, 1000, tf.constant(True), (256, 256), 4)
  assert out['image'].shape == (150, 200, 3) and out['image'].dtype == tf.uint8
  np.testing.assert_array_equal(out['size'].numpy(), [150, 200])
  np.testing.assert_allclose(out['scale'].numpy(), [0.5, 0.5])
  np.testing.assert_allclose(out['boxes'].numpy()[0], [200 - 55, 10, 200 - 5, 110])  # Flipped in the resized image.
  assert out['labels'].dtype == tf.int32 and out['valid'].dtype == tf.bool and int(out['dropped_boxes']) == 0
  np.testing.assert_array_equal(out['orig_size'].numpy(), [300, 400])


def test_prepare_flips_like_mirroring_the_resized_image():
  image = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
  boxes = tf.constant([[10., 20., 70., 80.], [100., 0., 130., 45.]])
  example = {'image': tf.constant(image), 'boxes': boxes, 'labels': tf.constant([1, 2]), 'image_id': tf.constant(1),
             'orig_size': tf.constant([90, 130]), 'file': tf.constant('a.jpg')}
  out = transforms.prepare(example, 160, 1000, tf.constant(True), (256, 256), 4)
  resized, resized_boxes, _ = transforms.resize(tf.constant(image), boxes, 160, 1000)
  mirrored, mirrored_boxes = transforms.hflip(resized, resized_boxes)
  diff = np.abs(out['image'].numpy().astype(np.int32) - mirrored.numpy().astype(np.int32))
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # Equal up to float rounding at exact halves.
  np.testing.assert_allclose(out['boxes'].numpy()[:2], mirrored_boxes.numpy(), rtol=1e-6, atol=1e-4)
