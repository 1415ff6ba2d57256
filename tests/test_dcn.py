"""Deformable convolution v2: plain-conv limit, a loop-by-loop NumPy re-derivation, gradients, remat, the module."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from fcos_jax.model.dcn import DeformConv2d, deform_conv2d

pytestmark = pytest.mark.fast


def out_size(size, k, stride, padding, dilation):
  return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def plain_conv(x, kernel, stride, padding, dilation=1):
  """Reference convolution, explicit symmetric padding: [N, H, W, Cin] -> [N, Ho, Wo, Cout]."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                  rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  precision=lax.Precision.HIGHEST)


def bilinear(image, y, x):
  """image [H, W, C] at (y, x), written from the definition: zero when y <= -1, y >= H, x <= -1 or x >= W, else
  the bilinear blend of the four neighbours, each counting only when inside the map."""
  h, w, c = image.shape
  if y <= -1 or y >= h or x <= -1 or x >= w:
    return np.zeros(c)
  y0, x0 = math.floor(y), math.floor(x)
  total = np.zeros(c)
  for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
    for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
      if 0 <= yy < h and 0 <= xx < w:
        total += wy * wx * image[yy, xx]
  return total


def numpy_deform_conv(x, offset, mask, kernel, stride, padding, dilation):
  """Plain loops over images, output pixels and taps: the definition of modulated deformable convolution."""
  x, offset, mask, kernel = (np.asarray(a, np.float64) for a in (x, offset, mask, kernel))
  n = x.shape[0]
  kh, kw, _, cout = kernel.shape
  ho, wo = offset.shape[1:3]
  out = np.zeros((n, ho, wo, cout))
  for b in range(n):
    for oy in range(ho):
      for ox in range(wo):
        for i in range(kh):
          for j in range(kw):
            k = i * kw + j
            y = oy * stride - padding + i * dilation + offset[b, oy, ox, 2 * k]
            xx = ox * stride - padding + j * dilation + offset[b, oy, ox, 2 * k + 1]
            out[b, oy, ox] += mask[b, oy, ox, k] * bilinear(x[b], y, xx) @ kernel[i, j]
  return out


def tap_positions(ho, wo, kh, kw, stride, padding, dilation):
  """Undeformed sampling positions (y, x), each [Ho, Wo, kh * kw]."""
  oy, ox, i, j = np.meshgrid(np.arange(ho), np.arange(wo), np.arange(kh), np.arange(kw), indexing='ij')
  y = oy * stride - padding + i * dilation
  x = ox * stride - padding + j * dilation
  return y.reshape(ho, wo, kh * kw), x.reshape(ho, wo, kh * kw)


def awkward_offsets(rng, n, h, w, ho, wo, kh, kw, stride, padding, dilation):
  """Offsets [N, Ho, Wo, 2 * kh * kw] whose samples land on edge cases: exactly -1 and H (zero), 0 and H - 1,
  inside the outer half-pixel band, far outside, on integers, and anywhere near the map."""
  def targets(size, shape):
    special = np.array([-1., size, 0., size - 1., -0.5, size - 0.5, -0.999, size - 0.001, -40., size + 40.])
    pick = rng.integers(0, 3, shape)
    return np.where(pick == 0, rng.choice(special, shape),
                    np.where(pick == 1, rng.integers(-2, size + 2, shape), rng.uniform(-2, size + 1, shape)))
  base_y, base_x = tap_positions(ho, wo, kh, kw, stride, padding, dilation)
  shape = (n, ho, wo, kh * kw)
  dy, dx = targets(h, shape) - base_y, targets(w, shape) - base_x
  return np.stack([dy, dx], axis=-1).reshape(n, ho, wo, 2 * kh * kw).astype(np.float32)


