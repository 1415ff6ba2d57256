"""ResNet backbone, Paddle variant 'b' (the torchvision layout), with frozen batch norm.

Variant 'b': the stride sits on the 3x3 conv of the bottleneck and the first block of every stage has a projection
shortcut (1x1 conv + BN). Names follow PaddleDetection (`conv1`, `res2a.branch2a.conv`, ...) so that converting a
checkpoint is a table lookup. The stem and stages up to `freeze_at` keep their weights in the 'frozen' collection.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from fcos_jax.model.dcn import DeformConv2d
from fcos_jax.model.layers import Conv2d, FrozenBatchNorm, GroupNorm, mask_extent, scale_extent

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class ConvNorm(nn.Module):
  """Conv2d (no bias) then a norm, named 'conv' and 'norm' like Paddle's ConvNormLayer.

  `norm`: 'frozen_bn' (pretrained statistics, never trained) or 'group_norm' (32 groups or fewer, trained;
  for backbones trained from scratch, where identity batch norm would leave the network unnormalised).
  """
  features: int
  kernel_size: int
  stride: int = 1
  frozen: bool = False
  deformable: bool = False
  norm: str = 'frozen_bn'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, extent=None):
    """x [N, H, W, Cin] with its `extent` [N, 2] (see layers.py) -> [N, ceil(H / stride), ceil(W / stride),
    features]."""
    if self.deformable:
      conv = DeformConv2d(self.features, self.kernel_size, self.stride, dtype=self.dtype, name='conv')
    else:
      conv = Conv2d(self.features, self.kernel_size, self.stride, frozen=self.frozen, dtype=self.dtype, name='conv')
    y = conv(x, extent)
    if self.norm == 'group_norm':
      return GroupNorm(min(32, self.features), epsilon=1e-5, dtype=self.dtype, name='norm')(
          y, scale_extent(extent, self.stride))
    return FrozenBatchNorm(dtype=self.dtype, name='norm')(y)


def block_name(stage, index, count):
  """Paddle's block names: res4a, res4b, ... or res4a, res4b1, res4b2, ... for long stages (ResNet-101)."""
  if count > 10 and stage == 4:
    return f'res{stage}a' if index == 0 else f'res{stage}b{index}'
  return f'res{stage}{chr(ord("a") + index)}'


class Block(nn.Module):
  """Fields shared by the residual blocks; `conv` builds one ConvNorm with them."""
  width: int
  stride: int
  project: bool
  frozen: bool
  deformable: bool = False
  norm: str = 'frozen_bn'
  dtype: Any = jnp.float32

  def conv(self, features, kernel_size, name, stride=1, deformable=False):
    return ConvNorm(features, kernel_size, stride, frozen=self.frozen, deformable=deformable, norm=self.norm,
                    dtype=self.dtype, name=name)


class BottleneckBlock(Block):
  """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), projection shortcut when `project`."""

  @nn.compact
  def __call__(self, x, extent=None):
    out_extent = scale_extent(extent, self.stride)
    y = nn.relu(self.conv(self.width, 1, 'branch2a')(x, extent))
    y = nn.relu(self.conv(self.width, 3, 'branch2b', self.stride, self.deformable)(y, extent))
    y = self.conv(self.width * 4, 1, 'branch2c')(y, out_extent)
    short = self.conv(self.width * 4, 1, 'short', self.stride)(x, extent) if self.project else x
    return nn.relu(y + short)


class BasicBlock(Block):
  """3x3 (stride) -> 3x3, projection shortcut when `project` (ResNet-18/34)."""

  @nn.compact
  def __call__(self, x, extent=None):
    out_extent = scale_extent(extent, self.stride)
    y = nn.relu(self.conv(self.width, 3, 'branch2a', self.stride)(x, extent))
    y = self.conv(self.width, 3, 'branch2b', deformable=self.deformable)(y, out_extent)
    short = self.conv(self.width, 1, 'short', self.stride)(x, extent) if self.project else x
    return nn.relu(y + short)


class ResNet(nn.Module):
  """ResNet returning C3, C4, C5 (strides 8, 16, 32).

  `freeze_at`: -1 freezes only BN; 0 also the stem and res2; k the stem and res2..res{k+2}. Gradients are cut
  below the last frozen stage, since nothing there can be trained.
  """
  depth: int = 50
  stem_width: int = 64
  freeze_at: int = 0
  dcn_stages: Sequence[int] = ()
  norm: str = 'frozen_bn'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, extent=None):
    """x [N, H, W, 3] normalised image, zero beyond its `extent` [N, 2] (None: the whole canvas) -> (C3, C4, C5).

    The max-pool pads with -inf; its input is masked with zeros instead, which gives the same maxima: it is a
    ReLU's (>= 0) and every window holds a pixel inside the extent.
    """
    bottleneck = self.depth >= 50
    block_cls = BottleneckBlock if bottleneck else BasicBlock
    stem_frozen = self.freeze_at >= 0
    x = nn.relu(ConvNorm(self.stem_width, 7, 2, frozen=stem_frozen, norm=self.norm, dtype=self.dtype,
                         name='conv1')(x, extent))
    x = mask_extent(x, scale_extent(extent, 2))
    x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    extent = scale_extent(extent, 4)
    if stem_frozen:
      x = lax.stop_gradient(x)
    outputs = []
    for i, count in enumerate(STAGE_BLOCKS[self.depth]):
      stage = i + 2
      frozen = stage - 2 <= self.freeze_at
      for b in range(count):
        stride = 2 if b == 0 and stage > 2 else 1
        x = block_cls(
            width=self.stem_width * 2**i, stride=stride, project=b == 0, frozen=frozen,
            deformable=stage in self.dcn_stages, norm=self.norm, dtype=self.dtype,
            name=block_name(stage, b, count))(x, extent)
        extent = scale_extent(extent, stride)
      if frozen:
        x = lax.stop_gradient(x)
      if stage >= 3:
        outputs.append(x)
    return tuple(outputs)
