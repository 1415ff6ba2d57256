"""Building blocks shared by the backbone, FPN, head and DCN: symmetric-padding convolution, frozen batch norm,
group norm, and the extent masks that make the network padding invariant.

Frozen weights live in the 'frozen' collection instead of 'params': the optimiser only ever sees 'params', so a
frozen weight cannot change, whatever the optimiser does.

Padding invariance: an `extent` [N, 2] int32 (h, w) per image, in the pixels of the feature map at hand, says how
much of the static canvas the network must treat as the image's whole canvas. Convolutions wider than 1x1 see zeros
beyond it (what their own zero padding gives on a canvas of exactly that extent) and group norm takes its statistics
over it only, so every output inside the extent equals the output of the network run on that extent alone. None
means the whole canvas (no masking).
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

FROZEN = 'frozen'


def scale_extent(extent, stride):
  """The extent after a layer of `stride`: ceil(extent / stride), the output size every strided layer here has on a
  canvas of exactly that extent (k x k convs padded (k - 1) // 2 for odd k, 1x1 convs taking every stride-th pixel,
  the 3x3/2 max-pool padded 1, DCN). None stays None."""
  return extent if extent is None or stride == 1 else (extent + stride - 1) // stride


def extent_hw(extent):
  """`extent` [N, 2] -> its (h [N, 1], w [N, 1]) columns, as plain slices (jnp indexing would gather under a
  symbolic batch, which the ONNX export does not translate)."""
  return lax.slice_in_dim(extent, 0, 1, axis=1), lax.slice_in_dim(extent, 1, 2, axis=1)


def inside_extent(extent, shape_hw):
  """bool [N, h, w]: which pixels of an [h, w] map lie inside each image's `extent` [N, 2]."""
  h, w = shape_hw
  eh, ew = extent_hw(extent)
  return (jnp.arange(h)[None, :, None] < eh[..., None]) & (jnp.arange(w)[None, None, :] < ew[..., None])


def mask_extent(x, extent):
  """x [N, h, w, C] with zeros beyond `extent` [N, 2] (None: x unchanged)."""
  if extent is None:
    return x
  return jnp.where(inside_extent(extent, x.shape[1:3])[..., None], x, jnp.zeros((), x.dtype))


def weight(module, frozen, name, init, shape):
  """A float32 weight of `module`: a trained parameter, or a variable in the 'frozen' collection."""
  if frozen:
    return module.variable(FROZEN, name, lambda: init(module.make_rng('params'), shape, jnp.float32)).value
  return module.param(name, init, shape, jnp.float32)


class Conv2d(nn.Module):
  """k x k convolution, NHWC/HWIO, padded (k - 1) // 2 on every side (Paddle/PyTorch semantics, unlike 'SAME')."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = False
  frozen: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.kaiming_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, extent=None):
    """x [N, H, W, Cin] -> [N, ceil(H / stride), ceil(W / stride), features] for odd kernels.

    `extent` [N, 2] of x: a kernel wider than 1 sees zeros beyond it (a 1x1 kernel never reads across it).
    """
    k = self.kernel_size
    if k > 1:
      x = mask_extent(x, extent)
    kernel = weight(self, self.frozen, 'kernel', self.kernel_init, (k, k, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if k == 1:  # A matmul over channels: its weight gradient is a plain GEMM (XLA:CPU's conv one is ~3x slower).
      y = jnp.einsum('nhwc,cf->nhwf', x[:, ::self.stride, ::self.stride], kernel[0, 0])
    else:
      pad = (k - 1) // 2
      y = lax.conv_general_dilated(x, kernel, (self.stride, self.stride), ((pad, pad), (pad, pad)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + weight(self, self.frozen, 'bias', self.bias_init, (self.features,)).astype(self.dtype)
    return y


class FrozenBatchNorm(nn.Module):
  """Batch norm with fixed statistics and affine (scale, bias, mean, var in 'frozen'), eps 1e-5."""
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.variable(FROZEN, 'scale', jnp.ones, (c,), jnp.float32).value
    bias = self.variable(FROZEN, 'bias', jnp.zeros, (c,), jnp.float32).value
    mean = self.variable(FROZEN, 'mean', jnp.zeros, (c,), jnp.float32).value
    var = self.variable(FROZEN, 'var', jnp.ones, (c,), jnp.float32).value
    multiplier = scale * lax.rsqrt(var + self.epsilon)
    return x * multiplier.astype(self.dtype) + (bias - mean * multiplier).astype(self.dtype)


class GroupNorm(nn.Module):
  """Group norm (flax.linen.GroupNorm's parameters 'scale' and 'bias', its E[x^2] - E[x]^2 variance) whose
  statistics run over each image's `extent` only: the statistics of the same map on a canvas of that extent.

  x [N, h, w, C] -> same shape, in `dtype`; statistics in at least float32. `extent` [N, 2] or None (whole map).
  An empty extent (a padding image) has zero statistics (its count is taken as 1), so its outputs stay finite.
  """
  num_groups: int
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, extent=None):
    n, h, w, c = x.shape
    g = self.num_groups
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(n, h, w, g, c // g)
    if extent is None:
      kept, count = x, h * w * (c // g)
    else:
      kept = jnp.where(inside_extent(extent, (h, w))[..., None, None], x, 0.0)
      eh, ew = extent_hw(extent)
      area = jnp.minimum(eh, h) * jnp.minimum(ew, w)  # [N, 1]
      count = jnp.maximum(area, 1).astype(x.dtype)[:, :, None, None, None] * (c // g)
    mean = jnp.sum(kept, axis=(1, 2, 4), keepdims=True) / count
    var = jnp.maximum(jnp.sum(kept * kept, axis=(1, 2, 4), keepdims=True) / count - mean * mean, 0.0)
    y = ((x - mean) * lax.rsqrt(var + self.epsilon)).reshape(n, h, w, c)
    return (y * scale + bias).astype(self.dtype)
