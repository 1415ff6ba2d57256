"""Device-side resize (data.resize_on='device') against the host path and OpenCV's INTER_LINEAR (re-derived in
NumPy): pixels within one level (the host path is exact: test_data_transforms), the same boxes bit for bit, and
batches of the shapes dataset that round-trip to the host path's batches."""

import jax
import numpy as np
import pytest
import tensorflow as tf

from fcos_jax import resize
from fcos_jax.data import pipeline, sources, transforms
import opencv_linear
from test_data_pipeline import make_config, take

pytestmark = pytest.mark.fast

CANVAS = (512, 512)  # Holds both orientations.
# (h, w) originals: down- and up-scaled, extreme aspect ratios, one pixel wide or high, sides whose s * dim rounds.
SIZES = ((300, 400), (427, 640), (47, 33), (1, 90), (90, 1), (380, 500), (200, 120), (211, 157), (301, 397))


def example(h, w, seed):
  rng = np.random.default_rng(seed)
  x1, y1 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
  boxes = np.array([[x1, y1, x1 + rng.uniform(0.25, 0.5) * w, y1 + rng.uniform(0.25, 0.5) * h], [0, 0, w, h]],
                   np.float32)
  return {'image': tf.constant(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), 'boxes': tf.constant(boxes),
          'labels': tf.constant([2, 0]), 'image_id': tf.constant(seed), 'orig_size': tf.constant([h, w]),
          'file': tf.constant(f'{seed}.jpg')}


def host_and_device(short, max_size, flip, mode):
  """The host path's elements, and the device path's elements with their images resized by resize_to_canvas."""
  examples = [example(h, w, i) for i, (h, w) in enumerate(SIZES)]
  host = [transforms.prepare(e, short, max_size, flip, CANVAS, 4, mode) for e in examples]
  device = [transforms.prepare(e, short, max_size, flip, CANVAS, 4, mode, resize_image=False) for e in examples]
  source = np.zeros((len(SIZES), max(h for h, _ in SIZES), max(w for _, w in SIZES), 3), np.uint8)
  for i, e in enumerate(device):
    image = e['image'].numpy()
    source[i, :image.shape[0], :image.shape[1]] = image
  stack = lambda key: np.stack([e[key].numpy() for e in device])  # noqa: E731
  canvases = jax.jit(resize.resize_to_canvas, static_argnums=5)(source, stack('orig_size'), stack('size'),
                                                                 stack('scale'), stack('flip'), CANVAS)
  return host, device, np.asarray(canvases)


def assert_same_pixels(got, want):
  """Equal but where the device's float32 sampling grid rounds a coordinate otherwise than the host's float64 one:
  at most one level, and rarely."""
  diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


@pytest.mark.parametrize('short,max_size,flip,mode', [(320, 480, False, 'paddle'), (320, 480, True, 'paddle'),
                                                       (150, 480, True, 'paddle'), (384, 384, False, 'paddle'),
                                                       (320, 480, True, 'torchvision')])
def test_device_resize_matches_the_host_path_and_opencv(short, max_size, flip, mode):
  host, device, canvases = host_and_device(short, max_size, flip, mode)
  for i, (h, d) in enumerate(zip(host, device)):
    size = h['size'].numpy()
    want = np.zeros((*CANVAS, 3), np.uint8)
    want[:size[0], :size[1]] = h['image'].numpy()
    assert_same_pixels(canvases[i], want)
    original = example(*SIZES[i], i)['image'].numpy()
    opencv = opencv_linear.resize(original[:, ::-1] if flip else original, size, h['scale'].numpy())
    for pixels in (canvases[i][:size[0], :size[1]], h['image'].numpy()):
      assert np.abs(pixels.astype(np.int32) - opencv).max() <= 1
    assert not canvases[i, size[0]:].any() and not canvases[i, :, size[1]:].any()  # Zero padding.
    for key in ('boxes', 'labels', 'valid', 'scale', 'size', 'orig_size', 'image_id', 'dropped_boxes'):
      np.testing.assert_array_equal(d[key].numpy(), h[key].numpy(), err_msg=key)  # Bit for bit.
    np.testing.assert_array_equal(d['image'].numpy(), example(*SIZES[i], i)['image'].numpy())
    assert bool(d['flip'].numpy()) == flip


