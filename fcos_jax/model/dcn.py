"""Modulated deformable convolution (DCNv2) as one gather plus one matmul, NHWC / HWIO.

Semantics are those of torchvision.ops.deform_conv2d and Paddle's deformable_conv: kernel tap k = i * kw + j
samples the input at y = oy * stride - padding + i * dilation + dy_k, x = ox * stride - padding + j * dilation + dx_k
by bilinear interpolation, where a sample with y <= -1, y >= H, x <= -1 or x >= W is zero and otherwise each of
its four neighbours counts only if it lies inside the map; the sample is scaled by the tap's mask.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcos_jax.model.layers import Conv2d, mask_extent


def _sample(x, offset, mask, kh, kw, stride, padding, dilation):
  """Bilinear samples of x at the deformed taps, times the mask: columns [N, Ho, Wo, kh * kw, Cin] in x's dtype.

  x [N, H, W, Cin]; offset [N, Ho, Wo, 2 * kh * kw] (dy, dx per tap); mask [N, Ho, Wo, kh * kw]. Positions and
  weights are computed in at least float32 (bf16 cannot hold a pixel position); the weights take x's dtype only
  for the blend, which accumulates in at least float32. One gather, indexed by (batch, row, col), fetches the four
  corners of every tap (a flattened index is ~10x slower on XLA CPU, which recomputes it per channel); the mask is
  folded into the corner weights, and the weighted sum of the corners is one batched dot.
  """
  n, h, w, _ = x.shape
  _, ho, wo, _ = offset.shape
  taps = kh * kw
  real = jnp.promote_types(jnp.promote_types(x.dtype, offset.dtype), jnp.float32)
  offset = offset.astype(real).reshape(n, ho, wo, taps, 2)
  tap_i, tap_j = jnp.arange(taps) // kw, jnp.arange(taps) % kw
  base_y = (jnp.arange(ho) * stride - padding)[:, None] + tap_i * dilation  # [Ho, taps]
  base_x = (jnp.arange(wo) * stride - padding)[:, None] + tap_j * dilation  # [Wo, taps]
  py = base_y[None, :, None, :] + offset[..., 0]  # [N, Ho, Wo, taps]
  px = base_x[None, None, :, :] + offset[..., 1]
  y0, x0 = jnp.floor(py), jnp.floor(px)
  ly, lx = py - y0, px - x0
  # Corners in the order (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1): [N, Ho, Wo, taps, 4].
  cy = y0[..., None] + jnp.array([0., 0., 1., 1.])
  cx = x0[..., None] + jnp.array([0., 1., 0., 1.])
  wy = jnp.stack([1 - ly, 1 - ly, ly, ly], axis=-1)
  wx = jnp.stack([1 - lx, lx, 1 - lx, lx], axis=-1)
  inside = (cy >= 0) & (cy <= h - 1) & (cx >= 0) & (cx <= w - 1)
  in_range = (py > -1) & (py < h) & (px > -1) & (px < w)  # torchvision's early return, also for gradients.
  weights = jnp.where(inside & in_range[..., None], wy * wx, 0.) * mask.astype(real)[..., None]
  rows = jnp.clip(cy, 0, h - 1).astype(jnp.int32)
  cols = jnp.clip(cx, 0, w - 1).astype(jnp.int32)
  batch = jnp.arange(n)[:, None, None, None, None]
  corners = x.at[batch, rows, cols].get(mode='promise_in_bounds')  # [N, Ho, Wo, taps, 4, Cin]
  columns = jnp.einsum('...q,...qc->...c', weights.astype(x.dtype), corners, preferred_element_type=real,
                       precision=jax.lax.Precision.HIGHEST)
  return columns.astype(x.dtype)


@functools.partial(jax.jit, static_argnames=('stride', 'padding', 'dilation', 'remat'))
def deform_conv2d(x, offset, mask, kernel, stride=1, padding=1, dilation=1, remat=False):
  """Modulated deformable convolution: x [N, H, W, Cin] -> [N, Ho, Wo, Cout], computed in x's dtype.

  offset [N, Ho, Wo, 2 * kh * kw] holds (dy, dx) of tap k = i * kw + j at channels (2k, 2k + 1); mask
  [N, Ho, Wo, kh * kw] multiplies each tap's sample (already in [0, 1]); kernel [kh, kw, Cin, Cout]. Ho, Wo must
  be those of a plain convolution with the same stride, padding and dilation (checked). Differentiable in all four
  arrays (the bilinear weights carry the offset gradient). remat=True recomputes the sampled columns in the
  backward pass instead of keeping them (and the gathered corners) from the forward pass: less memory, one more
  gather.
  """
  n, h, w, _ = x.shape
  kh, kw, cin, cout = kernel.shape
  ho, wo = ((size + 2 * padding - dilation * (k - 1) - 1) // stride + 1 for size, k in ((h, kh), (w, kw)))
  if offset.shape != (n, ho, wo, 2 * kh * kw) or mask.shape != (n, ho, wo, kh * kw):
    raise ValueError(f'offset {offset.shape} / mask {mask.shape} do not fit an output of {(n, ho, wo)} and a '
                     f'{kh}x{kw} kernel: want {(n, ho, wo, 2 * kh * kw)} / {(n, ho, wo, kh * kw)}')

  def conv(x, offset, mask, kernel):
    columns = _sample(x, offset, mask, kh, kw, stride, padding, dilation)
    return columns.reshape(n, ho, wo, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)

  return (jax.checkpoint(conv) if remat else conv)(x, offset, mask, kernel)


class DeformConv2d(nn.Module):
  """DCNv2 layer: a plain conv `conv_offset` predicts offsets and masks, then `deform_conv2d` with `kernel`.

  `conv_offset` is a kernel_size conv with bias, the same stride and symmetric padding, giving 3 * k * k channels:
  the first 2 * k * k are the (dy, dx) offsets, the last k * k go through a sigmoid to be the masks. It is
  zero-initialised, so a fresh layer is the plain convolution with `kernel` scaled by sigmoid(0) = 0.5 (the usual
  DCNv2 start). Padding is (k - 1) // 2 on every side. x [N, H, W, Cin] -> [N, ceil(H / stride),
  ceil(W / stride), features] for odd k. Paddle's `conv_offset` is ours; its `conv_dcn` weight and bias are our
  `kernel` and `bias`.
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.kaiming_normal()
  bias_init: Callable = nn.initializers.zeros
  remat: bool = False

  @nn.compact
  def __call__(self, x, extent=None):
    """`extent` [N, 2] of x: both convolutions see zeros beyond it. A sample that falls beyond it then reads zeros,
    as it would outside a canvas of exactly that extent."""
    k = self.kernel_size
    taps = k * k
    x = mask_extent(x.astype(self.dtype), extent)
    offset_mask = Conv2d(3 * taps, k, self.stride, use_bias=True, dtype=self.dtype,
                         kernel_init=nn.initializers.zeros, name='conv_offset')(x)
    offset, mask = offset_mask[..., :2 * taps], jax.nn.sigmoid(offset_mask[..., 2 * taps:].astype(jnp.float32))
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
    y = deform_conv2d(x, offset, mask, kernel.astype(self.dtype), self.stride, (k - 1) // 2, remat=self.remat)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y
