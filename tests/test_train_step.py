"""The jitted train step: data-parallel over 8 devices equals 1 device; frozen weights never move; compiles once."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fcos_jax import config as config_lib
from fcos_jax.config import get_config
from fcos_jax import losses, optim, resize, train_lib
from fcos_jax.model import fcos


def tiny_config():
  c = get_config()
  c.model.update(dict(depth=18, stem_width=8, fpn_channels=16, head_convs=2, gn_groups=4, num_classes=3))
  c.train.batch_size = 8
  c.optimizer.warmup_steps = 0
  c.data.max_boxes = 4
  return c


def random_batch(seed, batch=8, canvas=(128, 256), num_boxes=4):
  rng = np.random.default_rng(seed)
  h, w = canvas
  xy = rng.uniform(0, [w - 40, h - 40], (batch, num_boxes, 2))
  wh = rng.uniform(10, 90, (batch, num_boxes, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(np.float32)
  valid = rng.random((batch, num_boxes)) < 0.8
  return {'image': rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8),
          'boxes': np.where(valid[..., None], boxes, 0).astype(np.float32),
          'labels': np.where(valid, rng.integers(0, 3, (batch, num_boxes)), -1).astype(np.int32),
          'valid': valid,
          'size': np.tile(np.array([[h - 8, w - 16]], np.int32), (batch, 1))}


def run_steps(config, devices, batches, dtype=None):
  """The train steps of `batches` -> (state, last metrics, frozen weights at the start); `dtype`: the variables
  (and the optimizer state) in that dtype instead of float32."""
  mesh = Mesh(np.asarray(devices), ('data',))
  model = fcos.build_model(config.model)
  tx = optim.make_optimizer(config)
  state, shardings = train_lib.create_state(model, tx, config, mesh)
  if dtype is not None:
    cast = jax.tree_util.tree_map(lambda x: x.astype(dtype), (state.params, state.frozen))
    state = state.replace(params=cast[0], frozen=cast[1], opt_state=tx.init(cast[0]))
    shardings = jax.tree_util.tree_map(lambda _: NamedSharding(mesh, P()), state)
  step = jax.jit(train_lib.make_train_step(model, config, tx), donate_argnums=0, static_argnames='canvas',
                 out_shardings=(shardings, NamedSharding(mesh, P())))
  frozen_before = jax.device_get(state.frozen)
  for batch in batches:
    batch, canvas = resize.split_canvas(batch)  # Pipeline batches of either data.resize_on side.
    batch = jax.device_put(batch, NamedSharding(mesh, P('data')))
    state, metrics = step(state, batch, canvas=canvas)
  return state, metrics, frozen_before


@pytest.fixture(scope='module')
def two_steps_each():
  config = tiny_config()
  batches = [random_batch(0), random_batch(1)]
  return run_steps(config, jax.devices()[:1], batches), run_steps(config, jax.devices(), batches)


@pytest.mark.devices(8)
def test_sharded_step_equals_single_device_step(two_steps_each):
  (single, m1, _), (sharded, m8, _) = two_steps_each
  assert int(single.step) == int(sharded.step) == 2
  np.testing.assert_allclose(float(m1['loss']), float(m8['loss']), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(sharded.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_frozen_weights_unchanged_and_params_moved(two_steps_each):
  (_, _, _), (state, metrics, frozen_before) = two_steps_each
  chex.assert_trees_all_equal(jax.device_get(state.frozen), frozen_before)
  assert jax.tree_util.tree_leaves(frozen_before)  # The tiny model does have frozen weights (stem, res2, BN).
  initial = fcos.init_variables(fcos.build_model(tiny_config().model), 0)['params']
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(initial),
                                                    jax.tree_util.tree_leaves(jax.device_get(state.params)))]
  assert all(moved)  # Levels without positives move too (focal loss, weight decay), if only slightly.
  assert np.isfinite(float(metrics['loss'])) and float(metrics['num_pos']) > 0


def test_a_nan_loss_reaches_the_metrics_and_stops_with_the_step(monkeypatch):
  fcos_loss = losses.fcos_loss

  def poisoned(outputs, tg, loss_config, norms=None, inside=None):
    parts = fcos_loss(outputs, tg, loss_config, norms, inside)
    return {**parts, 'loss': parts['loss'] * jnp.nan}

  monkeypatch.setattr(losses, 'fcos_loss', poisoned)
  _, metrics, _ = run_steps(tiny_config(), jax.devices(), [random_batch(0)])
  assert np.isnan(float(metrics['loss'])) and np.isnan(float(metrics['grad_norm']))
  with pytest.raises(FloatingPointError, match='step 2'):
    train_lib._check_finite(2, {k: float(v) for k, v in metrics.items()})  # pylint: disable=protected-access


def test_bfloat16_compute_keeps_float32_parameters():
  config = tiny_config()
  config.model.dtype = 'bfloat16'
  state, metrics, _ = run_steps(config, jax.devices(), [random_batch(0)])
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(state.params)} == {jnp.dtype('float32')}
  assert metrics['loss'].dtype == jnp.float32 and np.isfinite(float(metrics['loss']))
  _, f32_metrics, _ = run_steps(tiny_config(), jax.devices(), [random_batch(0)])
  np.testing.assert_allclose(float(metrics['loss']), float(f32_metrics['loss']), rtol=0.05)


def test_loss_falls_on_a_batch_it_can_overfit():
  config = tiny_config()
  config.optimizer.lr = 0.02
  batch = random_batch(3)
  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  model = fcos.build_model(config.model)
  tx = optim.make_optimizer(config)
  state, shardings = train_lib.create_state(model, tx, config, mesh)
  step = jax.jit(train_lib.make_train_step(model, config, tx), donate_argnums=0,
                 out_shardings=(shardings, NamedSharding(mesh, P())))
  batch = jax.device_put(batch, NamedSharding(mesh, P('data')))
  losses = []
  for _ in range(25):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.8 * losses[0], losses  # 2.78 -> 1.95 when written.


def relative_differences(a, b):
  """||a - b|| / ||b|| for each leaf of two parameter trees."""
  return [float(np.linalg.norm(np.asarray(x) - np.asarray(y)) / max(np.linalg.norm(np.asarray(y)), 1e-30))
          for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]


@pytest.mark.parametrize('clamp', [True, False])
@pytest.mark.parametrize('num_devices, batch_size', [(1, 8), pytest.param(8, 32, marks=pytest.mark.devices(8))])
def test_grad_accumulation_equals_the_one_shot_update(clamp, num_devices, batch_size):
  """k=4 micro-batches give the parameters of k=1 on the same global batches after 3 steps (global normalisers)."""
  batches = [random_batch(seed, batch=batch_size, canvas=(128, 128)) for seed in range(3)]
  params, losses_seen = {}, {}
  for k in (1, 4):
    config = tiny_config()
    config.train.update(dict(batch_size=batch_size, grad_accum_steps=k))
    config.loss.clamp_normalizers = clamp
    config.optimizer.lr = 0.02
    state, metrics, _ = run_steps(config, jax.devices()[:num_devices], batches)
    params[k], losses_seen[k] = jax.device_get(state.params), {n: float(v) for n, v in metrics.items()}
  assert max(relative_differences(params[4], params[1])) < 1e-5
  for name in ('loss', 'cls', 'box', 'quality', 'num_pos', 'grad_norm'):
    np.testing.assert_allclose(losses_seen[4][name], losses_seen[1][name], rtol=1e-5, err_msg=name)
  initial = jax.tree_util.tree_leaves(fcos.init_variables(fcos.build_model(tiny_config().model), 0)['params'])
  for a, b, before in zip(jax.tree_util.tree_leaves(params[4]), jax.tree_util.tree_leaves(params[1]), initial):
    # Small against what the 3 steps changed, too (at most 5e-5 of it when written, single device).
    assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(b - before)


def varied_batch(seed, batch=16, canvas=(64, 64), num_boxes=3):
  """random_batch with images of their own sizes (16 pixels a side to the canvas) and boxes inside them."""
  rng = np.random.default_rng(seed)
  size = rng.integers(16, np.array(canvas) + 1, (batch, 2)).astype(np.int32)  # (h, w)
  wh = rng.uniform(6, 16, (batch, num_boxes, 2))
  xy = rng.uniform(0, 1, (batch, num_boxes, 2)) * (size[:, None, ::-1] - wh)
  valid = rng.random((batch, num_boxes)) < 0.8
  return {'image': rng.integers(0, 256, (batch, *canvas, 3), dtype=np.uint8),
          'boxes': np.where(valid[..., None], np.concatenate([xy, xy + wh], -1), 0).astype(np.float32),
          'labels': np.where(valid, rng.integers(0, 3, (batch, num_boxes)), -1).astype(np.int32),
          'valid': valid, 'size': size}


def test_grad_accumulation_computes_the_function_of_data_parallelism():
  """k=4 micro-batches on 4 devices give the parameters of k=1 on the same 4 devices after a step, with images of
  different sizes, so that the images have 6 extents (data.pad_stride=16) and each data.pad_group of 2 images
  is split over two micro-batches. In float64, where rounding vanishes: the scan path computes the same function
  as the plain one (a mix-up of extents, points, targets or normalisers between micro-batches shows at >1e-4).
  In float32 the two paths round differently; docs/training.md states by how much."""
  batches = [varied_batch(2)]
  assert len({tuple(e) for e in np.asarray(fcos.reference_extent(batches[0]['size'], 16, 2))}) == 6
  params = {}
  with jax.enable_x64(True):
    for k in (1, 4):
      config = tiny_config()
      config.model.dtype = 'float64'
      config.data.pad_stride = 16
      config.train.update(dict(batch_size=16, grad_accum_steps=k))
      config.optimizer.lr = 0.02
      state, _, _ = run_steps(config, jax.devices()[:4], batches, dtype=jnp.float64)
      params[k] = jax.device_get(state.params)
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params[1])} == {np.dtype('float64')}
  # 6e-16 when written; the loss is computed in float32, whose rounding may differ between the paths (~1e-8).
  assert max(relative_differences(params[4], params[1])) < 1e-7


def test_grad_accumulation_holds_one_micro_batch_of_activations():
  """XLA's temporary buffers of the step shrink with k: the scan keeps one micro-batch's activations alive."""
  temp = {}
  for k in (1, 4):
    config = tiny_config()
    config.train.update(dict(batch_size=16, grad_accum_steps=k))
    mesh = Mesh(np.asarray(jax.devices()[:1]), ('data',))
    model = fcos.build_model(config.model)
    tx = optim.make_optimizer(config)
    state, shardings = train_lib.create_state(model, tx, config, mesh)
    step = jax.jit(train_lib.make_train_step(model, config, tx), out_shardings=(shardings, NamedSharding(mesh, P())))
    batch = jax.device_put(random_batch(0, batch=16, canvas=(256, 256)), NamedSharding(mesh, P('data')))
    temp[k] = step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
  assert temp[4] < 0.4 * temp[1], temp


def test_grad_accumulation_config_is_checked():
  config = tiny_config()
  config.data.root = 'data/coco'  # Not read: only the checks run.
  config.train.update(dict(batch_size=16, grad_accum_steps=4))
  with pytest.raises(ValueError, match=r'train.batch_size=16 is not divisible by train.grad_accum_steps=4 x the 8'):
    config_lib.validate(config, num_devices=8)
  config_lib.validate(config, num_devices=4)
  config.train.grad_accum_steps = 3
  with pytest.raises(ValueError, match=r'train.batch_size=16 is not divisible by train.grad_accum_steps=3$'):
    config_lib.validate(config)  # Before the devices are known.
  config.train.grad_accum_steps = 0
  with pytest.raises(ValueError, match='train.grad_accum_steps=0 must be positive'):
    config_lib.validate(config, num_devices=1)
