"""Padding invariance: an image's outputs depend on its pixels and reference extent only, never on the static
canvas or its batch-mates. The independent reference is the unmasked network (extent None) on a canvas of exactly
the extent, where a convolution's own zero padding and the GroupNorm statistics over the whole map are the rule."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax import locations, optim, train_lib
from fcos_jax.config import get_config
from fcos_jax.model import fcos
from fcos_jax.model.dcn import DeformConv2d
from fcos_jax.model.layers import GroupNorm
from fcos_jax import inference

STRIDES = (8, 16, 32, 64, 128)


def tiny_config(**model):
  c = get_config()
  c.model.update(dict(depth=18, stem_width=8, fpn_channels=16, head_convs=2, gn_groups=4, num_classes=3, **model))
  c.data.pad_stride = 32  # Extents that are not multiples of every stride: ceil at P6 and P7.
  c.postprocess.update(dict(score_threshold=0.0, max_detections=20, pre_nms_top_k=50))
  return c


def perturbed(variables, seed):
  """Random weights everywhere, frozen BN statistics included (a fresh init leaves BN the identity and the DCN
  offsets zero), so that every layer leaves nonzero values beyond the extent."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for key, (path, leaf) in zip(keys, leaves):
    noise = jax.random.normal(key, leaf.shape, leaf.dtype)
    name = path[-1].key
    out.append(1 + 0.2 * jnp.abs(noise) if name in ('var', 'scale') else leaf + 0.1 * noise)
  return jax.tree_util.tree_unflatten(tree, out)


def crop_points(values, canvas, extent, strides=STRIDES):
  """Per-point values [B, P, ...] on `canvas` -> those of the points that exist on a canvas of `extent`, in order."""
  out, start = [], 0
  for (h, w), (eh, ew) in zip(locations.feature_shapes(canvas, strides), locations.feature_shapes(extent, strides)):
    level = values[:, start:start + h * w].reshape(values.shape[0], h, w, *values.shape[2:])
    out.append(level[:, :eh, :ew].reshape(values.shape[0], eh * ew, *values.shape[2:]))
    start += h * w
  return np.concatenate(out, axis=1)


def on_canvas(pictures, canvas):
  """uint8 pictures [h, w, 3] at the top-left of zero canvases -> (images [B, H, W, 3], sizes [B, 2])."""
  images = np.zeros((len(pictures), *canvas, 3), np.uint8)
  for i, p in enumerate(pictures):
    images[i, :p.shape[0], :p.shape[1]] = p
  return images, np.asarray([p.shape[:2] for p in pictures], np.int32)