@pytest.mark.parametrize('h, w, stride', [(7, 9, 1), (8, 10, 1), (7, 9, 2), (8, 10, 2)])
def test_zero_offsets_unit_mask_is_plain_conv(h, w, stride):
  rng = np.random.default_rng(h + stride)
  x = rng.normal(size=(2, h, w, 5)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 5, 6)).astype(np.float32)
  expected = plain_conv(x, kernel, stride, 1)
  ho, wo = expected.shape[1:3]
  offset, mask = jnp.zeros((2, ho, wo, 18)), jnp.ones((2, ho, wo, 9))
  np.testing.assert_allclose(deform_conv2d(x, offset, mask, kernel, stride, 1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('kh, kw, stride, padding, dilation', [
    (3, 3, 1, 1, 1), (3, 3, 2, 1, 1), (2, 3, 1, 1, 1), (3, 3, 1, 2, 2)])
def test_random_offsets_match_numpy_loops(kh, kw, stride, padding, dilation):
  rng = np.random.default_rng(kh * 100 + kw * 10 + stride + dilation)
  n, h, w, cin, cout = 2, 5, 6, 3, 4
  ho, wo = out_size(h, kh, stride, padding, dilation), out_size(w, kw, stride, padding, dilation)
  x = rng.normal(size=(n, h, w, cin)).astype(np.float32)
  offset = awkward_offsets(rng, n, h, w, ho, wo, kh, kw, stride, padding, dilation)
  mask = rng.uniform(size=(n, ho, wo, kh * kw)).astype(np.float32)
  kernel = rng.normal(size=(kh, kw, cin, cout)).astype(np.float32)
  got = deform_conv2d(x, offset, mask, kernel, stride, padding, dilation)
  assert got.shape == (n, ho, wo, cout)
  np.testing.assert_allclose(got, numpy_deform_conv(x, offset, mask, kernel, stride, padding, dilation),
                             atol=1e-4, rtol=1e-4)


def test_offset_and_mask_shapes_are_checked():
  x, kernel = np.zeros((1, 8, 8, 2), np.float32), np.zeros((3, 3, 2, 3), np.float32)
  with pytest.raises(ValueError, match='offset'):
    deform_conv2d(x, np.zeros((1, 8, 8, 18)), np.ones((1, 8, 8, 9)), kernel, stride=2)
  with pytest.raises(ValueError, match='mask'):
    deform_conv2d(x, np.zeros((1, 8, 8, 18)), np.ones((1, 8, 8, 1)), kernel)


def smooth_inputs(stride):
  """Float64 inputs whose samples sit at fractional positions (0.2-0.8 past an integer), where bilinear
  interpolation is differentiable; some land far outside the map (zero gradient)."""
  rng = np.random.default_rng(stride)
  n, h, w, cin, cout = 1, 5, 4, 2, 3
  ho, wo = out_size(h, 3, stride, 1, 1), out_size(w, 3, stride, 1, 1)
  offset = rng.integers(-2, 3, (n, ho, wo, 18)) + rng.uniform(0.2, 0.8, (n, ho, wo, 18))
  offset[0, 0, 0, :2] = [-30.5, 40.5]
  return (jnp.asarray(rng.normal(size=(n, h, w, cin))), jnp.asarray(offset),
          jnp.asarray(rng.uniform(0.1, 0.9, (n, ho, wo, 9))), jnp.asarray(rng.normal(size=(3, 3, cin, cout))))


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('remat', [False, True])
def test_gradients_match_finite_differences(stride, remat):
  with jax.enable_x64(True):
    args = smooth_inputs(stride)
    f = lambda *a: deform_conv2d(*a, stride=stride, padding=1, remat=remat)  # noqa: E731
    check_grads(f, args, order=1, modes=('fwd', 'rev'), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_remat_gives_same_values_and_gradients():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 9, 8, 4)), jnp.float32)
  offset = jnp.asarray(rng.normal(scale=2., size=(2, 5, 4, 18)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(2, 5, 4, 9)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(2, 5, 4, 5)), jnp.float32)

  def value_and_grads(remat):
    loss = lambda *a: jnp.sum(deform_conv2d(*a, stride=2, remat=remat) * cotangent)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(x, offset, mask, kernel)

  for a, b in zip(jax.tree.leaves(value_and_grads(False)), jax.tree.leaves(value_and_grads(True))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope='module')
def layer_variables():
  """One initialisation (Cin 4, 8 features, with bias), shared: the parameters do not depend on stride or size."""
  return jax.jit(DeformConv2d(8, use_bias=True).init)(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))


def test_module_parameters_and_zero_init_start(layer_variables):
  params = layer_variables['params']
  assert jax.tree.map(jnp.shape, params) == {
      'conv_offset': {'kernel': (3, 3, 4, 27), 'bias': (27,)}, 'kernel': (3, 3, 4, 8), 'bias': (8,)}
  assert not any(jnp.any(v) for v in jax.tree.leaves(params['conv_offset']))
  no_bias = jax.eval_shape(DeformConv2d(8).init, jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
  assert jax.tree.map(jnp.shape, no_bias) == {
      'params': {'conv_offset': {'kernel': (3, 3, 4, 27), 'bias': (27,)}, 'kernel': (3, 3, 4, 8)}}
  x = np.random.default_rng(1).normal(size=(2, 9, 10, 4)).astype(np.float32)
  expected = 0.5 * plain_conv(x, params['kernel'], 1, 1) + params['bias']
  np.testing.assert_allclose(jax.jit(DeformConv2d(8, use_bias=True).apply)(layer_variables, x), expected,
                             atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('h, w', [(9, 10), (8, 11)])
def test_module_stride_two_matches_plain_conv_shape(layer_variables, h, w):
  x = np.random.default_rng(h).normal(size=(1, h, w, 4)).astype(np.float32)
  params = layer_variables['params']
  plain = plain_conv(x, params['kernel'], 2, 1)
  got = jax.jit(DeformConv2d(8, stride=2, use_bias=True).apply)(layer_variables, x)
  assert got.shape == plain.shape == (1, (h + 1) // 2, (w + 1) // 2, 8)
  np.testing.assert_allclose(got, 0.5 * plain + params['bias'], atol=1e-5, rtol=1e-5)


def test_module_trained_offsets_and_bf16(layer_variables):
  """With a non-zero offset conv the module equals deform_conv2d on its own offsets/masks; bf16 stays close."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(1, 8, 8, 4)).astype(np.float32)
  offset_conv = (rng.normal(size=(3, 3, 4, 27)) * 0.3).astype(np.float32)
  params = {**layer_variables['params'], 'conv_offset': {'kernel': offset_conv, 'bias': np.zeros(27, np.float32)}}
  om = plain_conv(x, offset_conv, 2, 1)
  expected = deform_conv2d(x, om[..., :18], jax.nn.sigmoid(om[..., 18:]), params['kernel'], 2, 1) + params['bias']
  got = jax.jit(DeformConv2d(8, stride=2, use_bias=True).apply)({'params': params}, x)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
  low = jax.jit(DeformConv2d(8, stride=2, use_bias=True, dtype=jnp.bfloat16, remat=True).apply)({'params': params}, x)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(jnp.float32), expected, atol=0.1, rtol=0.05)