def test_device_resize_names_an_image_that_does_not_fit():
  with pytest.raises(tf.errors.InvalidArgumentError, match='Image 1.jpg resized to 320x480 does not fit'):
    transforms.prepare(example(427, 640, 1), 320, 480, False, (256, 512), 4, 'paddle', resize_image=False)


@pytest.fixture(scope='module')
def root(shapes_dataset):
  return shapes_dataset(16, 10)


def device_canvases(batch):
  """A device-path batch (NumPy) -> (the batch with its canvases as `image`, canvas)."""
  batch, canvas = resize.split_canvas(batch)
  images = resize.resize_to_canvas(batch['image'], batch['orig_size'], batch['size'], batch['scale'], batch['flip'],
                                   canvas)
  return {**{k: v for k, v in batch.items() if k != 'flip'}, 'image': np.asarray(images)}, canvas


def assert_same_batches(host_batches, device_batches):
  for host, device in zip(host_batches, device_batches, strict=True):
    device, canvas = device_canvases(device)
    assert canvas == host['image'].shape[1:3]
    assert set(device) == set(host)
    assert_same_pixels(device['image'], host['image'])
    for key in set(host) - {'image'}:
      np.testing.assert_array_equal(device[key], host[key], err_msg=key)


def test_shapes_training_batches_round_trip(root):
  host = take(pipeline.make_train_dataset(make_config(root)), 6)
  device = take(pipeline.make_train_dataset(make_config(root, resize_on='device')), 6)
  shapes = pipeline.source_canvases(sources.make_source(make_config(root)), 'train', make_config(root).data.canvases)
  assert {b['image'].shape[1:3] for b in device} <= set(shapes)  # Decoded, padded to the bucket's largest original.
  assert any(b['flip'].any() for b in device) and any((~b['flip']).any() for b in device)
  assert_same_batches(host, device)


def test_shapes_evaluation_batches_round_trip(root):
  host, host_info = pipeline.make_eval_dataset(make_config(root))
  device, device_info = pipeline.make_eval_dataset(make_config(root, resize_on='device'))
  assert len(host) == len(device) and host_info.num_images == device_info.num_images
  device = list(device)
  assert not any(b['flip'].any() for b in device)
  assert_same_batches(list(host), device)


def test_source_canvases_hold_every_original_of_their_bucket(root):
  config = make_config(root)
  source = sources.make_source(config)
  sizes = source.index('train').sizes
  shapes = pipeline.source_canvases(source, 'train', config.data.canvases)
  landscape = sizes[sizes[:, 1] >= sizes[:, 0]]
  portrait = sizes[sizes[:, 1] < sizes[:, 0]]
  assert shapes == [tuple(landscape.max(axis=0)), tuple(portrait.max(axis=0))]


def test_split_canvas_of_a_host_batch_is_its_image_shape():
  batch = {'image': np.zeros((2, 128, 256, 3), np.uint8), 'size': np.ones((2, 2), np.int32)}
  assert resize.split_canvas(batch) == (batch, (128, 256))


def test_auto_resizes_on_the_host_when_jax_runs_on_the_cpu():
  assert jax.default_backend() == 'cpu'
  assert [resize.side(v) for v in ('auto', 'host', 'device')] == ['host', 'host', 'device']


def test_a_saved_data_position_resumes_on_the_other_side(root, tmp_path):
  """resize_on='auto' may resolve otherwise on resume (CPU then GPU): the data order and boxes continue unchanged."""
  host = iter(pipeline.make_train_dataset(make_config(root, resize_on='host')))
  take(host, 3)
  path = tf.train.Checkpoint(iterator=host).write(str(tmp_path / 'position'))
  want = take(host, 3)
  device = iter(pipeline.make_train_dataset(make_config(root, resize_on='device')))
  tf.train.Checkpoint(iterator=device).read(path).assert_consumed()
  assert_same_batches(want, take(device, 3))
