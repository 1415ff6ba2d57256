"""Model: output shapes, parameter count, frozen structure, conv padding semantics, one trace per shape."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fcos_jax.config import get_config
from fcos_jax import locations
from fcos_jax.model import fcos
from fcos_jax.model.layers import Conv2d, FrozenBatchNorm


def tiny_model_config(**kw):
  m = get_config().model
  m.update(dict(depth=18, stem_width=8, fpn_channels=16, head_convs=2, gn_groups=4, num_classes=3))
  m.update(kw)
  return m


@pytest.mark.fast
def test_r50_parameter_count_and_output_shapes():
  model = fcos.build_model(get_config().model)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128, 128, 3)))
  assert fcos.count_parameters(variables) == 32_297_370  # Paddle's R50 FCOS, BN running stats excluded.
  out = jax.eval_shape(model.apply, variables, jnp.zeros((2, 896, 1408, 3)))
  assert out['cls_logits'].shape == (2, 26_257, 80)
  assert out['reg'].shape == (2, 26_257, 4)
  assert out['ctr_logits'].shape == (2, 26_257)
  assert len(locations.make_points((896, 1408), (8, 16, 32, 64, 128), (64, 128, 256, 512)).xy) == 26_257


@pytest.mark.fast
def test_frozen_collection_holds_stem_res2_and_every_bn():
  model = fcos.build_model(get_config().model)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128, 128, 3)))
  paths = lambda tree: {'/'.join(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}  # noqa
  frozen, params = paths(variables['frozen']), paths(variables['params'])
  assert 'backbone/conv1/conv/kernel' in frozen and 'backbone/res2a/short/conv/kernel' in frozen
  assert all('/norm/' not in p or p.startswith('fcos_head') for p in params)  # Only the head's GroupNorm trains.
  assert not any(p.startswith(('backbone/conv1', 'backbone/res2')) for p in params)
  assert 'backbone/res3a/branch2b/conv/kernel' in params
  assert {p.rsplit('/', 1)[1] for p in frozen if '/norm/' in p} == {'scale', 'bias', 'mean', 'var'}


@pytest.fixture(scope='module')
def tiny():
  model = fcos.build_model(tiny_model_config())
  return model, fcos.init_variables(model, 0)


def test_tiny_model_gradients_reach_trainable_not_frozen(tiny):
  model, variables = tiny
  images = jax.random.normal(jax.random.key(1), (1, 128, 192, 3))

  def loss(params):
    out = model.apply({'params': params, 'frozen': variables['frozen']}, images)
    return sum(jnp.sum(v ** 2) for v in out.values())

  grads = jax.jit(jax.grad(loss))(variables["params"])
  assert float(jnp.abs(grads['backbone']['res3a']['branch2a']['conv']['kernel']).sum()) > 0
  assert float(jnp.abs(grads['fcos_head']['p3_feat']['scale_reg'])) > 0


def test_points_match_model_outputs_on_odd_canvas(tiny):
  model, variables = tiny
  out = jax.eval_shape(model.apply, variables, jnp.zeros((1, 200, 333, 3)))
  pts = locations.make_points((200, 333), (8, 16, 32, 64, 128), (64, 128, 256, 512))
  assert out['reg'].shape[1] == len(pts.xy)


@pytest.mark.fast
def test_conv_pads_symmetrically_at_stride_two():
  x = jax.random.normal(jax.random.key(0), (1, 9, 8, 2))
  conv = Conv2d(3, 3, 2, use_bias=True)
  v = conv.init(jax.random.key(1), x)
  got = np.asarray(conv.apply(v, x))
  k = np.asarray(v['params']['kernel'])
  xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = np.zeros((1, 5, 4, 3))
  for i in range(5):
    for j in range(4):
      ref[0, i, j] = np.einsum('hwc,hwco->o', xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3], k)
  np.testing.assert_allclose(got, ref + np.asarray(v['params']['bias']), rtol=1e-5, atol=1e-5)


@pytest.mark.fast
@pytest.mark.parametrize('stride,size', [(1, (6, 5)), (2, (9, 8)), (2, (8, 7))])
def test_pointwise_conv_matches_numpy_and_its_gradients_match_lax_conv(stride, size):
  x = jax.random.normal(jax.random.key(0), (2, *size, 3))
  conv = Conv2d(4, 1, stride, use_bias=True)
  v = conv.init(jax.random.key(1), x)
  v = {'params': {**v['params'], 'bias': jnp.arange(4.0)}}
  k = np.asarray(v['params']['kernel'])
  ref = np.einsum('nhwc,co->nhwo', np.asarray(x)[:, ::stride, ::stride], k[0, 0]) + np.arange(4.0)
  np.testing.assert_allclose(np.asarray(conv.apply(v, x)), ref, rtol=1e-5, atol=1e-5)
  # Its gradients are those of the convolution it stands for (padding 0, (k - 1) // 2).
  as_conv = lambda kernel, x: lax.conv_general_dilated(  # noqa: E731
      x, kernel, (stride, stride), ((0, 0), (0, 0)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  cot = jax.random.normal(jax.random.key(2), ref.shape)
  got = jax.vjp(lambda kernel, x: conv.apply({'params': {'kernel': kernel, 'bias': v['params']['bias']}}, x),
                v['params']['kernel'], x)[1](cot)
  want = jax.vjp(as_conv, v['params']['kernel'], x)[1](cot)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.fast
def test_frozen_batch_norm_formula():
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  stats = {'scale': jnp.array([1., 2, 3, 4]), 'bias': jnp.array([0., 1, 2, 3]),
           'mean': jnp.array([0.5, 0, -1, 2]), 'var': jnp.array([1., 4, 0.25, 9])}
  got = FrozenBatchNorm().apply({'frozen': stats}, x)
  s = {k: np.asarray(v) for k, v in stats.items()}
  ref = (np.asarray(x) - s['mean']) / np.sqrt(s['var'] + 1e-5) * s['scale'] + s['bias']
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.fast
def test_normalize_images_zeroes_the_padding():
  images = jnp.full((2, 8, 8, 3), 255, jnp.uint8)
  sizes = jnp.array([[8, 8], [5, 3]])
  out = np.asarray(fcos.normalize_images(images, sizes, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
  assert np.allclose(out[0], 2.0)
  assert np.allclose(out[1, :5, :3], 2.0) and np.all(out[1, 5:] == 0) and np.all(out[1, :, 3:] == 0)


def test_one_trace_per_input_shape(tiny):
  model, variables = tiny

  @jax.jit
  @chex.assert_max_traces(n=2)
  def forward(v, x):
    return model.apply(v, x)

  for shape in [(1, 128, 256, 3), (1, 128, 256, 3), (1, 256, 128, 3), (1, 128, 256, 3)]:
    forward(variables, jnp.zeros(shape))


@pytest.mark.fast
def test_group_norm_backbone_trains_from_scratch():
  model = fcos.build_model(tiny_model_config(backbone_norm='group_norm', freeze_at=-1))
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128, 128, 3)))
  assert 'frozen' not in variables  # Nothing frozen at all.
  assert variables['params']['backbone']['conv1']['norm']['scale'].shape == (8,)


@pytest.mark.fast
def test_dcn_r50_parameter_count_and_seed_recipes():
  from fcos_jax.recipes import r50_dcn_1x, r50_ms_2x
  model = fcos.build_model(r50_dcn_1x.get_config().model)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128, 128, 3)))
  assert fcos.count_parameters(variables) == 33_666_513  # Paddle's DCN R50 FCOS.
  out = jax.eval_shape(model.apply, variables, jnp.zeros((1, 256, 384, 3)))
  num_points = len(locations.make_points((256, 384), (8, 16, 32, 64, 128), (64, 128, 256, 512)).xy)
  assert out['reg'].shape == (1, num_points, 4)
  ms = r50_ms_2x.get_config()  # The seed's multiscale 2x recipe.
  assert tuple(ms.data.short_sizes) == (640, 672, 704, 736, 768, 800) and ms.data.max_size == 1333
  assert ms.train.num_steps == 180_000 and tuple(ms.optimizer.decay_steps) == (120_000, 160_000)
  assert ms.train.batch_size == 16 and ms.optimizer.lr == 0.01
