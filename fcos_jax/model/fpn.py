"""Feature pyramid P3..P7 from C3..C5 (FCOS variant: P6 from P5, P7 from ReLU(P6)); names follow Paddle's FPN."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fcos_jax.model.layers import Conv2d, scale_extent


def upsample_to(x, shape_hw):
  """Nearest-neighbour x2 upsampling of x [N, h, w, C], cropped to `shape_hw`."""
  x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x[:, :shape_hw[0], :shape_hw[1]]


class FPN(nn.Module):
  """1x1 laterals, top-down nearest x2 + add, 3x3 outputs, then stride-2 3x3 convs for P6 and P7 (all with bias)."""
  channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, extent=None):
    """features (C3, C4, C5) -> (P3, P4, P5, P6, P7), each [N, h, w, channels].

    `extent` [N, 2] of the image (None: the whole canvas); level stride s sees ceil(extent / s). The nearest x2
    upsampling reads inside the coarser extent for every pixel inside the finer one, so it needs no mask.
    """
    level = lambda stride: scale_extent(extent, stride)  # noqa: E731
    conv = lambda k, s, name: Conv2d(  # noqa: E731
        self.channels, k, s, use_bias=True, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
        name=name)
    c3, c4, c5 = features
    top = conv(1, 1, 'fpn_inner_res5_sum')(c5)
    inner = [top]
    for stage, c in ((4, c4), (3, c3)):
      top = conv(1, 1, f'fpn_inner_res{stage}_sum_lateral')(c) + upsample_to(top, c.shape[1:3])
      inner.insert(0, top)
    outs = [conv(3, 1, f'fpn_res{stage}_sum')(x, level(2**stage)) for stage, x in zip((3, 4, 5), inner)]
    p6 = conv(3, 2, 'fpn_6')(outs[-1], level(32))
    p7 = conv(3, 2, 'fpn_7')(nn.relu(p6), level(64))
    return (*outs, p6, p7)