def picture(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.fast
def test_reference_extent_rounds_each_image_or_group_up():
  sizes = jnp.asarray([[100, 150], [130, 90], [0, 0], [256, 1]])
  np.testing.assert_array_equal(fcos.reference_extent(sizes, 32), [[128, 160], [160, 96], [0, 0], [256, 32]])
  np.testing.assert_array_equal(fcos.reference_extent(sizes, 128, group=2),
                                [[256, 256], [256, 256], [256, 128], [256, 128]])


@pytest.mark.fast
def test_inside_extent_keeps_the_points_of_the_extent_canvas():
  points = locations.make_points((256, 384), STRIDES, (64, 128, 256, 512))
  inside = np.asarray(locations.inside_extent(points, jnp.asarray([[128, 160], [256, 384], [0, 0]])))
  exact = locations.make_points((128, 160), STRIDES, (64, 128, 256, 512))
  np.testing.assert_array_equal(points.xy[inside[0]], exact.xy)  # Same points, same order.
  assert inside[1].all() and not inside[2].any()


@pytest.mark.fast
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_group_norm_statistics_over_the_extent_match_numpy(dtype):
  x = jax.random.normal(jax.random.key(0), (3, 9, 11, 8)) * 3 + 1
  extent = jnp.asarray([[5, 7], [9, 11], [1, 2]])
  layer = GroupNorm(4, dtype=jnp.dtype(dtype))
  variables = perturbed(layer.init(jax.random.key(1), x), 2)
  got = np.asarray(layer.apply(variables, x.astype(dtype), extent), np.float32)
  scale, bias = (np.asarray(variables['params'][k]) for k in ('scale', 'bias'))
  xs = np.asarray(x.astype(dtype), np.float64)
  for i, (eh, ew) in enumerate(np.asarray(extent)):
    crop = xs[i, :eh, :ew].reshape(eh, ew, 4, 2)
    mean, var = crop.mean(axis=(0, 1, 3), keepdims=True), crop.var(axis=(0, 1, 3), keepdims=True)
    want = ((crop - mean) / np.sqrt(var + 1e-5)).reshape(eh, ew, 8) * scale + bias
    tol = 1e-4 if dtype == 'float32' else 3e-2
    np.testing.assert_allclose(got[i, :eh, :ew], want, rtol=tol, atol=tol)
  # No extent: flax's GroupNorm over the whole map.
  whole = nn.GroupNorm(4, epsilon=1e-5, dtype=jnp.dtype(dtype)).apply(variables, x.astype(dtype))
  np.testing.assert_allclose(np.asarray(layer.apply(variables, x.astype(dtype)), np.float32),
                             np.asarray(whole, np.float32), rtol=tol, atol=tol)


@pytest.mark.fast
@pytest.mark.parametrize('stride', [1, 2])
def test_deformable_conv_on_a_bigger_canvas_equals_the_extent_canvas(stride):
  layer = DeformConv2d(6, 3, stride, use_bias=True)
  small = jax.random.normal(jax.random.key(0), (1, 9, 7, 4))
  big = jnp.zeros((1, 16, 12, 4)).at[:, :9, :7].set(small)
  big = big.at[:, 9:].set(5.0).at[:, :, 7:].set(-3.0)  # Garbage beyond the extent: the layer must not see it.
  variables = perturbed(layer.init(jax.random.key(1), small), 3)  # Offsets of a few pixels, some beyond the edge.
  want = np.asarray(layer.apply(variables, small))
  got = np.asarray(layer.apply(variables, big, jnp.asarray([[9, 7]])))
  eh, ew = want.shape[1:3]
  np.testing.assert_allclose(got[:, :eh, :ew], want, rtol=1e-5, atol=1e-5)


MODELS = {'frozen_bn_dcn': dict(dcn_stages=(5,), dcn_head='last'),
          'group_norm': dict(backbone_norm='group_norm', freeze_at=-1)}


@pytest.fixture(scope='module', params=sorted(MODELS))
def detector(request):
  config = tiny_config(**MODELS[request.param])
  model = fcos.build_model(config.model)
  variables = perturbed(fcos.init_variables(model, 0), 1)
  return config, model, variables


def test_model_on_a_bigger_canvas_equals_the_model_on_the_extent(detector):
  config, model, variables = detector
  pictures = [picture(100, 150, 0), picture(57, 31, 1)]
  extents = [(128, 160), (64, 32)]
  apply = jax.jit(model.apply)
  images, sizes = on_canvas(pictures, (256, 384))
  x = fcos.normalize_images(images, sizes, config.model.pixel_mean, config.model.pixel_std)
  got = apply(variables, x, extent=fcos.reference_extent(sizes, 32))
  for i, (p, extent) in enumerate(zip(pictures, extents)):
    one, size = on_canvas([p], extent)
    want = apply(variables, fcos.normalize_images(one, size, config.model.pixel_mean, config.model.pixel_std))
    for key in want:
      cropped = crop_points(np.asarray(got[key][i:i + 1]), (256, 384), extent)
      np.testing.assert_allclose(cropped, np.asarray(want[key]), rtol=2e-4, atol=2e-4, err_msg=key)


def test_detections_do_not_depend_on_the_canvas_or_the_batch(detector):
  config, model, variables = detector
  detect = jax.jit(inference.make_detect_fn(model, config))
  points = jax.jit(inference.make_detect_fn(model, config, outputs='points'))
  image = picture(100, 150, 0)
  runs = [([image], (128, 160)), ([image, picture(120, 250, 1)], (128, 256)),
          ([picture(250, 380, 2), image, picture(30, 40, 3)], (256, 384))]
  want, want_points = None, None
  for pictures, canvas in runs:
    at = next(i for i, p in enumerate(pictures) if p is image)
    images, sizes = on_canvas(pictures, canvas)
    got = jax.tree_util.tree_map(lambda v, at=at: np.asarray(v[at:at + 1]), detect(variables, images, sizes))
    per_point = points(variables, images, sizes)
    got_points = {k: crop_points(np.asarray(v[at:at + 1]), canvas, (128, 160)) for k, v in per_point.items()}
    inside = np.asarray(locations.inside_extent(locations.points_from_config(canvas, config), [[128, 160]]))
    assert np.all(np.asarray(per_point['scores'][at:at + 1])[~inside] == 0)  # Beyond the extent: score 0.
    if want is None:
      want, want_points = got, got_points
      assert want['valid'].sum() == config.postprocess.max_detections
      continue
    for key in ('boxes', 'scores'):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4, err_msg=key)
      np.testing.assert_allclose(got_points[key], want_points[key], rtol=1e-4, atol=1e-4, err_msg=key)
    np.testing.assert_array_equal(got['classes'], want['classes'])
    np.testing.assert_array_equal(got['valid'], want['valid'])


