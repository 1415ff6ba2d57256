"""FCOS head, shared over the pyramid levels: cls and reg towers, class / box / centerness outputs.

Each tower is `head_convs` x [3x3 conv with bias -> GroupNorm -> ReLU]; centerness is predicted from the reg
tower; a learnable scalar per level scales the box output, which then goes through ReLU. Names follow Paddle's
FCOSHead (`fcos_feat.fcos_head_cls_tower_conv_0.conv`, `fcos_head_cls`, `p3_feat.scale_reg`, ...).
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fcos_jax.model.dcn import DeformConv2d
from fcos_jax.model.layers import Conv2d, GroupNorm, scale_extent

HEAD_INIT = nn.initializers.normal(0.01)


class TowerConv(nn.Module):
  """3x3 conv (deformable if asked) with bias, GroupNorm, ReLU; named 'conv' and 'norm'."""
  channels: int
  gn_groups: int
  deformable: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, extent=None):
    """x [N, h, w, C] with its `extent` [N, 2]: the conv sees zeros beyond it, the GroupNorm statistics stay in it."""
    if self.deformable:
      conv = DeformConv2d(self.channels, 3, use_bias=True, kernel_init=HEAD_INIT, dtype=self.dtype, name='conv')
    else:
      conv = Conv2d(self.channels, 3, use_bias=True, kernel_init=HEAD_INIT, dtype=self.dtype, name='conv')
    x = GroupNorm(self.gn_groups, epsilon=1e-5, dtype=self.dtype, name='norm')(conv(x, extent), extent)
    return nn.relu(x)


class FCOSFeat(nn.Module):
  """The two towers; returns (cls_feature, reg_feature) for one level."""
  channels: int = 256
  num_convs: int = 4
  gn_groups: int = 32
  deformable: Sequence[bool] = ()
  dtype: Any = jnp.float32

  def setup(self):
    deformable = self.deformable or (False,) * self.num_convs
    tower = lambda kind: [  # noqa: E731
        TowerConv(self.channels, self.gn_groups, deformable[i], self.dtype, name=f'fcos_head_{kind}_tower_conv_{i}')
        for i in range(self.num_convs)]
    self.cls_tower = tower('cls')
    self.reg_tower = tower('reg')

  def __call__(self, x, extent=None):
    cls, reg = x, x
    for layer in self.cls_tower:
      cls = layer(cls, extent)
    for layer in self.reg_tower:
      reg = layer(reg, extent)
    return cls, reg


class FCOSHead(nn.Module):
  """Per level: cls logits [N, h*w, C], reg [N, h*w, 4] (stride-normalised l, t, r, b), ctr logits [N, h*w]."""
  num_classes: int = 80
  channels: int = 256
  num_convs: int = 4
  gn_groups: int = 32
  prior_prob: float = 0.01
  per_level_scale: bool = True
  strides: Sequence[int] = (8, 16, 32, 64, 128)
  dcn: str = 'none'  # 'none', 'all' or 'last' tower convs deformable.
  dtype: Any = jnp.float32

  def setup(self):
    deformable = tuple(self.dcn == 'all' or (self.dcn == 'last' and i == self.num_convs - 1)
                       for i in range(self.num_convs))
    self.fcos_feat = FCOSFeat(self.channels, self.num_convs, self.gn_groups, deformable, self.dtype)
    out = lambda n, name, bias=0.0: Conv2d(  # noqa: E731
        n, 3, use_bias=True, kernel_init=HEAD_INIT, bias_init=nn.initializers.constant(bias), dtype=self.dtype,
        name=name)
    self.fcos_head_cls = out(self.num_classes, 'fcos_head_cls', -math.log((1 - self.prior_prob) / self.prior_prob))
    self.fcos_head_reg = out(4, 'fcos_head_reg')
    self.fcos_head_centerness = out(1, 'fcos_head_centerness')
    if self.per_level_scale:
      self.scales = [ScaleReg(name=f'p{int(math.log2(s))}_feat') for s in self.strides]

  def __call__(self, pyramid, extent=None):
    """pyramid: (P3..P7) -> dict of outputs concatenated over levels: [N, P, C], [N, P, 4], [N, P].

    `extent` [N, 2] of the image (None: the whole canvas); level stride s sees ceil(extent / s). Outputs at points
    beyond it are not meaningful: `postprocess` and the loss leave them out.
    """
    cls_out, reg_out, ctr_out = [], [], []
    for lvl, (feature, stride) in enumerate(zip(pyramid, self.strides)):
      level_extent = scale_extent(extent, stride)
      cls_feat, reg_feat = self.fcos_feat(feature, level_extent)
      n = feature.shape[0]
      reg = self.fcos_head_reg(reg_feat, level_extent)
      if self.per_level_scale:
        reg = self.scales[lvl](reg)
      cls_out.append(self.fcos_head_cls(cls_feat, level_extent).reshape(n, -1, self.num_classes))
      reg_out.append(nn.relu(reg).reshape(n, -1, 4))
      ctr_out.append(self.fcos_head_centerness(reg_feat, level_extent).reshape(n, -1))
    cat = lambda xs: jnp.concatenate(xs, axis=1).astype(jnp.float32)  # noqa: E731
    return {'cls_logits': cat(cls_out), 'reg': cat(reg_out), 'ctr_logits': cat(ctr_out)}


class ScaleReg(nn.Module):
  """A learnable scalar (init 1) multiplying the box output of one level; Paddle's `scale_reg`."""

  @nn.compact
  def __call__(self, x):
    return x * self.param('scale_reg', nn.initializers.ones, (), jnp.float32).astype(x.dtype)