def test_masking_is_a_no_op_when_the_canvas_is_the_extent(detector):
  """Paddle's evaluation canvas is the image's size rounded up to 128: there the detector's outputs are the
  unmasked network's, which is what parity/compare.py compares with Paddle."""
  config, model, variables = detector
  images, sizes = on_canvas([picture(100, 250, 4)], (128, 256))
  x = fcos.normalize_images(images, sizes, config.model.pixel_mean, config.model.pixel_std)
  masked = model.apply(variables, x, extent=fcos.reference_extent(sizes, 128))
  plain = model.apply(variables, x)
  for key in plain:
    np.testing.assert_allclose(np.asarray(masked[key]), np.asarray(plain[key]), rtol=1e-6, atol=1e-6, err_msg=key)


def boxes_batch(pictures, canvas, seed):
  """A training batch of `pictures` on `canvas`, with three boxes inside each picture."""
  rng = np.random.default_rng(seed)
  images, sizes = on_canvas(pictures, canvas)
  boxes = []
  for h, w in sizes:
    xy = rng.uniform(0, [w * 0.6, h * 0.6], (3, 2))
    boxes.append(np.concatenate([xy, np.minimum(xy + rng.uniform(8, 60, (3, 2)), [w, h])], -1))
  n = len(pictures)
  return {'image': images, 'size': sizes, 'boxes': np.asarray(boxes, np.float32),
          'labels': rng.integers(0, 3, (n, 3)).astype(np.int32), 'valid': np.ones((n, 3), bool)}


@pytest.mark.parametrize('group', [1, 2])
def test_train_step_on_a_bigger_canvas_equals_the_step_on_the_extent(group):
  """Group 1: one image; group 2: two images whose group extent (the larger one's) is the small canvas."""
  config = tiny_config(backbone_norm='group_norm', freeze_at=-1)
  config.data.pad_group = group
  config.train.batch_size = group
  config.data.resize_on = 'host'
  config.optimizer.warmup_steps = 0
  pictures = [picture(100, 150, 0), picture(70, 90, 1)][:group]
  model = fcos.build_model(config.model)
  tx = optim.make_optimizer(config)
  step = jax.jit(train_lib.make_train_step(model, config, tx))
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('data',))
  results = []
  for canvas in ((128, 160), (256, 384)):
    state, _ = train_lib.create_state(model, tx, config, mesh)
    results.append(jax.device_get(step(state, boxes_batch(pictures, canvas, 5))))
  (small_state, small), (big_state, big) = results
  assert small['num_pos'] > 0 and small['num_pos'] == big['num_pos']
  for key in ('loss', 'cls', 'box', 'quality', 'grad_norm'):
    np.testing.assert_allclose(big[key], small[key], rtol=1e-4, err_msg=key)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         big_state.params, small_state.params)
